"""Hosted predictions: prediction records and the files users upload for them (and outputs).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DOC = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("doc", DOC, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("predictions_owner", "predictions", ["owner", "seq"])
    op.create_index("predictions_status", "predictions", ["status"])
    op.create_table(
        "files",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("doc", DOC, nullable=False),
    )
    op.create_index("files_owner", "files", ["owner", "created"])


def downgrade() -> None:
    op.drop_table("files")
    op.drop_table("predictions")
