"""``python -m msgpush`` runs the CLI."""

from msgpush.cli import app

app()
