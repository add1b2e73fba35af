"""ix_flux_runs_id_prefix: find a run by the first characters of its id on PostgreSQL.

``fluxcelery show a1b2c3``, ``retry``, ``cancel`` and the other commands that take a run id
accept its first characters (``run_ids_with_prefix``: ``id LIKE 'a1b2c3%'``). The primary
key cannot serve a ``LIKE`` unless the database's collation is ``C``, so that lookup read
every id (about 0.5 s per million runs); a ``varchar_pattern_ops`` index makes it an index
range scan. SQLite is left alone: its ``GLOB`` already uses the primary key. Ids never
change, so the index costs an insert an entry and nothing more. On a large ``flux_runs``
``CREATE INDEX`` holds writes for its duration: create it beforehand with ``CREATE INDEX
CONCURRENTLY ix_flux_runs_id_prefix ON flux_runs (id varchar_pattern_ops)`` and this
migration leaves it alone.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEX = "ix_flux_runs_id_prefix"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if INDEX in {ix["name"] for ix in sa.inspect(bind).get_indexes("flux_runs")}:
        return
    op.create_index(INDEX, "flux_runs", ["id"], postgresql_ops={"id": "varchar_pattern_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(INDEX, table_name="flux_runs")
