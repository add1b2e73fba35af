"""The SQL tables (SQLAlchemy Core). Alembic migrations create and evolve them."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

JsonType = sa.JSON().with_variant(JSONB(), "postgresql")
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TZ = sa.DateTime(timezone=True)

runs = sa.Table(
    "flux_runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("workflow_version", sa.String(64)),
    sa.Column("definition_hash", sa.String(64)),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("input", JsonType),
    sa.Column("data", JsonType),
    sa.Column("current_step", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("executor", sa.String(16), nullable=False, default="local"),
    sa.Column("version", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
    sa.Column("finished_at", TZ),
    # The ``meta`` of the run's ``workflow:start`` event (the redacted input), written when the
    # run is created: a worker's claim (storage/postgres.py) emits that event in SQL, where the
    # redaction cannot be done. Never read back into ``RunState``.
    sa.Column("start_meta", JsonType),
    # When a run started with a countdown is due: ``recover`` leaves it alone until then.
    # Written when the run is created; never read back into ``RunState``.
    sa.Column("not_before", TZ),
    # Why the run was cancelled (migration 0007): a rollback that ends with it set ends
    # ``cancelled``, not ``rolled_back`` (``engine.cancel(compensate=True)``).
    sa.Column("cancel_reason", sa.Text),
    # Item starts (migration 0008): PostgreSQL's item claim counts here, not in ``version``.
    sa.Column("claims", sa.Integer, nullable=False, server_default="0", default=0),
    sa.Index("ix_flux_runs_workflow_created", "workflow", "created_at"),
    sa.Index("ix_flux_runs_status_updated", "status", "updated_at"),
    sa.Index("ix_flux_runs_created", "created_at"),
    # migration 0009: the metrics scrape counts runs by status and workflow, with the oldest
    # of each, from this index alone (fluxcelery/metrics)
    sa.Index(
        "ix_flux_runs_status_workflow",
        "status",
        "workflow",
        "updated_at",
        postgresql_include=["not_before"],
    ),
    # migration 0010, PostgreSQL only: a run found by the first characters of its id
    # (``run_ids_with_prefix``); SQLite's GLOB uses the primary key
    sa.Index("ix_flux_runs_id_prefix", "id", postgresql_ops={"id": "varchar_pattern_ops"}).ddl_if(
        dialect="postgresql"
    ),
)

steps = sa.Table(
    "flux_steps",
    metadata,
    sa.Column(
        "run_id",
        sa.String(64),
        sa.ForeignKey("flux_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("compensation_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("output", JsonType),
    sa.Column("error", sa.Text),
    sa.Column("waiting_for", sa.String(200)),
    sa.Column("task_id", sa.String(64)),
    sa.Column("started_at", TZ),
    sa.Column("finished_at", TZ),
    sa.Column("duration_ms", sa.Integer),
    sa.Column("wait_deadline", TZ),
    sa.Column("traceback", sa.Text),  # migration 0005: last, so that older columns keep places
    sa.Column("progress", JsonType),  # migration 0006
    # migration 0008: branch steps and for_each items (SPEC section 11)
    sa.Column("branch", sa.String(200)),
    sa.Column("item", sa.Integer),
    sa.Column("parent", sa.Integer),
    sa.Column("scope", JsonType),
    sa.Index("ix_flux_steps_wait_deadline", "wait_deadline"),
)

traces = sa.Table(
    "flux_traces",
    metadata,
    sa.Column("seq", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(32), nullable=False),
    sa.Column("ts", TZ, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("status", sa.String(24)),
    sa.Column("step", sa.String(200)),
    sa.Column("step_index", sa.Integer),
    sa.Column("kind", sa.String(10)),
    sa.Column("attempt", sa.Integer),
    sa.Column("max_attempts", sa.Integer),
    sa.Column("duration_ms", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("task_id", sa.String(64)),
    sa.Column("worker", sa.String(200)),
    sa.Column("meta", JsonType),
    sa.Index("ix_flux_traces_run", "run_id", "seq"),
    sa.Index("ix_flux_traces_workflow_type", "workflow", "type"),
    sa.Index("ix_flux_traces_status", "status"),
)

# Migration 0009: the metrics counters and step-duration histograms (fluxcelery/metrics),
# rolled up from flux_traces by the scrapes, so that a scrape reads only the events that are
# new since the last one. A row per series and bucket; kept when runs are pruned.
metric_totals = sa.Table(
    "flux_metric_totals",
    metadata,
    sa.Column("metric", sa.String(16), primary_key=True),  # started | finished | step
    sa.Column("workflow", sa.String(200), primary_key=True),
    sa.Column("step", sa.String(200), primary_key=True),  # '' for the run counters
    sa.Column("status", sa.String(24), primary_key=True),  # '' for started
    # a step duration's bucket: its upper bound in ms; -1 above the last bound; 0 otherwise
    sa.Column("le_ms", sa.Integer, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("sum_ms", sa.BigInteger, nullable=False),
)

# Where the rollup stands in flux_traces (one row, ``name = 'traces'``).
metric_cursor = sa.Table(
    "flux_metric_cursor",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    # events with seq <= counted are in flux_metric_totals
    sa.Column("counted", sa.BigInteger, nullable=False),
    # no event with seq <= settled can still appear (its transaction ended)
    sa.Column("settled", sa.BigInteger, nullable=False),
    # the greatest seq at the last look (PostgreSQL, at seen_at by its clock): settled once
    # every transaction then writing to flux_traces has ended
    sa.Column("seen", sa.BigInteger, nullable=False),
    sa.Column("seen_at", TZ),
    sa.Column("updated_at", TZ, nullable=False),
)


# Column names, in table order, for code that writes rows by name (one source: the tables).
RUN_COLUMNS = tuple(c.name for c in runs.columns)
STEP_COLUMNS = tuple(c.name for c in steps.columns if c.name != "run_id")  # idx first
TRACE_COLUMNS = tuple(c.name for c in traces.columns if c.name != "seq")  # = TraceEvent fields
