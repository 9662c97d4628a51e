"""Alembic environment: migrations run on the connection that ``db.upgrade`` hands over."""

from alembic import context

from batchinfer_dagster.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through batchinfer_dagster.db.upgrade or `batchinfer db upgrade`"
    )

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
