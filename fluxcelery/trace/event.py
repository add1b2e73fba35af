"""The trace event: one frozen record per thing that happened to a run."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

EVENT_TYPES = (
    "workflow:start",
    "workflow:complete",
    "workflow:error",
    "workflow:cancel",
    "workflow:rollback_start",
    "workflow:rollback_complete",
    "step:start",
    "step:complete",
    "step:error",
    "step:retry",
    "step:skipped",
    "step:suspend",
    "step:progress",
    "step:compensate",
    "step:compensate_error",
    "signal:received",
    "hook:error",
    "parallel:start",
    "parallel:join",
    "approval:requested",
    "approval:decided",
)

FIELDS = (
    "id",
    "ts",
    "run_id",
    "workflow",
    "type",
    "status",
    "step",
    "step_index",
    "kind",
    "attempt",
    "max_attempts",
    "duration_ms",
    "error",
    "task_id",
    "worker",
    "meta",
)


class _EventIds:
    """32 hex digits: 64 random bits drawn once per process, then a counter.

    Unique for our use like ``uuid4().hex`` (two processes drawing the same 64-bit prefix is
    as unlikely as a uuid collision; a forked child draws its own) at a small part of its
    cost: ten ids per run made the ``urandom`` system call show in profiles.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


new_event_id = _EventIds()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TraceEvent:
    """One trace event. ``to_dict()`` is the NDJSON line and the ``flux_traces`` row."""

    type: str
    run_id: str
    workflow: str
    status: str | None = None
    step: str | None = None
    step_index: int | None = None
    kind: str | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    duration_ms: int | None = None
    error: str | None = None
    task_id: str | None = None
    worker: str | None = None
    meta: dict[str, Any] | None = None
    ts: datetime = field(default_factory=_now)
    id: str = field(default_factory=new_event_id)

    @classmethod
    def make(
        cls,
        type: str,
        run_id: str,
        workflow: str,
        *,
        status: str | None = None,
        step: str | None = None,
        step_index: int | None = None,
        kind: str | None = None,
        attempt: int | None = None,
        max_attempts: int | None = None,
        duration_ms: int | None = None,
        error: str | None = None,
        task_id: str | None = None,
        worker: str | None = None,
        meta: dict[str, Any] | None = None,
        ts: datetime | None = None,
        id: str | None = None,
    ) -> TraceEvent:
        """The engine's constructor: the same event, without the frozen dataclass's
        per-field ``object.__setattr__`` (ten events per run made that add up)."""
        event = object.__new__(cls)
        event.__dict__.update(
            type=type,
            run_id=run_id,
            workflow=workflow,
            status=status,
            step=step,
            step_index=step_index,
            kind=kind,
            attempt=attempt,
            max_attempts=max_attempts,
            duration_ms=duration_ms,
            error=error,
            task_id=task_id,
            worker=worker,
            meta=meta,
            ts=_now() if ts is None else ts,
            id=new_event_id() if id is None else id,
        )
        return event

    def replace(self, **changes: Any) -> TraceEvent:
        """A copy with some fields changed (``dataclasses.replace`` without its cost)."""
        event = object.__new__(TraceEvent)
        event.__dict__.update(self.__dict__)
        event.__dict__.update(changes)
        return event

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts.isoformat().replace("+00:00", "Z"),
            "run_id": self.run_id,
            "workflow": self.workflow,
            "type": self.type,
            "status": self.status,
            "step": self.step,
            "step_index": self.step_index,
            "kind": self.kind,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "task_id": self.task_id,
            "worker": self.worker,
            "meta": dict(self.meta) if self.meta is not None else None,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TraceEvent:
        """Parse an NDJSON line's object; raises ``ValueError`` for anything not an event."""
        if not isinstance(raw, dict):
            raise ValueError(f"a trace event is a JSON object, got {type(raw).__name__}")
        for key in ("run_id", "workflow", "type"):
            if not isinstance(raw.get(key), str):
                raise ValueError(f"trace event field {key!r} must be a string")
        for key in ("step_index", "attempt", "max_attempts", "duration_ms"):
            if raw.get(key) is not None and not isinstance(raw[key], int):
                raise ValueError(f"trace event field {key!r} must be an integer")
        if raw.get("meta") is not None and not isinstance(raw["meta"], dict):
            raise ValueError("trace event field 'meta' must be an object")
        if raw.get("ts") is not None and not isinstance(raw["ts"], str):
            raise ValueError("trace event field 'ts' must be an ISO 8601 string")
        values = {k: raw.get(k) for k in FIELDS}
        ts = values.pop("ts")
        if isinstance(ts, str):
            ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        if ts is None:
            ts = _now()
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        if not values.get("id"):
            values["id"] = new_event_id()
        return cls(ts=ts, **values)  # type: ignore[arg-type]


@runtime_checkable
class TraceSink(Protocol):
    """Anything with ``emit(event)``; ``async def emit`` works too."""

    def emit(self, event: TraceEvent) -> Any: ...
