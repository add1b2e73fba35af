"""PostgreSQL fast path: each storage operation is ONE statement (one round trip).

A guarded save is a statement of writable CTEs: the run update carries the version check,
and the step updates and trace inserts only happen ``WHERE EXISTS`` that update. Run in
autocommit the statement is its own transaction, atomic; inside a commit step's transaction
it simply joins it.

The step rows and trace rows travel as two JSON arrays (``jsonb_to_recordset``), so every
save is the same short statement with a dozen parameters, whatever it touches. That matters
twice: psycopg caches the parsing of statements under 4 KB and 50 parameters only, and the
server prepares a statement after a few runs only when its text repeats. One statement per
shape (the earlier design) was re-parsed on both sides at every step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..core.jsoncodec import dumps_for_jsonb
from ..core.records import RunState, StepState
from ..core.states import SETTLED_RUN
from ..trace.event import TraceEvent
from . import core_rows, schema
from .core_rows import RUN_FIELDS, STEP_FIELDS, select_list, step_values, trace_values

STEP_COLS = schema.STEP_COLUMNS
TRACE_COLS = schema.TRACE_COLUMNS


def _pg_type(column: sa.Column[Any]) -> str:
    """The PostgreSQL type a JSON field is read as (``jsonb_to_recordset`` needs them)."""
    t = column.type
    if isinstance(t, sa.JSON):
        return "jsonb"
    if isinstance(t, sa.DateTime):
        return "timestamptz"
    if isinstance(t, (sa.Integer, sa.BigInteger)):
        return "integer"
    return "text"


def _record(table: sa.Table, names: Sequence[str]) -> str:
    return ", ".join(f"{n} {_pg_type(table.c[n])}" for n in names)


_STEP_RECORD = _record(schema.steps, STEP_COLS)
_TRACE_RECORD = _record(schema.traces, TRACE_COLS)
_TRACE_INSERT = (
    f"t AS (INSERT INTO flux_traces ({', '.join(TRACE_COLS)}) "
    f"SELECT {', '.join('e.' + c for c in TRACE_COLS)} "
    f"FROM jsonb_to_recordset(%(events)s::jsonb) AS e({_TRACE_RECORD}) "
    "WHERE EXISTS (SELECT 1 FROM r))"
)


def _save_ctes(rows: bool) -> str:
    """The CTEs of a guarded save; ``rows``: ``r``, ``s`` and ``n`` return the rows as
    written (SETTLE_SQL's payload), else ``r`` returns only that it landed."""
    returning, steps_returning = ("*", " RETURNING st.*") if rows else ("id", "")
    return (
        "WITH r AS (UPDATE flux_runs SET workflow_version = %(workflow_version)s, "
        "definition_hash = %(definition_hash)s, status = %(status)s, data = %(data)s::jsonb, "
        "current_step = %(current_step)s::integer, error = %(error)s, executor = %(executor)s, "
        "finished_at = %(finished_at)s::timestamptz, cancel_reason = %(cancel_reason)s, "
        "version = %(new_version)s::integer, "
        "updated_at = %(updated_at)s::timestamptz "
        "WHERE id = %(id)s AND version = %(expected)s::integer "
        f"AND (claims = %(claims)s::integer OR %(any_claims)s::boolean) RETURNING {returning}), "
        "s AS (UPDATE flux_steps AS st SET "
        + ", ".join(f"{c} = x.{c}" for c in STEP_COLS[1:])
        + f" FROM jsonb_to_recordset(%(steps)s::jsonb) AS x({_STEP_RECORD}) "
        "WHERE st.run_id = %(id)s AND st.idx = x.idx AND EXISTS (SELECT 1 FROM r)"
        f"{steps_returning}), "
        # New step rows (for_each items, made at fan-out): usually an empty array.
        f"n AS (INSERT INTO flux_steps (run_id, {', '.join(STEP_COLS)}) "
        f"SELECT %(id)s, {', '.join('x.' + c for c in STEP_COLS)} "
        f"FROM jsonb_to_recordset(%(new_steps)s::jsonb) AS x({_STEP_RECORD}) "
        f"WHERE EXISTS (SELECT 1 FROM r){' RETURNING *' if rows else ''}), " + _TRACE_INSERT
    )


SAVE_SQL = _save_ctes(rows=False) + " SELECT count(*) FROM r"

# A write that settles the run (finished or suspended) also wakes the producers waiting on
# it (storage/pglisten.py), with ``NOTIFY`` sent at commit, so only when it landed. The
# payload is the run as this write left it (``settled_from_payload``), so that a waiting
# ``RunHandle.get`` returns without reading it again (that read was a third of the wait,
# bench/get_latency.py): the rows this statement wrote as RETURNING gives them (its snapshot
# still shows them as they were) and the other step rows. Or the run id alone, when the run
# is too big for a notification (PostgreSQL takes < 8000 bytes; runs of more than
# PAYLOAD_STEPS step rows are not even assembled). It costs the settling write ~0.1 ms;
# writes that do not settle the run use SAVE_SQL and pay nothing. Kept under psycopg's
# 4 KB limit for caching a statement's parsing.
PAYLOAD_STEPS = 16
PAYLOAD_BYTES = 7999
_SETTLED_PAYLOAD = (
    "coalesce((SELECT z.b FROM (SELECT json_build_object('id', r.id, 'run', to_json(r), "
    "'steps', coalesce(json_agg(q ORDER BY q.idx), '[]'))::text AS b FROM (SELECT * FROM s "
    "UNION ALL SELECT * FROM n UNION ALL (SELECT * FROM flux_steps f WHERE f.run_id = r.id "
    f"AND f.idx NOT IN (SELECT idx FROM s) ORDER BY f.idx LIMIT {PAYLOAD_STEPS + 1})) q "
    f"HAVING count(*) <= {PAYLOAD_STEPS}) z WHERE octet_length(z.b) <= {PAYLOAD_BYTES}), r.id)"
)
SETTLE_SQL = (
    _save_ctes(rows=True)
    + f", nt AS (SELECT pg_notify('flux_settled', {_SETTLED_PAYLOAD}) FROM r) "
    "SELECT count(*) FROM r LEFT JOIN nt ON true"
)

CREATE_SQL = (
    "WITH r AS (INSERT INTO flux_runs (id, workflow, workflow_version, definition_hash, "
    "status, input, data, current_step, error, executor, version, created_at, updated_at, "
    "finished_at, start_meta, not_before, cancel_reason) "
    "VALUES (%(id)s, %(workflow)s, %(workflow_version)s, "
    "%(definition_hash)s, %(status)s, %(input)s::jsonb, %(data)s::jsonb, "
    "%(current_step)s::integer, %(error)s, %(executor)s, %(version)s::integer, "
    "%(created_at)s::timestamptz, %(updated_at)s::timestamptz, %(finished_at)s::timestamptz, "
    "%(start_meta)s::jsonb, %(not_before)s::timestamptz, %(cancel_reason)s) "
    "ON CONFLICT (id) DO NOTHING RETURNING id), "
    f"s AS (INSERT INTO flux_steps (run_id, {', '.join(STEP_COLS)}) "
    f"SELECT r.id, {', '.join('x.' + c for c in STEP_COLS)} "
    f"FROM r, jsonb_to_recordset(%(steps)s::jsonb) AS x({_STEP_RECORD})), "
    + _TRACE_INSERT
    + " SELECT count(*) FROM r"
)

# One row per step. The run's JSON columns come on the first row only (steps are numbered
# from 0; a run without steps has one row with a NULL idx): psycopg parses every jsonb value
# it receives, and a 20-step run with a 48 KB input took 7 ms of client CPU per load when
# each row carried them.
_LOAD_RUN_COLS = ", ".join(
    # The run's JSON columns come on the first row only.
    f"CASE WHEN s.idx IS NULL OR s.idx = 0 THEN r.{c} END" if c in ("input", "data") else f"r.{c}"
    for c in RUN_FIELDS
)
LOAD_SQL = (
    f"SELECT {_LOAD_RUN_COLS}, {select_list('s', STEP_FIELDS)} "
    "FROM flux_runs r LEFT JOIN flux_steps s ON s.run_id = r.id "
    "WHERE r.id = %(id)s ORDER BY s.idx"
)


# A row view (``RowViewStorage``): the run with its defined steps, one row and the rows
# where its group's next send looks, by index lookups only (no scan of the items).
_NEXT = (
    "(SELECT coalesce((g.scope->>'next')::integer, 0) FROM flux_steps g "
    "WHERE g.run_id = %(id)s AND g.idx = (SELECT parent FROM flux_steps "
    "WHERE run_id = %(id)s AND idx = %(row)s::integer))"
)
VIEW_SQL = (
    f"SELECT {_LOAD_RUN_COLS}, {select_list('s', STEP_FIELDS)}, "
    "(SELECT idx FROM flux_steps WHERE run_id = %(id)s ORDER BY idx DESC LIMIT 1) "
    "FROM flux_runs r LEFT JOIN LATERAL (SELECT * FROM flux_steps "
    "WHERE run_id = r.id AND idx < %(defined)s::integer "
    "UNION ALL SELECT * FROM flux_steps WHERE run_id = r.id AND idx = %(row)s::integer "
    "AND idx >= %(defined)s::integer "
    "UNION ALL SELECT * FROM flux_steps WHERE run_id = r.id AND idx <> %(row)s::integer "
    f"AND idx >= greatest(%(defined)s::integer, {_NEXT}) "
    f"AND idx < {_NEXT} + %(waiting)s::integer) s ON true "
    "WHERE r.id = %(id)s ORDER BY s.idx"
)

# Load a run and, in the same statement, start its step ``idx`` when that is the plain case:
# the run is running at that step (or pending, at its first step, with its start meta
# stored), the step is pending with attempts left, and the stored definition is the caller's.
# The step row is the guard: of two tasks claiming one step, the second finds it no longer
# pending (PostgreSQL re-checks a row changed by a concurrent update) and claims nothing. A
# pending run becomes running and gets its ``workflow:start`` event (meta from
# ``start_meta``) before the ``step:start``. The rows returned are the run as it was before
# the claim; the caller applies the claim's known changes when ``claimed`` (the last column)
# is 1. ``(status = ...) IS TRUE`` keeps the planner on the primary key: a plain equality let
# it pick the (status, updated_at) index, whose ranges are full of dead entries left by
# every save, and the claim slowed down as the table aged.
_CLAIM_EVENT_COLS = (
    "id, ts, run_id, workflow, type, status, step, step_index, kind, attempt, max_attempts, "
    "task_id, worker, meta"
)
CLAIM_SQL = (
    "WITH c_old AS (SELECT status, start_meta FROM flux_runs WHERE id = %(id)s), "
    "c_run AS (UPDATE flux_runs SET version = version + 1, status = 'running', "
    "updated_at = %(now)s::timestamptz WHERE id = %(id)s "
    "AND ((status = 'running') IS TRUE "
    "OR ((status = 'pending') IS TRUE AND start_meta IS NOT NULL)) "
    "AND current_step = %(idx)s::integer AND definition_hash = %(definition_hash)s "
    "AND EXISTS (SELECT 1 FROM flux_steps WHERE run_id = %(id)s AND idx = %(idx)s::integer "
    "AND status = 'pending' AND attempts < %(max_attempts)s::integer) RETURNING id), "
    "c_step AS (UPDATE flux_steps SET status = 'running', attempts = attempts + 1, "
    "task_id = %(task_id)s, started_at = %(now)s::timestamptz, finished_at = NULL "
    "WHERE run_id = %(id)s AND idx = %(idx)s::integer AND status = 'pending' "
    "AND attempts < %(max_attempts)s::integer AND EXISTS (SELECT 1 FROM c_run) "
    "RETURNING attempts), "
    f"c_trace AS (INSERT INTO flux_traces ({_CLAIM_EVENT_COLS}) SELECT {_CLAIM_EVENT_COLS} "
    "FROM (SELECT 1 AS o, %(start_event_id)s AS id, %(now)s::timestamptz AS ts, "
    "%(id)s AS run_id, %(workflow)s AS workflow, 'workflow:start' AS type, "
    "'running' AS status, NULL::text AS step, NULL::integer AS step_index, NULL::text AS kind, "
    "NULL::integer AS attempt, NULL::integer AS max_attempts, %(task_id)s AS task_id, "
    "%(worker)s AS worker, c_old.start_meta AS meta FROM c_step, c_old "
    "WHERE c_old.status = 'pending' "
    "UNION ALL SELECT 2, %(event_id)s, %(now)s::timestamptz, %(id)s, %(workflow)s, "
    "'step:start', 'running', %(step)s, %(idx)s::integer, %(kind)s, c_step.attempts, "
    "%(max_attempts)s::integer, %(task_id)s, %(worker)s, NULL::jsonb FROM c_step) AS e "
    "ORDER BY e.o) "
    # The run and the claimed step's row only (a ``PartialRows``: other rows are read when
    # something asks, ``ctx.results`` one output at a time), so that a step's read does not
    # grow with the steps before it. Then the last row index, then whether it claimed.
    f"SELECT {select_list('r', RUN_FIELDS)}, {select_list('s', STEP_FIELDS)}, "
    "(SELECT idx FROM flux_steps WHERE run_id = %(id)s ORDER BY idx DESC LIMIT 1), "
    "(SELECT count(*) FROM c_step) FROM flux_runs r LEFT JOIN flux_steps s "
    "ON s.run_id = r.id AND s.idx = %(idx)s::integer WHERE r.id = %(id)s"
)

#: One step row by name (``ctx.results`` of a run read partially): status, kind, output.
OUTPUT_SQL = (
    "SELECT status, kind, output FROM flux_steps WHERE run_id = %(id)s AND name = %(name)s "
    "AND item IS NULL"
)


def _json(value: Any) -> str | None:
    return None if value is None else dumps_for_jsonb(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _step_row(s: StepState) -> dict[str, Any]:
    return step_values(s, stamp=_iso)


def _trace_row(e: TraceEvent) -> dict[str, Any]:
    return trace_values(e, stamp=datetime.isoformat)  # JSON text for jsonb_to_recordset


def _rows(rows: list[dict[str, Any]], what: str) -> str:
    # Outputs and meta were checked when they were made (jsoncodec.roundtrip); error texts
    # are plain strings. ``dumps`` still refuses a NUL, which PostgreSQL cannot store.
    return dumps_for_jsonb(rows, what=what) if rows else "[]"


def state_from_rows(rows: Sequence[Any]) -> RunState | None:
    """The run from ``LOAD_SQL``'s rows (psycopg returns JSON and aware timestamps)."""
    return core_rows.state_from_rows(rows, ts=_same)


def settled_from_payload(payload: str) -> tuple[str, RunState | None]:
    """The run id a settling write's notification names and, when the run fitted in it,
    the run as that write left it (SETTLE_SQL); else ``(payload, None)``."""
    if payload.startswith("{"):
        try:
            doc = json.loads(payload)
            run = doc["run"]
            steps = [
                core_rows.decode_step([row[c] for c in STEP_FIELDS], ts=_from_iso)
                for row in doc["steps"]
            ]
            state = core_rows.decode_run([run[c] for c in RUN_FIELDS], steps, ts=_from_iso)
            return doc["id"], state
        except (ValueError, KeyError, TypeError):
            pass  # a run id that starts with "{" (or a payload of another version)
    return payload, None


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _same(value: Any) -> Any:
    return value


def save_sql(state: RunState) -> str:
    """The statement that saves ``state``: one that settles the run also notifies."""
    return SETTLE_SQL if state.status in SETTLED_RUN else SAVE_SQL


def save_params(
    state: RunState,
    expected_version: int,
    steps: Iterable[int],
    events: Sequence[TraceEvent],
    now: datetime,
    created: Iterable[int] = (),
    any_claims: bool = False,
) -> dict[str, Any]:
    """Parameters of ``save_sql(state)``: it returns 1 when the guarded write landed, else 0.
    ``any_claims``: land whatever item starts happened since the read (an item's outcome).
    ``created``: step rows that are new (for_each items), inserted."""
    new = set(created)
    return {
        "id": state.id,
        "expected": expected_version,
        "claims": state.claims,
        "any_claims": any_claims,
        "new_version": expected_version + 1,
        "updated_at": now,
        "workflow_version": state.workflow_version,
        "definition_hash": state.definition_hash,
        "status": state.status.value,
        "data": _json(state.data),
        "current_step": state.current_step,
        "error": state.error,
        "executor": state.executor,
        "finished_at": state.finished_at,
        "cancel_reason": state.cancel_reason,
        "steps": _rows([_step_row(state.steps[i]) for i in sorted(set(steps) - new)], "step rows"),
        "new_steps": _rows([_step_row(state.steps[i]) for i in sorted(new)], "step rows"),
        "events": _rows([_trace_row(e) for e in events], "trace events"),
    }


def create_params(state: RunState, events: Sequence[TraceEvent], now: datetime) -> dict[str, Any]:
    """Parameters of ``CREATE_SQL``: it returns 1 when the run was new, else 0."""
    return {
        "id": state.id,
        "workflow": state.workflow,
        "workflow_version": state.workflow_version,
        "definition_hash": state.definition_hash,
        "status": state.status.value,
        "input": _json(state.input),
        "data": _json(state.data),
        "current_step": state.current_step,
        "error": state.error,
        "executor": state.executor,
        "version": state.version,
        "created_at": state.created_at,
        "updated_at": now,
        "finished_at": state.finished_at,
        "start_meta": _json(state.start_meta),
        "not_before": state.not_before,
        "cancel_reason": state.cancel_reason,
        "steps": _rows([_step_row(s) for s in state.steps], "step rows"),
        "events": _rows([_trace_row(e) for e in events], "trace events"),
    }


def save(
    conn: Connection,
    state: RunState,
    expected_version: int,
    steps: Iterable[int],
    events: Sequence[TraceEvent],
    now: datetime,
    created: Iterable[int] = (),
    any_claims: bool = False,
) -> bool:
    """A guarded save inside an open SQLAlchemy transaction (a commit step's)."""
    params = save_params(state, expected_version, steps, events, now, created, any_claims)
    return conn.exec_driver_sql(save_sql(state), params).scalar() == 1


# Start a for_each item while reading its row view (``load_row_view``), in one statement:
# the claim of CLAIM_SQL (the step row is the guard), for a row whose group step is the
# run's current step and running. It counts in ``claims``, not ``version``: a write made
# from an older read does not land (SAVE_SQL checks both), except a sibling item's outcome,
# which does not depend on which items started (``any_claims``), and so is not made again
# for every start. The rows returned are as before the claim; ``claimed`` is the last column.
ROW_CLAIM_SQL = (
    "WITH c_row AS (SELECT parent FROM flux_steps WHERE run_id = %(id)s "
    "AND idx = %(row)s::integer), "
    "c_run AS (UPDATE flux_runs SET claims = claims + 1, updated_at = %(now)s::timestamptz "
    "WHERE id = %(id)s AND (status = 'running') IS TRUE AND cancel_reason IS NULL "
    "AND current_step = (SELECT parent FROM c_row) "
    "AND definition_hash = %(definition_hash)s "
    "AND EXISTS (SELECT 1 FROM flux_steps WHERE run_id = %(id)s "
    "AND idx = (SELECT parent FROM c_row) AND status = 'running') "
    "AND EXISTS (SELECT 1 FROM flux_steps WHERE run_id = %(id)s AND idx = %(row)s::integer "
    "AND status = 'pending' AND attempts < %(max_attempts)s::integer) RETURNING id), "
    "c_step AS (UPDATE flux_steps SET status = 'running', attempts = attempts + 1, "
    "task_id = %(task_id)s, started_at = %(now)s::timestamptz, finished_at = NULL, "
    "progress = NULL WHERE run_id = %(id)s AND idx = %(row)s::integer AND status = 'pending' "
    "AND attempts < %(max_attempts)s::integer AND EXISTS (SELECT 1 FROM c_run) "
    "RETURNING attempts, item, branch), "
    f"c_trace AS (INSERT INTO flux_traces ({_CLAIM_EVENT_COLS}) "
    "SELECT %(event_id)s, %(now)s::timestamptz, %(id)s, %(workflow)s, 'step:start', "
    "'running', %(step)s, %(row)s::integer, %(kind)s, c_step.attempts, "
    "%(max_attempts)s::integer, %(task_id)s, %(worker)s, "
    "CASE WHEN c_step.item IS NOT NULL THEN jsonb_build_object('item', c_step.item) "
    "ELSE jsonb_build_object('branch', c_step.branch) END FROM c_step) "
    + VIEW_SQL.replace(
        "ORDER BY idx DESC LIMIT 1) ",
        "ORDER BY idx DESC LIMIT 1), (SELECT count(*) FROM c_step) ",
        1,
    )
)

__all__ = [
    "ROW_CLAIM_SQL",
    "VIEW_SQL",
    "CLAIM_SQL",
    "CREATE_SQL",
    "LOAD_SQL",
    "OUTPUT_SQL",
    "SAVE_SQL",
    "SETTLE_SQL",
    "create_params",
    "save",
    "save_params",
    "save_sql",
    "settled_from_payload",
    "state_from_rows",
]
