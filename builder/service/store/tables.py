"""The service's tables as the newest migration leaves them (``migrations/versions/``): the
migrations are the schema's history, these are what the code reads and writes. Each record is a
JSON document (JSONB on PostgreSQL) in a row with the few columns queries need.
"""

from sqlalchemy import JSON, Column, Float, Index, Integer, MetaData, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

DOC = JSON().with_variant(JSONB(), "postgresql")
metadata = MetaData()

trainings = Table(
    "trainings",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False, unique=True),
    Column("owner", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("doc", DOC, nullable=False),
    Index("trainings_owner", "owner", "seq"),
    Index("trainings_status", "status"),
    sqlite_autoincrement=True,
)
versions = Table(
    "versions",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("id", Text, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("doc", DOC, nullable=False),
)
models = Table(  # a model's settings, from Replicate's POST /v1/models (a model may have versions without one)
    "models",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("doc", DOC, nullable=False),
)
uploads = Table(
    "uploads",
    metadata,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("doc", DOC, nullable=False),
)
settings = Table(
    "settings",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
deliveries = Table(  # one webhook event of a training: its id, payload and how sending it went
    "webhook_deliveries",
    metadata,
    Column("id", Text, primary_key=True),  # the webhook-id header: the same on every attempt
    Column("training_id", Text, nullable=False, index=True),
    Column("status", Text, nullable=False),  # pending, delivered, failed
    Column("next_attempt_at", Float, nullable=False),
    Column("doc", DOC, nullable=False),
)
leases = Table(  # a resource (a cog-http trainer URL) held by one training at a time
    "leases",
    metadata,
    Column("resource", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("acquired_at", Float, nullable=False),
)
workers = Table(  # workers seen: what they run and what they are doing
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("last_seen", Float, nullable=False),
    Column("doc", DOC, nullable=False),
)

predictions = Table(
    "predictions",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False, unique=True),
    Column("owner", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("doc", DOC, nullable=False),
    Index("predictions_owner", "owner", "seq"),
    Index("predictions_status", "status"),
    sqlite_autoincrement=True,
)
files = Table(  # files users upload for predictions (POST /v1/files) and predictions' outputs
    "files",
    metadata,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("doc", DOC, nullable=False),
    Index("files_owner", "owner", "created"),
)
