"""Persistence: tables, migrations, the database connection and the queries on it."""
