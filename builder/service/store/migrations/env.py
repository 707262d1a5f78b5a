"""Alembic's entry: migrations run on the connection :func:`builder.service.store.database.migrate`
hands over (never from alembic.ini: the service owns its URL)."""

from alembic import context

from builder.service.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
