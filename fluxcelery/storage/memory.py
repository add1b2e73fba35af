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

from ..core.jsoncodec import copy_json
from ..core.records import PartialRows, RunState, StepState, utcnow
from ..core.states import MOVING_RUN, RunStatus, StepStatus, values
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
        created: Iterable[int] = (),
        any_claims: bool = False,
    ) -> bool:
        return self._storage.save_run(state, expected_version, steps, events, created)


# Runs, steps and trace events are kept as plain tuples, not objects. The cyclic garbage
# collector walks every tracked object at each full collection: a stored run as objects (the
# run, its steps, their ``__dict__``s, the list) was about a dozen of them, and with 20,000
# runs stored collections took 25% of an embedded run's time (11% with tuples, about what
# the young objects of each step cost anyway). A tuple of strings, numbers and datetimes is
# untracked after its first collection; one holding a dict or list (a run's input and data,
# an output) stays tracked. Statuses are stored as their string values for the same reason:
# enum members are tracked objects.
_FIELDS = tuple(f.name for f in dataclasses.fields(TraceEvent))
_pack = operator.attrgetter(*_FIELDS)
_RUN_ID, _WORKFLOW, _TYPE, _STATUS, _META, _TS = (
    _FIELDS.index(name) for name in ("run_id", "workflow", "type", "status", "meta", "ts")
)
_Row = tuple[Any, ...]

#: A stored run: its fields (``steps`` last, as a tuple of step rows).
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunState) if f.name != "steps")
_STEP_FIELDS = tuple(f.name for f in dataclasses.fields(StepState))
_RUN_INDEX = {name: i for i, name in enumerate(_RUN_FIELDS)}
_pack_run = operator.attrgetter(*_RUN_FIELDS)
_pack_step = operator.attrgetter(*_STEP_FIELDS)
(
    R_ID,
    R_WORKFLOW,
    R_STATUS,
    R_INPUT,
    R_DATA,
    R_VERSION,
    R_CREATED,
    R_UPDATED,
    R_START_META,
    R_NOT_BEFORE,
) = (
    _RUN_INDEX[name]
    for name in (
        "id",
        "workflow",
        "status",
        "input",
        "data",
        "version",
        "created_at",
        "updated_at",
        "start_meta",
        "not_before",
    )
)
R_STEPS = len(_RUN_FIELDS)
S_STATUS, S_OUTPUT, S_WAIT_DEADLINE, S_ATTEMPTS, S_PROGRESS, S_SCOPE = (
    _STEP_FIELDS.index(name)
    for name in ("status", "output", "wait_deadline", "attempts", "progress", "scope")
)
S_PARENT = _STEP_FIELDS.index("parent")
_RUN_STATUS = {s.value: s for s in RunStatus}
_STEP_STATUS = {s.value: s for s in StepStatus}
_ACTIVE = values(MOVING_RUN)


def _step_row(step: StepState) -> _Row:
    row = _pack_step(step)
    output = row[S_OUTPUT]
    packed = (
        *row[:S_STATUS],
        row[S_STATUS].value,
        *row[S_STATUS + 1 : S_OUTPUT],
        copy_json(output) if output.__class__ in (dict, list) else output,
        *row[S_OUTPUT + 1 :],
    )
    if row[S_SCOPE] is not None:  # a branch step's or item's: a private copy too
        packed = (*packed[:S_SCOPE], copy_json(row[S_SCOPE]), *packed[S_SCOPE + 1 :])
    return packed


def _run_row(
    state: RunState, steps: tuple[_Row, ...], input: Any, data: Any, **fields: Any
) -> _Row:
    """``state`` as stored: private copies of its JSON values, and ``fields`` (written-once
    values kept from the stored row, the new version) over its own."""
    values = list(_pack_run(state))
    values[R_STATUS] = state.status.value
    values[R_INPUT] = input
    values[R_DATA] = data
    values[R_START_META] = None  # SQL's claim reads it; nothing here does
    for name, value in fields.items():
        values[_RUN_INDEX[name]] = value
    values.append(steps)
    return tuple(values)


def _step(row: _Row) -> StepState:
    step = object.__new__(StepState)
    values = step.__dict__
    values.update(zip(_STEP_FIELDS, row, strict=True))
    values["status"] = _STEP_STATUS[row[S_STATUS]]
    output = row[S_OUTPUT]
    if output.__class__ in (dict, list):
        values["output"] = copy_json(output)
    if row[S_SCOPE] is not None:
        values["scope"] = copy_json(row[S_SCOPE])
    return step


def _run(row: _Row) -> RunState:
    """A stored run as a ``RunState`` of its own (JSON values copied)."""
    state = object.__new__(RunState)
    values = state.__dict__
    values.update(zip(_RUN_FIELDS, row[:R_STEPS], strict=True))
    values["status"] = _RUN_STATUS[row[R_STATUS]]
    values["input"] = copy_json(row[R_INPUT])
    values["data"] = copy_json(row[R_DATA])
    values["steps"] = [_step(r) for r in row[R_STEPS]]
    return state


class MemoryStorage:
    """Keeps runs and traces in process memory. Stored values are private copies."""

    stores_traces = True

    def __init__(self, max_traces: int | None = None) -> None:
        self._runs: dict[str, _Row] = {}
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
            steps = tuple(_step_row(s) for s in state.steps)
            self._runs[state.id] = _run_row(
                state, steps, copy_json(state.input), copy_json(state.data)
            )
            self._add_traces(events)
            return True

    def load_run(self, run_id: str) -> RunState | None:
        with self._lock:
            row = self._runs.get(run_id)
            return _run(row) if row is not None else None

    def load_row_view(self, run_id: str, row: int, defined: int, waiting: int) -> RunState | None:
        """See ``RowViewStorage``: rows as objects only for what the caller reads."""
        with self._lock:
            stored = self._runs.get(run_id)
            if stored is None:
                return None
            rows: tuple[_Row, ...] = stored[R_STEPS]
            picked = {i: _step(rows[i]) for i in range(min(defined, len(rows)))}
            if row < len(rows):
                picked[row] = _step(rows[row])
                parent = rows[row][S_PARENT]
                scope = rows[parent][S_SCOPE] if parent is not None else None
                start = max(defined, int((scope or {}).get("next", 0)))
                for i in range(start, min(start + waiting, len(rows))):
                    picked.setdefault(i, _step(rows[i]))
            state = _run((*stored[:R_STEPS], ()))

        def fetch() -> list[StepState]:
            full = self.load_run(run_id)
            return list(full.steps) if full is not None else []

        state.steps = PartialRows(picked, len(rows), fetch)
        return state

    def save_run(
        self,
        state: RunState,
        expected_version: int,
        steps: Iterable[int],
        events: Sequence[TraceEvent],
        created: Iterable[int] = (),
        any_claims: bool = False,  # no item claims here: ``claims`` stays 0
    ) -> bool:
        with self._lock:
            current = self._runs.get(state.id)
            if current is None or current[R_VERSION] != expected_version:
                return False
            # Only the listed steps are written, as in SQL; unlisted ones stay as stored.
            rows = list(current[R_STEPS])
            for i in sorted(created):  # new rows (for_each items) are the run's last
                if i != len(rows):
                    raise ValueError(f"step row {i} is not the next row ({len(rows)})")
                rows.append(_step_row(state.steps[i]))
            for i in steps:
                rows[i] = _step_row(state.steps[i])
            now = utcnow()
            self._runs[state.id] = _run_row(
                state,
                tuple(rows),
                current[R_INPUT],  # written once, never changes
                copy_json(state.data),
                version=expected_version + 1,
                created_at=current[R_CREATED],  # written once
                updated_at=now,
                not_before=current[R_NOT_BEFORE],
            )
            state.version = expected_version + 1
            state.updated_at = now
            self._add_traces(events)
            return True

    def record_progress(
        self,
        run_id: str,
        index: int,
        attempt: int,
        progress: dict[str, Any],
        events: Sequence[TraceEvent],
    ) -> bool:
        with self._lock:
            current = self._runs.get(run_id)
            if current is None or index >= len(current[R_STEPS]):
                return False
            row = current[R_STEPS][index]
            if row[S_STATUS] != StepStatus.RUNNING.value or row[S_ATTEMPTS] != attempt:
                return False  # a late report of an attempt that ended
            steps = list(current[R_STEPS])
            steps[index] = (*row[:S_PROGRESS], dict(progress), *row[S_PROGRESS + 1 :])
            self._runs[run_id] = (*current[:R_STEPS], tuple(steps))
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
            rows = [
                r
                for r in self._runs.values()
                if (workflow is None or r[R_WORKFLOW] == workflow)
                and (statuses is None or r[R_STATUS] in statuses)
            ]
        rows.sort(key=lambda r: (r[R_CREATED], r[R_ID]), reverse=True)
        end = None if limit is None else offset + limit
        return [_run(r) for r in rows[offset:end]]

    def count_runs(self, workflow: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for r in self._runs.values():
                if workflow is None or r[R_WORKFLOW] == workflow:
                    counts[r[R_STATUS]] = counts.get(r[R_STATUS], 0) + 1
        return counts

    def stale_runs(self, updated_before: datetime, limit: int = 100) -> list[RunState]:
        with self._lock:
            rows = [
                r
                for r in self._runs.values()
                if r[R_STATUS] in _ACTIVE
                and r[R_UPDATED] < updated_before
                and (r[R_NOT_BEFORE] is None or r[R_NOT_BEFORE] < updated_before)
            ]
        return [_run(r) for r in sorted(rows, key=lambda r: r[R_UPDATED])[:limit]]

    def expired_waits(self, now: datetime, limit: int = 100) -> list[RunState]:
        suspended = StepStatus.SUSPENDED.value
        with self._lock:
            rows = [
                r
                for r in self._runs.values()
                if r[R_STATUS] == RunStatus.SUSPENDED.value
                and any(
                    s[S_STATUS] == suspended
                    and s[S_WAIT_DEADLINE] is not None
                    and s[S_WAIT_DEADLINE] <= now
                    for s in r[R_STEPS]
                )
            ]
        return [_run(r) for r in rows[:limit]]

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
                    if r[R_STATUS] in statuses and r[R_UPDATED] < updated_before
                ),
                key=lambda r: r[R_UPDATED],
            )
            if limit is None:
                return len(due)
            pruned = {r[R_ID] for r in due[:limit]}
            for run_id in pruned:
                del self._runs[run_id]
            self._keep_traces(lambda t: t[_RUN_ID] not in pruned)
            return len(pruned)

    def _keep_traces(self, keep: Callable[[_Row], bool]) -> None:
        self._traces = deque(filter(keep, self._traces), maxlen=self._traces.maxlen)

    def append_traces(self, events: Sequence[TraceEvent]) -> None:
        with self._lock:
            self._add_traces(events)

    def workflow_names(self) -> list[str]:
        with self._lock:
            return sorted({row[R_WORKFLOW] for row in self._runs.values()})

    def due_times(self, run_ids: Sequence[str]) -> dict[str, datetime]:
        with self._lock:
            rows = ((i, self._runs.get(i)) for i in run_ids)
            return {i: row[R_NOT_BEFORE] or row[R_CREATED] for i, row in rows if row is not None}

    def run_ids_with_prefix(
        self, prefix: str, limit: int = 3, *, descending: bool = False
    ) -> list[str]:
        with self._lock:
            found = (i for i in self._runs if i.startswith(prefix))
            return sorted(found, reverse=descending)[:limit]

    def list_traces(
        self,
        run_id: str | None = None,
        workflow: str | None = None,
        type: str | Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 1000,
        offset: int = 0,
        newest_first: bool = False,
        since: datetime | None = None,
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
                and (since is None or r[_TS] > since)
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
