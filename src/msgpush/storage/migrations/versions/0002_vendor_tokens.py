"""vendor access tokens, cached in the database so every worker process shares them

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vendor_tokens",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("fetched_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("vendor_tokens")
