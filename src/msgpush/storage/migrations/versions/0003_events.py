"""events, routing rules, template overrides and alert-storm groups

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("occurred_at", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True, unique=True),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("routing", sa.Text, nullable=True),
    )
    op.create_index("ix_events_fingerprint", "events", ["fingerprint"])
    op.create_index("ix_events_created", "events", ["created_at"])
    op.create_table(
        "rules",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "event_templates",
        sa.Column("event_type", sa.String(128), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "event_groups",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("route", sa.String(40), nullable=False),
        sa.Column("channel_id", sa.String(40), nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("window_end", sa.BigInteger, nullable=True),
        sa.Column("digest_message_id", sa.String(40), nullable=True),
        sa.Column("digest_event_id", sa.String(40), nullable=True),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("firing", sa.Text, nullable=False),
        sa.Column("closed", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_event_groups_route", "event_groups", ["route"])


def downgrade() -> None:
    for table in ("event_groups", "event_templates", "rules", "events"):
        op.drop_table(table)
