"""flux_metric_totals, flux_metric_cursor, ix_flux_runs_status_workflow: Prometheus metrics.

The scrapes of ``fluxcelery metrics`` and ``/api/flux/metrics`` (fluxcelery/metrics) roll the
trace events up into ``flux_metric_totals`` (runs started and finished, step-duration
buckets); ``flux_metric_cursor`` says how far. The cursor starts at the newest event stored
now: the counters count from this upgrade on, they do not replay the stored history (a
sudden jump would look like a burst to ``rate()``).

``ix_flux_runs_status_workflow`` lets a scrape count the runs by status and workflow, with
the oldest of each, from the index alone. On a large ``flux_runs`` the ``CREATE INDEX``
holds writes for its duration (about 15 s per million runs on a small machine): create it
beforehand with ``CREATE INDEX CONCURRENTLY`` under the same name, and this migration
leaves it alone.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
INDEX = "ix_flux_runs_status_workflow"


def upgrade() -> None:
    bind = op.get_bind()
    existing = {ix["name"] for ix in sa.inspect(bind).get_indexes("flux_runs")}
    if INDEX not in existing:
        op.create_index(
            INDEX,
            "flux_runs",
            ["status", "workflow", "updated_at"],
            postgresql_include=["not_before"],
        )
    op.create_table(
        "flux_metric_totals",
        sa.Column("metric", sa.String(16), primary_key=True),
        sa.Column("workflow", sa.String(200), primary_key=True),
        sa.Column("step", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(24), primary_key=True),
        sa.Column("le_ms", sa.Integer(), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("sum_ms", sa.BigInteger(), nullable=False),
    )
    cursor = op.create_table(
        "flux_metric_cursor",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("counted", sa.BigInteger(), nullable=False),
        sa.Column("settled", sa.BigInteger(), nullable=False),
        sa.Column("seen", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", TZ),
        sa.Column("updated_at", TZ, nullable=False),
    )
    newest = bind.execute(sa.text("SELECT coalesce(max(seq), 0) FROM flux_traces")).scalar()
    start = int(newest or 0)
    op.bulk_insert(
        cursor,
        [
            {
                "name": "traces",
                "counted": start,
                "settled": start,
                "seen": start,
                "seen_at": None,
                "updated_at": datetime.now(UTC),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("flux_metric_cursor")
    op.drop_table("flux_metric_totals")
    op.drop_index(INDEX, table_name="flux_runs")
