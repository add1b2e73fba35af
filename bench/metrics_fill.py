"""Fill a PostgreSQL schema with many stored runs, fast (``INSERT ... SELECT`` over
``generate_series``), for ``bench/metrics_scrape.py``.

Each run has four steps and the trace events a run of its status leaves (about ten a
run). The status mix is that of a busy deployment with a week of retention: mostly
``completed``, a few percent failed, rolled back or cancelled, and a thin layer of runs
still under way (pending, running, suspended on a signal or an approval, rolling back).
Durations are log-normal-like (milliseconds to seconds), times spread over 30 days.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

WORKFLOWS = ("order", "refund", "signup", "invoice", "report", "approval", "sync", "email")
STEPS = ("validate", "charge", "ship", "notify")

#: Upper bounds of a uniform draw, per run status (the remaining 0.2 % roll back).
STATUS_MIX = (
    (0.900, "completed"),
    (0.930, "failed"),
    (0.940, "rolled_back"),
    (0.950, "cancelled"),
    (0.960, "running"),
    (0.980, "pending"),
    (0.998, "suspended"),
)

# One row per run. ``r`` draws the status, ``w`` the workflow (skewed: a few busy ones).
RUNS_SQL = """
WITH src AS (
    SELECT i, random() AS r, floor(8 * power(random(), 2))::int + 1 AS w, random() AS age
    FROM generate_series(:lo, :hi - 1) AS i
), typed AS (
    SELECT i, w, age, CASE {status_case} ELSE 'rolling_back' END AS status FROM src
)
INSERT INTO flux_runs (id, workflow, workflow_version, definition_hash, status, input, data,
    current_step, error, executor, version, created_at, updated_at, finished_at, claims)
SELECT
    'bench-' || lpad(i::text, 9, '0'),
    (ARRAY{workflows})[w],
    '1', 'bench', status,
    jsonb_build_object('order', i, 'customer', 'c' || (i % 5000), 'total', (i % 997) * 1.5),
    '{{}}'::jsonb,
    CASE status WHEN 'completed' THEN 3 WHEN 'pending' THEN 0 ELSE 2 END,
    CASE WHEN status IN ('failed', 'rolled_back') THEN 'ValueError: card declined' END,
    'celery', 8,
    created,
    CASE status WHEN 'pending' THEN created ELSE created + interval '2 seconds' END,
    CASE WHEN status IN ('completed', 'failed', 'rolled_back', 'cancelled')
         THEN created + interval '2 seconds' END,
    0
FROM (
    SELECT i, w, status,
        now() - CASE
            WHEN status IN ('pending', 'running', 'rolling_back') THEN age * interval '1 hour'
            WHEN status = 'suspended' THEN age * interval '3 days'
            ELSE age * interval '30 days'
        END AS created
    FROM typed
) AS runs
"""

# Four steps a run: completed before the run's current step, the current one in the run's
# state, pending after it. Durations e^(0..8) ms: 1 ms to 3 s.
STEPS_SQL = """
INSERT INTO flux_steps (run_id, idx, name, kind, status, attempts, compensation_attempts,
    task_id, started_at, finished_at, duration_ms)
SELECT r.id, k, (ARRAY{steps})[k + 1], 'step',
    CASE
        WHEN k < r.current_step OR r.status = 'completed' THEN 'completed'
        WHEN k > r.current_step THEN 'pending'
        WHEN r.status IN ('failed', 'rolled_back', 'rolling_back') THEN 'failed'
        WHEN r.status = 'running' THEN 'running'
        WHEN r.status = 'suspended' THEN 'suspended'
        ELSE 'pending'
    END AS status,
    CASE WHEN k <= r.current_step AND r.status <> 'pending' THEN 1 ELSE 0 END,
    0,
    CASE WHEN k <= r.current_step AND r.status <> 'pending' THEN md5(r.id || k) END,
    CASE WHEN k <= r.current_step AND r.status <> 'pending'
         THEN r.created_at + k * interval '400 ms' END,
    CASE WHEN k < r.current_step OR r.status = 'completed'
         THEN r.created_at + k * interval '400 ms' + interval '300 ms' END,
    CASE WHEN k < r.current_step OR r.status = 'completed'
         THEN exp(random() * 8)::int END
FROM flux_runs r CROSS JOIN generate_series(0, 3) AS k
WHERE r.id >= :first AND r.id < :last
"""

# The events: workflow:start, step:start + step:complete per finished step, the end.
TRACES_SQL = """
INSERT INTO flux_traces (id, ts, run_id, workflow, type, status, step, step_index, kind,
    attempt, duration_ms)
SELECT md5(e.run_id || e.type || coalesce(e.step_index, -1)), e.ts, e.run_id, e.workflow,
    e.type, e.status, e.step, e.step_index, e.kind, e.attempt, e.duration_ms
FROM (
    SELECT r.id AS run_id, r.workflow, 'workflow:start' AS type, 'running' AS status,
        NULL AS step, NULL::int AS step_index, NULL AS kind, NULL::int AS attempt,
        NULL::int AS duration_ms, r.created_at AS ts, 0 AS ord
    FROM flux_runs r WHERE r.id >= :first AND r.id < :last AND r.status <> 'pending'
    UNION ALL
    SELECT s.run_id, r.workflow, t.type, t.status, s.name, s.idx, s.kind, 1,
        CASE WHEN t.type = 'step:start' THEN NULL ELSE s.duration_ms END,
        s.started_at, 1 + 2 * s.idx + t.n
    FROM flux_steps s JOIN flux_runs r ON r.id = s.run_id
    CROSS JOIN (VALUES ('step:start', 'running', 0), ('step:complete', 'completed', 1))
        AS t (type, status, n)
    WHERE s.run_id >= :first AND s.run_id < :last AND s.status = 'completed'
    UNION ALL
    SELECT r.id, r.workflow,
        CASE r.status WHEN 'completed' THEN 'workflow:complete'
                      WHEN 'cancelled' THEN 'workflow:cancel' ELSE 'workflow:error' END,
        r.status, NULL, NULL, NULL, NULL, 2000, r.finished_at, 99
    FROM flux_runs r
    WHERE r.id >= :first AND r.id < :last
      AND r.status IN ('completed', 'failed', 'rolled_back', 'cancelled')
) AS e
ORDER BY e.run_id, e.ord
"""

# The secondary indexes of the three tables, as ``CREATE INDEX`` statements.
INDEXES_SQL = """
SELECT i.indexname, i.indexdef FROM pg_indexes i
WHERE i.schemaname = current_schema()
  AND i.tablename IN ('flux_runs', 'flux_steps', 'flux_traces')
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
ORDER BY i.indexname
"""


def status_case() -> str:
    return " ".join(f"WHEN r < {bound} THEN '{name}'" for bound, name in STATUS_MIX)


def sql_array(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def run_id(i: int) -> str:
    return f"bench-{i:09d}"


def fill(
    engine: Engine,
    runs: int,
    *,
    chunk: int = 100_000,
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
) -> None:
    """Insert ``runs`` runs with their steps and traces into the (migrated, empty) tables
    ``engine``'s search path finds, ``chunk`` runs per transaction; then VACUUM ANALYZE
    (what autovacuum does on its own a little later)."""
    runs_sql = RUNS_SQL.format(status_case=status_case(), workflows=sql_array(WORKFLOWS))
    steps_sql = STEPS_SQL.format(steps=sql_array(STEPS))
    started = time.perf_counter()
    # As a restore does: the secondary indexes go, and are built once at the end.
    with engine.begin() as conn:
        indexes = conn.execute(sa.text(INDEXES_SQL)).all()
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
    for lo in range(0, runs, chunk):
        hi = min(lo + chunk, runs)
        span = {"first": run_id(lo), "last": run_id(hi)}
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
            conn.execute(sa.text(runs_sql), {"lo": lo, "hi": hi})
            conn.execute(sa.text(steps_sql), span)
            conn.execute(sa.text(TRACES_SQL), span)
        elapsed = time.perf_counter() - started
        say(f"  filled {hi:>10,} / {runs:,} runs  ({elapsed:5.1f} s)")
    say(f"  building {len(indexes)} indexes ...")
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL maintenance_work_mem = '256MB'"))
        for _, definition in indexes:
            conn.execute(sa.text(definition))
    say("  VACUUM ANALYZE ...")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("flux_runs", "flux_steps", "flux_traces"):
            conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
    say(f"  filled in {time.perf_counter() - started:.1f} s")
