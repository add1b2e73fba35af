"""Records to SQLAlchemy Core row values and back (the pooled, Core-statement side of
``SqlStorage``; the hot paths in postgres.py and sqlite.py write the same values)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..core.records import RunState, StepState, utcnow
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
    }


def to_step(row: Any) -> StepState:
    return StepState(
        name=row.name,
        index=row.idx,
        kind=row.kind,
        status=StepStatus(row.status),
        attempts=row.attempts,
        compensation_attempts=row.compensation_attempts,
        output=row.output,
        error=row.error,
        waiting_for=row.waiting_for,
        task_id=row.task_id,
        started_at=utc(row.started_at),
        finished_at=utc(row.finished_at),
        duration_ms=row.duration_ms,
        wait_deadline=utc(row.wait_deadline),
        traceback=row.traceback,
    )


def to_run(row: Any, steps: list[StepState]) -> RunState:
    return RunState(
        id=row.id,
        workflow=row.workflow,
        workflow_version=row.workflow_version,
        definition_hash=row.definition_hash,
        status=RunStatus(row.status),
        input=row.input,
        data=row.data if row.data is not None else {},
        steps=steps,
        current_step=row.current_step,
        error=row.error,
        executor=row.executor,
        version=row.version,
        created_at=utc(row.created_at) or utcnow(),
        updated_at=utc(row.updated_at) or utcnow(),
        finished_at=utc(row.finished_at),
    )


def trace_values(e: TraceEvent, stamp: Callable[[datetime], Any] = utc) -> dict[str, Any]:
    """The ``flux_traces`` row of an event (its columns are the event's fields); ``stamp``
    writes ``ts`` as ``step_values`` does."""
    row = {name: getattr(e, name) for name in TRACE_COLUMNS}
    row["ts"] = stamp(e.ts)
    return row
