"""PostgreSQL fast path: each storage operation is ONE statement (one round trip).

A guarded save is a statement of writable CTEs: the run update carries the version check,
and the step updates and trace inserts only happen ``WHERE EXISTS`` that update. Run in
autocommit the statement is its own transaction, atomic; inside a commit step's transaction
it simply joins it. Statements are cached by shape (how many steps and events), so SQL text
is built a handful of times per process.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy.engine import Connection

from ..jsoncodec import dumps
from ..records import RunState, StepState, utcnow
from ..states import RunStatus, StepStatus
from ..trace.event import TraceEvent
from . import schema

RUN_COLS = schema.RUN_COLUMNS
STEP_COLS = schema.STEP_COLUMNS
TRACE_COLS = schema.TRACE_COLUMNS
# Casts make parameters typed where PostgreSQL cannot infer them (VALUES lists).
CASTS = {
    "input": "jsonb",
    "data": "jsonb",
    "output": "jsonb",
    "meta": "jsonb",
    "current_step": "integer",
    "version": "integer",
    "idx": "integer",
    "attempts": "integer",
    "compensation_attempts": "integer",
    "duration_ms": "integer",
    "step_index": "integer",
    "attempt": "integer",
    "max_attempts": "integer",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "finished_at": "timestamptz",
    "started_at": "timestamptz",
    "wait_deadline": "timestamptz",
    "ts": "timestamptz",
}
JSON_COLS = frozenset({"input", "data", "output", "meta"})


def _p(name: str, col: str) -> str:
    cast = CASTS.get(col, "text")
    return f"%({name})s::{cast}"


def _json(value: Any) -> str | None:
    return None if value is None else dumps(value)


def _run_params(state: RunState, prefix: str = "r_") -> dict[str, Any]:
    return {
        f"{prefix}workflow": state.workflow,
        f"{prefix}workflow_version": state.workflow_version,
        f"{prefix}definition_hash": state.definition_hash,
        f"{prefix}status": state.status.value,
        f"{prefix}data": _json(state.data),
        f"{prefix}current_step": state.current_step,
        f"{prefix}error": state.error,
        f"{prefix}executor": state.executor,
        f"{prefix}finished_at": state.finished_at,
    }


def _step_params(s: StepState, prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}idx": s.index,
        f"{prefix}name": s.name,
        f"{prefix}kind": s.kind,
        f"{prefix}status": s.status.value,
        f"{prefix}attempts": s.attempts,
        f"{prefix}compensation_attempts": s.compensation_attempts,
        f"{prefix}output": _json(s.output),
        f"{prefix}error": s.error,
        f"{prefix}waiting_for": s.waiting_for,
        f"{prefix}task_id": s.task_id,
        f"{prefix}started_at": s.started_at,
        f"{prefix}finished_at": s.finished_at,
        f"{prefix}duration_ms": s.duration_ms,
        f"{prefix}wait_deadline": s.wait_deadline,
    }


def _trace_params(e: TraceEvent, prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}id": e.id,
        f"{prefix}ts": e.ts,
        f"{prefix}run_id": e.run_id,
        f"{prefix}workflow": e.workflow,
        f"{prefix}type": e.type,
        f"{prefix}status": e.status,
        f"{prefix}step": e.step,
        f"{prefix}step_index": e.step_index,
        f"{prefix}kind": e.kind,
        f"{prefix}attempt": e.attempt,
        f"{prefix}max_attempts": e.max_attempts,
        f"{prefix}duration_ms": e.duration_ms,
        f"{prefix}error": e.error,
        f"{prefix}task_id": e.task_id,
        f"{prefix}worker": e.worker,
        f"{prefix}meta": _json(e.meta),
    }


def _trace_cte(n_events: int, guard: str) -> str:
    rows = ", ".join(
        "(" + ", ".join(_p(f"t{i}_{c}", c) for c in TRACE_COLS) + ")" for i in range(n_events)
    )
    cols = ", ".join(TRACE_COLS)
    return (
        f"t AS (INSERT INTO flux_traces ({cols}) SELECT * FROM (VALUES {rows}) AS v({cols}) "
        f"WHERE EXISTS (SELECT 1 FROM {guard}))"
    )


@lru_cache(maxsize=64)
def save_sql(n_steps: int, n_events: int) -> str:
    sets = ", ".join(
        f"{c} = {_p('r_' + c, c)}"
        for c in (
            "workflow",
            "workflow_version",
            "definition_hash",
            "status",
            "data",
            "current_step",
            "error",
            "executor",
            "finished_at",
        )
    )
    ctes = [
        f"r AS (UPDATE flux_runs SET {sets}, version = %(b_new_version)s::integer, "
        "updated_at = %(b_updated_at)s::timestamptz "
        "WHERE id = %(b_id)s AND version = %(b_expected)s::integer RETURNING id)"
    ]
    for i in range(n_steps):
        step_sets = ", ".join(f"{c} = {_p(f's{i}_{c}', c)}" for c in STEP_COLS[1:])
        ctes.append(
            f"s{i} AS (UPDATE flux_steps SET {step_sets} WHERE run_id = %(b_id)s "
            f"AND idx = %(s{i}_idx)s::integer AND EXISTS (SELECT 1 FROM r))"
        )
    if n_events:
        ctes.append(_trace_cte(n_events, "r"))
    return "WITH " + ",\n".join(ctes) + "\nSELECT count(*) FROM r"


@lru_cache(maxsize=64)
def create_sql(n_steps: int, n_events: int) -> str:
    run_cols = ", ".join(RUN_COLS)
    run_vals = ", ".join(_p(f"c_{c}", c) for c in RUN_COLS)
    ctes = [
        f"r AS (INSERT INTO flux_runs ({run_cols}) VALUES ({run_vals}) "
        "ON CONFLICT (id) DO NOTHING RETURNING id)"
    ]
    if n_steps:
        cols = ", ".join(STEP_COLS)
        rows = ", ".join(
            "(" + ", ".join(_p(f"s{i}_{c}", c) for c in STEP_COLS) + ")" for i in range(n_steps)
        )
        ctes.append(
            f"s AS (INSERT INTO flux_steps (run_id, {cols}) SELECT r.id, v.* FROM r, "
            f"(VALUES {rows}) AS v({cols}))"
        )
    if n_events:
        ctes.append(_trace_cte(n_events, "r"))
    return "WITH " + ",\n".join(ctes) + "\nSELECT count(*) FROM r"


LOAD_SQL = (
    "SELECT r.id, r.workflow, r.workflow_version, r.definition_hash, r.status, r.input, "
    "r.data, r.current_step, r.error, r.executor, r.version, r.created_at, r.updated_at, "
    "r.finished_at, s.idx, s.name, s.kind, s.status, s.attempts, s.compensation_attempts, "
    "s.output, s.error, s.waiting_for, s.task_id, s.started_at, s.finished_at, "
    "s.duration_ms, s.wait_deadline "
    "FROM flux_runs r LEFT JOIN flux_steps s ON s.run_id = r.id "
    "WHERE r.id = %(id)s ORDER BY s.idx"
)


def load(conn: Connection, run_id: str) -> RunState | None:
    rows = conn.exec_driver_sql(LOAD_SQL, {"id": run_id}).all()
    if not rows:
        return None
    first = rows[0]
    steps = [
        StepState(
            index=row[14],
            name=row[15],
            kind=row[16],
            status=StepStatus(row[17]),
            attempts=row[18],
            compensation_attempts=row[19],
            output=row[20],
            error=row[21],
            waiting_for=row[22],
            task_id=row[23],
            started_at=row[24],
            finished_at=row[25],
            duration_ms=row[26],
            wait_deadline=row[27],
        )
        for row in rows
        if row[14] is not None
    ]
    return RunState(
        id=first[0],
        workflow=first[1],
        workflow_version=first[2],
        definition_hash=first[3],
        status=RunStatus(first[4]),
        input=first[5],
        data=first[6] or {},
        steps=steps,
        current_step=first[7],
        error=first[8],
        executor=first[9],
        version=first[10],
        created_at=first[11],
        updated_at=first[12],
        finished_at=first[13],
    )


def save(
    conn: Connection,
    state: RunState,
    expected_version: int,
    steps: Iterable[int],
    events: Sequence[TraceEvent],
    now: datetime,
) -> bool:
    indexes = sorted(set(steps))
    params = _run_params(state)
    params.update(
        b_id=state.id,
        b_expected=expected_version,
        b_new_version=expected_version + 1,
        b_updated_at=now,
    )
    for i, idx in enumerate(indexes):
        params.update(_step_params(state.steps[idx], f"s{i}_"))
    for i, e in enumerate(events):
        params.update(_trace_params(e, f"t{i}_"))
    landed = conn.exec_driver_sql(save_sql(len(indexes), len(events)), params).scalar()
    return landed == 1


def create(conn: Connection, state: RunState, events: Sequence[TraceEvent], now: datetime) -> bool:
    params: dict[str, Any] = {
        "c_id": state.id,
        "c_workflow": state.workflow,
        "c_workflow_version": state.workflow_version,
        "c_definition_hash": state.definition_hash,
        "c_status": state.status.value,
        "c_input": _json(state.input),
        "c_data": _json(state.data),
        "c_current_step": state.current_step,
        "c_error": state.error,
        "c_executor": state.executor,
        "c_version": state.version,
        "c_created_at": state.created_at,
        "c_updated_at": now,
        "c_finished_at": state.finished_at,
    }
    for i, s in enumerate(state.steps):
        params.update(_step_params(s, f"s{i}_"))
    for i, e in enumerate(events):
        params.update(_trace_params(e, f"t{i}_"))
    created = conn.exec_driver_sql(create_sql(len(state.steps), len(events)), params).scalar()
    return created == 1


__all__ = ["create", "load", "save", "utcnow"]
