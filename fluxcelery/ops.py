"""Read models and operations shared by the CLI, the Flower tab and the trace viewer.

Everything here returns plain JSON-ready dicts, with secret-looking keys redacted, so that
every surface shows the same thing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .core.errors import RunNotFound
from .core.records import RunState, iso
from .core.states import DONE_STEP, RunStatus, StepStatus
from .engine import FluxEngine
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
        "progress": current.progress if current and current.status == StepStatus.RUNNING else None,
        # Steps as defined (a parallel's branch steps included); for_each items apart.
        "steps_done": sum(1 for s in state.steps if s.status in DONE_STEP and s.item is None),
        "steps_total": sum(1 for s in state.steps if s.item is None),
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


#: Runs ``find_runs`` reads at most when it filters beyond what storage can (newest first).
SCAN_LIMIT = 5000
SCAN_PAGE = 500


@dataclass(frozen=True)
class RunFilter:
    """What a runs list is narrowed to. Storage filters on ``workflow`` (and status) itself;
    ``Storage.list_runs`` has no prefix or time parameters, so the other fields are matched
    by ``find_runs`` over the newest runs."""

    #: Exactly this workflow name.
    workflow: str | None = None
    #: Workflow names starting with this.
    workflow_prefix: str | None = None
    #: A full run id or the start of one.
    run_id: str | None = None
    #: Created at or after this (aware datetime).
    created_from: datetime | None = None
    #: Created before this (aware datetime; the range is half-open).
    created_to: datetime | None = None

    @property
    def scans(self) -> bool:
        """Whether matching reads runs in ``find_runs`` rather than asking storage."""
        return bool(self.workflow_prefix or self.run_id or self.created_from or self.created_to)

    def matches(self, state: RunState) -> bool:
        return (
            (self.workflow is None or state.workflow == self.workflow)
            and (not self.workflow_prefix or state.workflow.startswith(self.workflow_prefix))
            and (not self.run_id or state.id.startswith(self.run_id))
            and (self.created_from is None or state.created_at >= self.created_from)
            and (self.created_to is None or state.created_at < self.created_to)
        )


@dataclass
class RunPage:
    """One page of ``find_runs``: its rows, how many runs match in all, and the counts per
    status of the runs that match every filter but the status."""

    runs: list[dict[str, Any]]
    total: int
    counts: dict[str, int]
    #: Runs read to match the filter (None: storage filtered them).
    scanned: int | None = None
    #: The scan stopped at its limit, so older runs were not looked at.
    truncated: bool = False


def find_runs(
    engine: FluxEngine,
    where: RunFilter,
    status: Sequence[str] = (),
    limit: int = 50,
    offset: int = 0,
    scan_limit: int = SCAN_LIMIT,
) -> RunPage:
    """Runs newest first, filtered, with totals. An exact workflow and statuses are storage
    queries; a prefix, a run id or a time range reads up to ``scan_limit`` runs (newest
    first, stopping once they are older than ``created_from``) and matches them here."""
    statuses = list(status)
    if not where.scans:
        counts = status_counts(engine, workflow=where.workflow)
        rows = list_runs(engine, where.workflow, statuses or None, limit, offset)
        total = sum(counts[s] for s in statuses) if statuses else sum(counts.values())
        return RunPage(rows, total, counts)
    matched, scanned, truncated = _scan(engine, where, scan_limit)
    counts = {s: 0 for s in RUN_STATUSES}
    for row in matched:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    chosen = [r for r in matched if not statuses or r["status"] in statuses]
    return RunPage(chosen[offset : offset + limit], len(chosen), counts, scanned, truncated)


def _scan(
    engine: FluxEngine, where: RunFilter, scan_limit: int
) -> tuple[list[dict[str, Any]], int, bool]:
    """Rows of the runs matching ``where`` (newest first), how many runs were read, and
    whether the limit cut the scan short. A run id is looked up exactly first."""
    found: dict[str, dict[str, Any]] = {}
    exact = engine.get(where.run_id) if where.run_id else None
    if exact is not None:
        if where.matches(exact):
            found[exact.id] = run_row(exact)
        if _is_uuid(exact.id):  # a full uuid is the start of no other run's id
            return list(found.values()), 1, False
    scanned = 0
    while scanned < scan_limit:
        size = min(SCAN_PAGE, scan_limit - scanned)
        batch = engine.list(workflow=where.workflow, limit=size, offset=scanned)
        scanned += len(batch)
        for state in batch:
            if where.matches(state):
                found.setdefault(state.id, run_row(state))
        if len(batch) < size or _older_than(batch[-1], where.created_from):
            return _newest_first(found), scanned, False
    return _newest_first(found), scanned, True


def _older_than(state: RunState, start: datetime | None) -> bool:
    return start is not None and state.created_at < start


def _newest_first(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows.values(), key=lambda r: (r["created_at"], r["id"]), reverse=True)


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
