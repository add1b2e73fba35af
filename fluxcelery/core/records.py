"""The persisted shape of a run and its steps, and the result handed back to callers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .jsoncodec import canonical_json, copy_json
from .states import DONE_STEP, RunStatus, StepStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def ms_between(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, round((end - start).total_seconds() * 1000))


def secret_sources(state: RunState) -> tuple[Any, ...]:
    """Where a run's secret values come from (SPEC section 7): its input, data, and the
    outputs of its steps (a signal's payload is the output of the step that waited)."""
    return (state.input, state.data, *(s.output for s in state.steps if s.output is not None))


def describe_progress(progress: dict[str, Any] | None, *, message: bool = True) -> str:
    """``40/100 (40%) resizing``: a step's last ``ctx.progress`` report ('' for none), as
    the CLI, the Flower tab and the viewer show it."""
    if not progress:
        return ""
    done, total = progress.get("done"), progress.get("total")
    number = (int, float)
    text = f"{done:g}" if isinstance(done, number) else ""
    if isinstance(total, number):
        text += f"/{total:g}"
        if total > 0 and isinstance(done, number):
            text += f" ({min(100, round(100 * done / total))}%)"
    if message and progress.get("message"):
        text += f" {progress['message']}"
    return text


@dataclass
class StepState:
    """One step of one run, as stored in ``flux_steps``."""

    name: str
    index: int
    kind: str = "step"
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    #: Attempts of this step's compensator (a saga rollback retries it like a step).
    compensation_attempts: int = 0
    output: Any = None
    error: str | None = None
    #: The failing attempt's traceback, secrets masked (None while the step has not failed).
    traceback: str | None = None
    waiting_for: str | None = None
    task_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    #: When a suspended step's wait expires (not part of SPEC's column list; stored too).
    wait_deadline: datetime | None = None
    #: The attempt's last ``ctx.progress`` report: ``{"done", "total", "message", "at"}``
    #: (None before the first report of an attempt).
    progress: dict[str, Any] | None = None
    #: The branch of a ``.parallel`` step this row belongs to (None for other steps).
    branch: str | None = None
    #: The item index of a ``.for_each`` step this row runs (None for other steps).
    item: int | None = None
    #: The index of the ``.parallel``/``.for_each`` step this branch step or item belongs to.
    parent: int | None = None
    #: A branch step's or item's own state until the join: ``{"data": keys it set in
    #: ctx.data, "unset": keys it removed, "value": the item}`` (None for other steps).
    scope: dict[str, Any] | None = None

    def copy(self) -> StepState:
        # A plain __dict__ copy: dataclasses.replace costs ~10x more on the hot path.
        new = object.__new__(StepState)
        new.__dict__.update(self.__dict__)
        if isinstance(self.output, (dict, list)):
            new.output = copy_json(self.output)
        if self.scope is not None:
            new.scope = copy_json(self.scope)
        return new

    def reset(self) -> None:
        """Clear what a step's attempts left behind, for a retry from this step (its status
        is set by ``core.transitions.reset_for_retry``)."""
        self.attempts = 0
        self.compensation_attempts = 0
        self.output = None
        self.error = None
        self.traceback = None
        self.waiting_for = None
        self.task_id = None
        self.started_at = None
        self.finished_at = None
        self.duration_ms = None
        self.wait_deadline = None
        self.progress = None
        if self.scope is not None:  # an item keeps its value; its data changes go
            self.scope = {"value": self.scope["value"]} if "value" in self.scope else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "kind": self.kind,
            "status": self.status.value,
            "attempts": self.attempts,
            "compensation_attempts": self.compensation_attempts,
            "output": self.output,
            "error": self.error,
            "traceback": self.traceback,
            "waiting_for": self.waiting_for,
            "task_id": self.task_id,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_ms": self.duration_ms,
            "progress": self.progress,
            "branch": self.branch,
            "item": self.item,
            "parent": self.parent,
        }


class PartialRows(list[StepState]):
    """A run's step rows as the task of one for_each item reads them: the defined steps
    (its for_each's row among them, with the group's counters), its own row and the items
    it may send next; the other items (up to 10,000) are read the first time anything asks
    for them.

    Safe under the guarded write: rows read later can only be newer than the version this
    task read, and then its write does not land (it reads the run again and redoes it)."""

    def __init__(
        self,
        rows: dict[int, StepState],
        total: int,
        fetch: Callable[[], list[StepState]],
        output_of: Callable[[str], tuple[str, str, Any] | None] | None = None,
    ) -> None:
        super().__init__()
        self._rows = rows
        self._total = total
        self._fetch = fetch
        #: One top-level step's ``(status, kind, output)`` by name, read alone (``LazyResults``);
        #: None: ``results`` reads every row.
        self.output_of = output_of
        self.full = False

    def loaded(self) -> list[StepState]:
        """The rows read so far, without reading the others."""
        return list(self) if self.full else [self._rows[i] for i in sorted(self._rows)]

    def _read_all(self) -> None:
        if self.full:
            return
        rows = [self._rows.get(s.index, s) for s in self._fetch()]  # keep this task's objects
        list.extend(self, rows)
        self.full = True

    def __len__(self) -> int:
        return list.__len__(self) if self.full else self._total

    def __getitem__(self, i: Any) -> Any:
        if not self.full and isinstance(i, int) and i >= 0 and i in self._rows:
            return self._rows[i]
        self._read_all()
        return list.__getitem__(self, i)

    def __iter__(self) -> Iterator[StepState]:
        self._read_all()
        return list.__iter__(self)

    def __bool__(self) -> bool:
        return len(self) > 0

    def append(self, row: StepState) -> None:
        self._read_all()
        list.append(self, row)


class LazyResults(dict[str, Any]):
    """``ctx.results`` of a run read partially (a step task reads its own row, not every
    earlier one): a step's output is read the first time a handler asks for it, so a step's
    cost does not grow with the number of steps before it. Iterating, ``len`` and the like
    read them all (once)."""

    def __init__(self, rows: PartialRows) -> None:
        super().__init__()
        self._rows = rows
        self._absent: set[str] = set()
        self._all = False
        for s in rows.loaded():
            if _has_result(s):
                dict.__setitem__(self, s.name, s.output)

    def _one(self, name: Any) -> bool:
        if dict.__contains__(self, name):
            return True
        if self._all or name in self._absent or not isinstance(name, str):
            return False
        assert self._rows.output_of is not None
        found = self._rows.output_of(name)
        if found is None or not _is_result(StepStatus(found[0]), found[1], found[2]):
            self._absent.add(name)
            return False
        dict.__setitem__(self, name, found[2])
        return True

    def _everything(self) -> None:
        if not self._all:
            for s in self._rows:  # reads every row
                if _has_result(s) and not dict.__contains__(self, s.name):
                    dict.__setitem__(self, s.name, s.output)
            self._all = True

    def __missing__(self, name: str) -> Any:
        if self._one(name):
            return dict.__getitem__(self, name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return self._one(name)

    def get(self, name: str, default: Any = None) -> Any:
        return dict.__getitem__(self, name) if self._one(name) else default

    def __iter__(self) -> Iterator[str]:
        self._everything()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._everything()
        return dict.__len__(self)

    def __repr__(self) -> str:
        self._everything()
        return dict.__repr__(self)

    def __eq__(self, other: object) -> bool:
        self._everything()
        return dict.__eq__(self, other)

    __hash__ = None

    def keys(self) -> Any:
        self._everything()
        return dict.keys(self)

    def values(self) -> Any:
        self._everything()
        return dict.values(self)

    def items(self) -> Any:
        self._everything()
        return dict.items(self)

    def copy(self) -> dict[str, Any]:
        self._everything()
        return dict(dict.items(self))

    def __reduce__(self) -> Any:  # copies, pickles and deep copies are plain dicts
        return (dict, (self.copy(),))


_RESULT_STEP = frozenset(DONE_STEP | {StepStatus.COMPENSATED})


def _is_result(status: StepStatus, kind: str, output: Any) -> bool:
    """Whether a (top-level or branch) step's output is in ``results``: a completed, skipped
    or compensated step's; a rejected approval's decision too (SPEC 16)."""
    return status in _RESULT_STEP or (
        kind == "approval" and status == StepStatus.FAILED and output is not None
    )


def _has_result(s: StepState) -> bool:
    return s.item is None and _is_result(s.status, s.kind, s.output)


@dataclass
class RunState:
    """One run, as stored in ``flux_runs`` plus its ``flux_steps`` rows."""

    id: str
    workflow: str
    status: RunStatus
    input: Any
    data: dict[str, Any]
    steps: list[StepState]
    workflow_version: str | None = None
    definition_hash: str | None = None
    current_step: int = 0
    error: str | None = None
    executor: str = "local"
    version: int = 0
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    #: Why the run was cancelled (``engine.cancel``); None for a run not cancelled.
    cancel_reason: str | None = None
    #: Starts of for_each items counted apart from ``version`` (PostgreSQL's item claim):
    #: every guarded write checks both, except an item's outcome, which does not depend on
    #: a sibling's start.
    claims: int = 0
    #: The ``workflow:start`` event's meta (the redacted input), stored with a new run so that
    #: a worker's claim can emit that event in SQL. Set by the engine; not loaded back.
    start_meta: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: A run started with a countdown: when it is due (``recover`` waits for it). Set by the
    #: engine; not loaded back.
    not_before: datetime | None = field(default=None, repr=False, compare=False)

    def shallow_copy(self) -> RunState:
        new = object.__new__(RunState)
        new.__dict__.update(self.__dict__)
        return new

    def copy(self) -> RunState:
        new = self.shallow_copy()
        new.input = copy_json(self.input)
        new.data = copy_json(self.data)
        new.steps = [s.copy() for s in self.steps]
        return new

    @property
    def results(self) -> dict[str, Any]:
        """Step name -> output of each completed step (a signal's payload for a wait step).
        Of a run read partially, a ``LazyResults`` that reads an output when asked."""
        steps = self.steps
        if isinstance(steps, PartialRows):
            if steps.output_of is not None and not steps.full:
                return LazyResults(steps)
            steps = steps.loaded()
        return {s.name: s.output for s in steps if _has_result(s)}

    def start_conflict(self, workflow: str, stored_input: Any) -> str | None:
        """Why starting ``workflow`` with ``stored_input`` (as ``prepare_input`` gives it)
        under this run's id is not a repeat of this run, or None when it is: the same key
        with the same content is a duplicate, with other content a conflict."""
        if self.workflow != workflow:
            return f"run {self.id} already exists for workflow {self.workflow!r}, not {workflow!r}"
        if canonical_json(self.input) != canonical_json(stored_input):
            return (
                f"run {self.id} already exists with different input: the same idempotency key "
                "was used for other content"
            )
        return None

    def step(self, name: str) -> StepState:
        for s in self.steps:
            if s.name == name and s.item is None:
                return s
        raise KeyError(name)

    def items_of(self, parent: int) -> list[StepState]:
        """The item rows of ``for_each`` step ``parent``, in item order."""
        return sorted(
            (s for s in self.steps if s.parent == parent and s.item is not None),
            key=lambda s: s.item or 0,
        )

    @property
    def duration_ms(self) -> int | None:
        return ms_between(self.created_at, self.finished_at or self.updated_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow": self.workflow,
            "workflow_version": self.workflow_version,
            "definition_hash": self.definition_hash,
            "status": self.status.value,
            "input": self.input,
            "data": self.data,
            "current_step": self.current_step,
            "error": self.error,
            "executor": self.executor,
            "version": self.version,
            "cancel_reason": self.cancel_reason,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "finished_at": iso(self.finished_at),
            "duration_ms": self.duration_ms,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass(frozen=True)
class FluxResult:
    """What ``execute`` and ``RunHandle.get`` return. Step failures are in ``status``/``error``."""

    id: str
    workflow: str
    status: RunStatus
    input: Any
    data: dict[str, Any]
    results: dict[str, Any]
    error: str | None
    steps: list[StepState]
    duration_ms: int | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_state(cls, state: RunState) -> FluxResult:
        return cls(
            id=state.id,
            workflow=state.workflow,
            status=state.status,
            input=state.input,
            data=state.data,
            results=state.results,
            error=state.error,
            steps=state.steps,
            duration_ms=state.duration_ms,
            created_at=state.created_at,
            finished_at=state.finished_at,
        )

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.COMPLETED

    def step(self, name: str) -> StepState:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow": self.workflow,
            "status": self.status.value,
            "input": self.input,
            "data": self.data,
            "results": self.results,
            "error": self.error,
            "steps": [s.to_dict() for s in self.steps],
            "duration_ms": self.duration_ms,
            "created_at": iso(self.created_at),
            "finished_at": iso(self.finished_at),
        }
