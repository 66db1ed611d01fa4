"""Alembic environment: runs on the connection msgpush hands it (see storage.migrate)."""

from alembic import context

from msgpush.storage.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Several processes may start at once; one migrates, the others wait for it.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727347001)")
    context.run_migrations()
