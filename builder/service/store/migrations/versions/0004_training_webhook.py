"""A training record names its webhook ``webhook``, as a prediction record does (it was
``webhook_completed``, the seed request's field, which the API still accepts and shows).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DOC = sa.JSON().with_variant(JSONB(), "postgresql")
trainings = sa.table("trainings", sa.column("id", sa.Text), sa.column("doc", DOC))


def _rename(old: str, new: str) -> None:
    connection = op.get_bind()
    for training_id, doc in connection.execute(sa.select(trainings.c.id, trainings.c.doc)).all():
        if isinstance(doc, dict) and old in doc:
            doc[new] = doc.pop(old)
            connection.execute(trainings.update().where(trainings.c.id == training_id).values(doc=doc))


def upgrade() -> None:
    _rename("webhook_completed", "webhook")


def downgrade() -> None:
    _rename("webhook", "webhook_completed")
