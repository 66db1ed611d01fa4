"""retention: messages by the event they came from (events whose messages are gone can go)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_event", "messages", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_event", table_name="messages")
