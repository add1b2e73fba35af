"""Read models and operations shared by the CLI, the Flower tab and the trace viewer.

Everything here returns plain JSON-ready dicts, with secret-looking keys redacted, so that
every surface shows the same thing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .engine import FluxEngine
from .errors import RunNotFound
from .records import RunState, iso
from .states import RunStatus
from .trace.event import TraceEvent

RUN_STATUSES = tuple(s.value for s in RunStatus)


def run_row(state: RunState) -> dict[str, Any]:
    """One line of a runs table."""
    current = state.steps[state.current_step] if state.current_step < len(state.steps) else None
    return {
        "id": state.id,
        "workflow": state.workflow,
        "version": state.workflow_version,
        "status": state.status.value,
        "current_step": current.name if current else None,
        "steps_done": sum(1 for s in state.steps if s.status.value in ("completed", "skipped")),
        "steps_total": len(state.steps),
        "error": state.error,
        "executor": state.executor,
        "created_at": iso(state.created_at),
        "updated_at": iso(state.updated_at),
        "finished_at": iso(state.finished_at),
        "duration_ms": state.duration_ms,
    }


def run_detail(engine: FluxEngine, run_id: str, trace_limit: int = 1000) -> dict[str, Any]:
    """A run with its steps and trace events, redacted; raises ``RunNotFound``."""
    state = engine.get(run_id)
    if state is None:
        raise RunNotFound(run_id)
    detail = state.to_dict()
    detail["input"] = engine.redact(detail["input"])
    detail["data"] = engine.redact(detail["data"])
    for step in detail["steps"]:
        step["output"] = engine.redact(step["output"])
    detail["definition"] = _definition(engine, state)
    detail["traces"] = trace_rows(engine.traces(run_id=run_id, limit=trace_limit), engine)
    return detail


def _definition(engine: FluxEngine, state: RunState) -> dict[str, Any] | None:
    try:
        wf = engine.workflow(state.workflow)
    except Exception:
        return None
    desc = wf.describe()
    desc["matches_run"] = state.definition_hash in (None, wf.definition_hash)
    return desc


def trace_rows(
    events: Sequence[TraceEvent], engine: FluxEngine | None = None
) -> list[dict[str, Any]]:
    rows = []
    for e in events:
        row = e.to_dict()
        if engine is not None and row.get("meta"):
            row["meta"] = engine.redact(row["meta"])
        rows.append(row)
    return rows


def list_runs(
    engine: FluxEngine,
    workflow: str | None = None,
    status: str | Sequence[str] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    return [
        run_row(s)
        for s in engine.list(workflow=workflow, status=status, limit=limit, offset=offset)
    ]


def status_counts(engine: FluxEngine, workflow: str | None = None) -> dict[str, int]:
    counts = {s: 0 for s in RUN_STATUSES}
    counts.update(engine.storage.count_runs(workflow=workflow))
    return counts
