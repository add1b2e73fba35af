"""Records to SQLAlchemy Core row values and back (the pooled, Core-statement side of
``SqlStorage``; the hot paths in postgres.py and sqlite.py write the same values)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..core.records import PartialRows, RunState, StepState, utcnow
from ..core.states import RunStatus, StepStatus
from ..trace.event import TraceEvent
from .schema import TRACE_COLUMNS


def utc(value: datetime | None) -> datetime | None:
    """Aware UTC: SQLite hands back naive wall-clock values (written in UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def run_values(state: RunState) -> dict[str, Any]:
    # Every datetime is written in UTC: SQLite keeps wall-clock text, not the offset.
    return {
        "workflow": state.workflow,
        "workflow_version": state.workflow_version,
        "definition_hash": state.definition_hash,
        "status": state.status.value,
        "input": state.input,
        "data": state.data,
        "current_step": state.current_step,
        "error": state.error,
        "executor": state.executor,
        "finished_at": utc(state.finished_at),
        "cancel_reason": state.cancel_reason,
    }


def step_values(s: StepState, stamp: Callable[[datetime | None], Any] = utc) -> dict[str, Any]:
    """A ``flux_steps`` row without its ``run_id``; ``stamp`` writes the timestamps (aware
    UTC datetimes here, ISO text in postgres.py's JSON rows)."""
    return {
        "idx": s.index,
        "name": s.name,
        "kind": s.kind,
        "status": s.status.value,
        "attempts": s.attempts,
        "compensation_attempts": s.compensation_attempts,
        "output": s.output,
        "error": s.error,
        "waiting_for": s.waiting_for,
        "task_id": s.task_id,
        "started_at": stamp(s.started_at),
        "finished_at": stamp(s.finished_at),
        "duration_ms": s.duration_ms,
        "wait_deadline": stamp(s.wait_deadline),
        "traceback": s.traceback,
        "progress": s.progress,
        "branch": s.branch,
        "item": s.item,
        "parent": s.parent,
        "scope": s.scope,
    }


#: The columns a run is decoded from, in order (``decode_run``): every read of a run selects
#: these, then ``STEP_FIELDS`` per step (``decode_step``).
RUN_FIELDS = (
    "id",
    "workflow",
    "workflow_version",
    "definition_hash",
    "status",
    "input",
    "data",
    "current_step",
    "error",
    "executor",
    "version",
    "created_at",
    "updated_at",
    "finished_at",
    "cancel_reason",
    "claims",
)
STEP_FIELDS = (
    "idx",
    "name",
    "kind",
    "status",
    "attempts",
    "compensation_attempts",
    "output",
    "error",
    "waiting_for",
    "task_id",
    "started_at",
    "finished_at",
    "duration_ms",
    "wait_deadline",
    "traceback",
    "progress",
    "branch",
    "item",
    "parent",
    "scope",
)
#: Where the step columns start in a run-and-steps row (``state_from_rows``).
STEP_AT = len(RUN_FIELDS)


def _same(value: Any) -> Any:
    return value


def decode_step(
    row: Sequence[Any],
    at: int = 0,
    json: Callable[[Any], Any] = _same,
    ts: Callable[[Any], datetime | None] = utc,
) -> StepState:
    """The step in ``row[at:]`` (``STEP_FIELDS``). ``json`` and ``ts`` turn what the driver
    returned into Python values (SQLite's hot path reads JSON and timestamps as text)."""
    return StepState(
        index=row[at],
        name=row[at + 1],
        kind=row[at + 2],
        status=StepStatus(row[at + 3]),
        attempts=row[at + 4],
        compensation_attempts=row[at + 5],
        output=json(row[at + 6]),
        error=row[at + 7],
        waiting_for=row[at + 8],
        task_id=row[at + 9],
        started_at=ts(row[at + 10]),
        finished_at=ts(row[at + 11]),
        duration_ms=row[at + 12],
        wait_deadline=ts(row[at + 13]),
        traceback=row[at + 14],
        progress=json(row[at + 15]),
        branch=row[at + 16],
        item=row[at + 17],
        parent=row[at + 18],
        scope=json(row[at + 19]),
    )


def decode_run(
    row: Sequence[Any],
    steps: list[StepState],
    json: Callable[[Any], Any] = _same,
    ts: Callable[[Any], datetime | None] = utc,
) -> RunState:
    """The run in ``row[:STEP_AT]`` (``RUN_FIELDS``), with ``steps``."""
    return RunState(
        id=row[0],
        workflow=row[1],
        workflow_version=row[2],
        definition_hash=row[3],
        status=RunStatus(row[4]),
        input=json(row[5]),
        data=json(row[6]) or {},
        steps=steps,
        current_step=row[7],
        error=row[8],
        executor=row[9],
        version=row[10],
        created_at=ts(row[11]) or utcnow(),
        updated_at=ts(row[12]) or utcnow(),
        finished_at=ts(row[13]),
        cancel_reason=row[14],
        claims=row[15] or 0,
    )


def state_from_rows(
    rows: Sequence[Sequence[Any]],
    json: Callable[[Any], Any] = _same,
    ts: Callable[[Any], datetime | None] = utc,
) -> RunState | None:
    """A run from the rows of a run joined with its steps (one row per step; a run with no
    steps has one row whose step columns are NULL), as both hot paths' loads return."""
    if not rows:
        return None
    steps = [decode_step(r, STEP_AT, json, ts) for r in rows if r[STEP_AT] is not None]
    return decode_run(rows[0], steps, json, ts)


def partial_from_rows(
    rows: Sequence[Sequence[Any]],
    fetch: Callable[[], list[StepState]],
    json: Callable[[Any], Any] = _same,
    ts: Callable[[Any], datetime | None] = utc,
    output_of: Callable[[str], tuple[str, str, Any] | None] | None = None,
) -> RunState | None:
    """A run read by a row view (``RowViewStorage``): run-and-steps rows followed by one
    column, the run's last row index."""
    if not rows:
        return None
    at = STEP_AT + len(STEP_FIELDS)
    steps = {
        step.index: step
        for step in (decode_step(r, STEP_AT, json, ts) for r in rows if r[STEP_AT] is not None)
    }
    last = rows[0][at]
    total = (int(last) + 1) if last is not None else 0
    return decode_run(rows[0], PartialRows(steps, total, fetch, output_of), json, ts)


def select_list(table: str, fields: Sequence[str]) -> str:
    """``t.a, t.b, ...``: the select list of ``fields`` for hand-written statements."""
    return ", ".join(f"{table}.{name}" for name in fields)


def trace_values(e: TraceEvent, stamp: Callable[[datetime], Any] = utc) -> dict[str, Any]:
    """The ``flux_traces`` row of an event (its columns are the event's fields); ``stamp``
    writes ``ts`` as ``step_values`` does."""
    row = {name: getattr(e, name) for name in TRACE_COLUMNS}
    row["ts"] = stamp(e.ts)
    return row
