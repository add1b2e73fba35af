"""In-memory storage for tests and development: the same contract, no durability."""

from __future__ import annotations

import dataclasses
import operator
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from ..jsoncodec import copy_json
from ..records import RunState, utcnow
from ..states import RunStatus, StepStatus
from ..trace.event import TraceEvent
from .base import as_tuple


class _MemoryTransaction:
    session: Any = None

    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage

    def save_run(
        self,
        state: RunState,
        expected_version: int,
        steps: Iterable[int],
        events: Sequence[TraceEvent],
    ) -> bool:
        return self._storage.save_run(state, expected_version, steps, events)


# Trace events are kept as plain tuples. The garbage collector stops tracking a tuple of
# strings, numbers and datetimes, while every event object stays tracked: with ten events per
# run, the full collections over a growing store took up to a third of an embedded run.
_FIELDS = tuple(f.name for f in dataclasses.fields(TraceEvent))
_pack = operator.attrgetter(*_FIELDS)
_RUN_ID, _WORKFLOW, _TYPE, _STATUS, _META = (
    _FIELDS.index(name) for name in ("run_id", "workflow", "type", "status", "meta")
)
_Row = tuple[Any, ...]


class MemoryStorage:
    """Keeps runs and traces in process memory. Stored values are private copies."""

    stores_traces = True

    def __init__(self, max_traces: int | None = None) -> None:
        self._runs: dict[str, RunState] = {}
        # A bounded deque drops its oldest rows in O(1); deleting the head of a list moved
        # every row at each save once the bound was reached.
        self._traces: deque[_Row] = deque(maxlen=max_traces)
        self._lock = threading.RLock()

    def init(self) -> None:
        return None

    def close(self) -> None:
        return None

    def size(self) -> int:
        return len(self._runs)

    def create_run(self, state: RunState, events: Sequence[TraceEvent]) -> bool:
        with self._lock:
            if state.id in self._runs:
                return False
            self._runs[state.id] = state.copy()
            self._add_traces(events)
            return True

    def load_run(self, run_id: str) -> RunState | None:
        with self._lock:
            state = self._runs.get(run_id)
            return state.copy() if state is not None else None

    def save_run(
        self,
        state: RunState,
        expected_version: int,
        steps: Iterable[int],
        events: Sequence[TraceEvent],
    ) -> bool:
        with self._lock:
            current = self._runs.get(state.id)
            if current is None or current.version != expected_version:
                return False
            # Only the listed steps are written, as in SQL; unlisted ones stay as stored.
            stored = state.shallow_copy()
            stored.input = current.input  # written once, never changes
            stored.data = copy_json(state.data)
            stored.steps = list(current.steps)
            for i in steps:
                stored.steps[i] = state.steps[i].copy()
            stored.version = expected_version + 1
            stored.created_at = current.created_at  # written once
            stored.updated_at = utcnow()
            self._runs[state.id] = stored
            state.version = stored.version
            state.updated_at = stored.updated_at
            self._add_traces(events)
            return True

    @contextmanager
    def transaction(self) -> Iterator[_MemoryTransaction]:
        yield _MemoryTransaction(self)

    def _add_traces(self, events: Sequence[TraceEvent]) -> None:
        if not events:
            return
        traces = self._traces
        for e in events:
            row = _pack(e)
            if row[_META] is not None:  # the caller keeps its dict: store a copy
                row = (*row[:_META], copy_json(row[_META]), *row[_META + 1 :])
            traces.append(row)

    def list_runs(
        self,
        workflow: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 50,
        offset: int = 0,
    ) -> list[RunState]:
        statuses = as_tuple(status)
        with self._lock:
            runs = [
                r
                for r in self._runs.values()
                if (workflow is None or r.workflow == workflow)
                and (statuses is None or r.status.value in statuses)
            ]
        runs.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        end = None if limit is None else offset + limit
        return [r.copy() for r in runs[offset:end]]

    def count_runs(self, workflow: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for r in self._runs.values():
                if workflow is None or r.workflow == workflow:
                    counts[r.status.value] = counts.get(r.status.value, 0) + 1
        return counts

    def stale_runs(self, updated_before: datetime, limit: int = 100) -> list[RunState]:
        active = {RunStatus.PENDING, RunStatus.RUNNING, RunStatus.ROLLING_BACK}
        with self._lock:
            runs = [
                r.copy()
                for r in self._runs.values()
                if r.status in active
                and r.updated_at < updated_before
                and (r.not_before is None or r.not_before < updated_before)
            ]
        return sorted(runs, key=lambda r: r.updated_at)[:limit]

    def expired_waits(self, now: datetime, limit: int = 100) -> list[RunState]:
        with self._lock:
            runs = [
                r.copy()
                for r in self._runs.values()
                if r.status == RunStatus.SUSPENDED
                and any(
                    s.status == StepStatus.SUSPENDED
                    and s.wait_deadline is not None
                    and s.wait_deadline <= now
                    for s in r.steps
                )
            ]
        return runs[:limit]

    def delete_run(self, run_id: str) -> bool:
        with self._lock:
            found = self._runs.pop(run_id, None) is not None
            self._keep_traces(lambda r: r[_RUN_ID] != run_id)
            return found

    def prune_runs(
        self, updated_before: datetime, statuses: Sequence[str], limit: int | None = 500
    ) -> int:
        with self._lock:
            due = sorted(
                (
                    r
                    for r in self._runs.values()
                    if r.status.value in statuses and r.updated_at < updated_before
                ),
                key=lambda r: r.updated_at,
            )
            if limit is None:
                return len(due)
            pruned = {r.id for r in due[:limit]}
            for run_id in pruned:
                del self._runs[run_id]
            self._keep_traces(lambda t: t[_RUN_ID] not in pruned)
            return len(pruned)

    def _keep_traces(self, keep: Callable[[_Row], bool]) -> None:
        self._traces = deque(filter(keep, self._traces), maxlen=self._traces.maxlen)

    def append_traces(self, events: Sequence[TraceEvent]) -> None:
        with self._lock:
            self._add_traces(events)

    def list_traces(
        self,
        run_id: str | None = None,
        workflow: str | None = None,
        type: str | Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 1000,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[TraceEvent]:
        types = as_tuple(type)
        statuses = as_tuple(status)
        with self._lock:
            found = [
                r
                for r in self._traces
                if (run_id is None or r[_RUN_ID] == run_id)
                and (workflow is None or r[_WORKFLOW] == workflow)
                and (types is None or r[_TYPE] in types)
                and (statuses is None or r[_STATUS] in statuses)
            ]
        if newest_first:
            found.reverse()
        end = None if limit is None else offset + limit
        return [_event(r) for r in found[offset:end]]


def _event(row: _Row) -> TraceEvent:
    """A stored row as an event of its own (``meta`` is a dict: handed out as a copy)."""
    event = object.__new__(TraceEvent)
    event.__dict__.update(zip(_FIELDS, row, strict=True))
    if row[_META] is not None:
        event.__dict__["meta"] = copy_json(row[_META])
    return event
