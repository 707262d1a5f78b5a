"""Many machines: webhook deliveries as their own records, leases on trainer servers, workers seen.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DOC = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("training_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("doc", DOC, nullable=False),
    )
    op.create_index("ix_webhook_deliveries_training_id", "webhook_deliveries", ["training_id"])
    op.create_table(
        "leases",
        sa.Column("resource", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("doc", DOC, nullable=False),
    )


def downgrade() -> None:
    for table in ("workers", "leases", "webhook_deliveries"):
        op.drop_table(table)
