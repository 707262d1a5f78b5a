"""The schema the service had before migrations: trainings, versions, uploads, settings.

A database made by that service already has these tables: they are kept as they are (adopted),
and the database is stamped with this revision.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DOC = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "trainings" not in existing:
        op.create_table(
            "trainings",
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("id", sa.Text, nullable=False, unique=True),
            sa.Column("owner", sa.Text, nullable=False),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("doc", DOC, nullable=False),
            sqlite_autoincrement=True,
        )
        op.create_index("trainings_owner", "trainings", ["owner", "seq"])
        op.create_index("trainings_status", "trainings", ["status"])
    if "versions" not in existing:
        op.create_table(
            "versions",
            sa.Column("owner", sa.Text, primary_key=True),
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("seq", sa.Integer, nullable=False),
            sa.Column("doc", DOC, nullable=False),
        )
    if "uploads" not in existing:
        op.create_table(
            "uploads",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("owner", sa.Text, nullable=False),
            sa.Column("doc", DOC, nullable=False),
        )
    if "settings" not in existing:
        op.create_table(
            "settings",
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )


def downgrade() -> None:
    for table in ("settings", "uploads", "versions", "trainings"):
        op.drop_table(table)
