"""Alembic environment: fluxcelery passes the connection in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from fluxcelery.storage.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when run through the alembic CLI
    import sqlalchemy as sa

    connection = sa.create_engine(config.get_main_option("sqlalchemy.url") or "").connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=config.get_main_option("version_table") or "flux_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
