"""The third side of bench/celery_overhead.py: a hand-written durable chain.

Plain Celery tasks, no fluxcelery code on the worker: each step task commits the durable
writes a fluxcelery step task commits, in fluxcelery's own tables (``flux_runs``,
``flux_steps``, ``flux_traces``, created by its migrations), with psycopg 3 and
straightforward SQL:

- the producer inserts the run row and its four step rows (one transaction), then sends a
  chain of four tasks;
- each task claims its step (one transaction: the run to running with its version bumped,
  the step row to running with its attempt and task id, a ``step:start`` trace row; the
  first step also writes ``workflow:start``), runs the no-op handler, and stores the outcome
  (one transaction: the step completed with its duration, the run's version, current step
  and status, a ``step:complete`` trace row; the last step also completes the run and writes
  ``workflow:complete``). The last step's handler pushes onto the Redis list, as the
  fluxcelery workflow's does.

The status test is written ``(status = ...) IS TRUE``, as in fluxcelery's claim, so that the
planner stays on the primary key (a plain equality let it pick the status index as the table
aged: this side would slow down for a reason that has nothing to do with its design).

Both transactions are guarded like fluxcelery's (the step must be pending to be claimed, the
run's version must not have moved before the outcome lands); a guard that fails rolls back
and ends the chain. Commits are durable (autocommit off, default ``synchronous_commit``).
This is the floor of "each step a Celery task with durable state".

The worker reads ``BENCH_DURABLE_DSN`` (a libpq URL whose ``search_path`` names the bench
schema) and ``BENCH_DURABLE_QUEUE``; its Celery setup is ``bench_tasks.bench_app``'s, the
same as the plain chain's and fluxcelery's.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from celery import Task, chain
from psycopg.types.json import Jsonb

from bench.bench_tasks import bench_app, done

WORKFLOW = "bench-durable"
STEPS = ("a", "b", "c", "d")
LAST = len(STEPS) - 1
MAX_ATTEMPTS = 4
DEFINITION_HASH = "hand-written"

durable = bench_app("bench_durable", os.environ.get("BENCH_DURABLE_QUEUE", "bench_durable"))
app = durable

CREATE_RUN_SQL = (
    "INSERT INTO flux_runs (id, workflow, definition_hash, status, input, data, current_step, "
    "executor, version, created_at, updated_at, start_meta) VALUES (%(id)s, %(workflow)s, "
    "%(definition_hash)s, 'pending', %(input)s, %(data)s, 0, 'celery', 0, %(now)s, %(now)s, "
    "%(start_meta)s)"
)
CREATE_STEPS_SQL = (
    "INSERT INTO flux_steps (run_id, idx, name, kind, status, attempts, compensation_attempts) "
    "VALUES "
    + ", ".join(f"(%(id)s, {i}, '{name}', 'step', 'pending', 0, 0)" for i, name in enumerate(STEPS))
)
CLAIM_RUN_SQL = (
    "UPDATE flux_runs SET status = 'running', version = version + 1, updated_at = %(now)s "
    "WHERE id = %(id)s AND current_step = %(idx)s "
    "AND ((status = 'pending') IS TRUE OR (status = 'running') IS TRUE) "
    "RETURNING version, created_at"
)
CLAIM_STEP_SQL = (
    "UPDATE flux_steps SET status = 'running', attempts = attempts + 1, task_id = %(task_id)s, "
    "started_at = %(now)s, finished_at = NULL "
    "WHERE run_id = %(id)s AND idx = %(idx)s AND status = 'pending' "
    "AND attempts < %(max_attempts)s RETURNING attempts"
)
COMPLETE_STEP_SQL = (
    "UPDATE flux_steps SET status = 'completed', finished_at = %(now)s, "
    "duration_ms = %(duration_ms)s WHERE run_id = %(id)s AND idx = %(idx)s "
    "AND status = 'running' AND task_id = %(task_id)s"
)
ADVANCE_RUN_SQL = (
    "UPDATE flux_runs SET version = version + 1, current_step = %(next)s, status = %(status)s, "
    "updated_at = %(now)s, finished_at = %(finished_at)s "
    "WHERE id = %(id)s AND version = %(expected)s"
)
TRACE_COLUMNS = (
    "id, ts, run_id, workflow, type, status, step, step_index, kind, attempt, max_attempts, "
    "duration_ms, task_id, worker, meta"
)
_ROW = "(" + ", ".join(["%s"] * len(TRACE_COLUMNS.split(", "))) + ")"
TRACE_SQL = {
    n: f"INSERT INTO flux_traces ({TRACE_COLUMNS}) VALUES " + ", ".join([_ROW] * n) for n in (1, 2)
}

_conn: tuple[int, psycopg.Connection[Any]] | None = None


def connection() -> psycopg.Connection[Any]:
    """This process's connection (a pool child opens its own after the fork)."""
    global _conn
    pid = os.getpid()
    if _conn is None or _conn[0] != pid or _conn[1].closed:
        _conn = (pid, psycopg.connect(os.environ["BENCH_DURABLE_DSN"]))  # autocommit off
    return _conn[1]


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(start: datetime, end: datetime) -> int:
    return int((end - start).total_seconds() * 1000)


def _event(
    run_id: str,
    kind: str,
    status: str,
    at: datetime,
    task_id: str,
    worker: str,
    *,
    idx: int | None = None,
    attempt: int | None = None,
    duration_ms: int | None = None,
    meta: Any = None,
) -> tuple[Any, ...]:
    """One ``flux_traces`` row, in ``TRACE_COLUMNS`` order."""
    step = idx is not None
    return (
        uuid.uuid4().hex,
        at,
        run_id,
        WORKFLOW,
        kind,
        status,
        None if idx is None else STEPS[idx],
        idx,
        "step" if step else None,
        attempt,
        MAX_ATTEMPTS if step else None,
        duration_ms,
        task_id,
        worker,
        None if meta is None else Jsonb(meta),
    )


def _write_traces(conn: psycopg.Connection[Any], events: list[tuple[Any, ...]]) -> None:
    conn.execute(TRACE_SQL[len(events)], [v for e in events for v in e])


# -- producer ----------------------------------------------------------------------------------
def create_run(conn: psycopg.Connection[Any], key: str) -> str:
    """Insert a pending run and its step rows, committed; returns the run id."""
    run_id = str(uuid.uuid4())
    params = {
        "id": run_id,
        "workflow": WORKFLOW,
        "definition_hash": DEFINITION_HASH,
        "input": Jsonb({"key": key}),
        "data": Jsonb({}),
        "now": _now(),
        "start_meta": Jsonb({"input": {"key": key}}),
    }
    try:
        conn.execute(CREATE_RUN_SQL, params)
        conn.execute(CREATE_STEPS_SQL, {"id": run_id})
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return run_id


def start(conn: psycopg.Connection[Any], key: str, queue: str) -> str:
    """Store a run, then send its chain of step tasks."""
    run_id = create_run(conn, key)
    chain(*(durable_step.si(run_id, i, key) for i in range(len(STEPS)))).apply_async(queue=queue)
    return run_id


# -- worker ------------------------------------------------------------------------------------
def claim(
    conn: psycopg.Connection[Any],
    run_id: str,
    idx: int,
    key: str,
    task_id: str,
    worker: str,
    at: datetime,
) -> tuple[int, int, datetime] | None:
    """Start step ``idx`` (one transaction); returns (run version, attempt, run created_at),
    or None when the step is not there to claim (nothing written)."""
    params = {"id": run_id, "idx": idx, "now": at, "task_id": task_id, "max_attempts": MAX_ATTEMPTS}
    try:
        run = conn.execute(CLAIM_RUN_SQL, params).fetchone()
        step = conn.execute(CLAIM_STEP_SQL, params).fetchone() if run else None
        if run is None or step is None:
            conn.rollback()
            return None
        events = []
        if idx == 0:
            meta = {"input": {"key": key}}
            events.append(
                _event(run_id, "workflow:start", "running", at, task_id, worker, meta=meta)
            )
        events.append(
            _event(run_id, "step:start", "running", at, task_id, worker, idx=idx, attempt=step[0])
        )
        _write_traces(conn, events)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return run[0], step[0], run[1]


def complete(
    conn: psycopg.Connection[Any],
    run_id: str,
    idx: int,
    claimed: tuple[int, int, datetime],
    task_id: str,
    worker: str,
    started: datetime,
    at: datetime,
) -> bool:
    """Store step ``idx``'s outcome (one transaction); False when a guard failed (nothing
    written): the step is no longer this task's, or the run moved since the claim."""
    version, attempt, created_at = claimed
    last = idx == LAST
    duration_ms = _ms(started, at)
    try:
        step = conn.execute(
            COMPLETE_STEP_SQL,
            {"id": run_id, "idx": idx, "now": at, "duration_ms": duration_ms, "task_id": task_id},
        )
        run = None
        if step.rowcount == 1:
            run = conn.execute(
                ADVANCE_RUN_SQL,
                {
                    "id": run_id,
                    "expected": version,
                    "next": idx + 1,
                    "status": "completed" if last else "running",
                    "now": at,
                    "finished_at": at if last else None,
                },
            )
        if run is None or run.rowcount != 1:
            conn.rollback()
            return False
        events = [
            _event(
                run_id,
                "step:complete",
                "completed",
                at,
                task_id,
                worker,
                idx=idx,
                attempt=attempt,
                duration_ms=duration_ms,
            )
        ]
        if last:
            events.append(
                _event(
                    run_id,
                    "workflow:complete",
                    "completed",
                    at,
                    task_id,
                    worker,
                    duration_ms=_ms(created_at, at),
                )
            )
        _write_traces(conn, events)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return True


def noop(key: str) -> None:
    return None


# The handlers, as in bench_tasks.flux_chain: the last one signals completion. It runs where
# fluxcelery runs a handler, between the claim and the outcome, so that both sides' round
# trips end at the same point of their last step.
HANDLERS = (noop, noop, noop, done)


@durable.task(name="bench.durable.step", bind=True)
def durable_step(self: Task, run_id: str, idx: int, key: str) -> None:
    conn = connection()
    task_id, worker = self.request.id, self.request.hostname
    started = _now()
    claimed = claim(conn, run_id, idx, key, task_id, worker, started)
    if claimed is None:
        self.request.chain = None  # not this task's to run: the chain ends here
        return
    HANDLERS[idx](key)
    if not complete(conn, run_id, idx, claimed, task_id, worker, started, _now()):
        self.request.chain = None
