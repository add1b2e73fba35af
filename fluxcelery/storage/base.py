"""The storage seam: every backend implements this, and one contract suite tests them all.

State changes are guarded: ``save_run`` writes only if the stored ``version`` still equals
``expected_version`` and says whether it landed. Trace events of a change are written in the
same transaction as the change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from ..core.records import RunState
from ..trace.event import TraceEvent


class Transaction(Protocol):
    """A unit of work a commit step's handler runs inside (``ctx.session``)."""

    session: Any

    def save_run(
        self,
        state: RunState,
        expected_version: int,
        steps: Iterable[int],
        events: Sequence[TraceEvent],
        created: Iterable[int] = (),
        any_claims: bool = False,
    ) -> bool: ...


class Storage(Protocol):
    #: Whether trace events passed to ``save_run``/``create_run`` are stored (queryable).
    stores_traces: bool

    def init(self) -> None: ...

    def close(self) -> None: ...

    def create_run(self, state: RunState, events: Sequence[TraceEvent]) -> bool:
        """Insert a new run; False if a run with this id exists already (idempotent start)."""
        ...

    def load_run(self, run_id: str) -> RunState | None: ...

    def save_run(
        self,
        state: RunState,
        expected_version: int,
        steps: Iterable[int],
        events: Sequence[TraceEvent],
        created: Iterable[int] = (),
        any_claims: bool = False,
    ) -> bool:
        """Write the run row and the listed step rows if the version (and the count of item
        starts, ``claims``) matches; bump version. ``created``: step rows that are new (a
        for_each's items), inserted, not updated. ``any_claims``: land even when items
        started since the read (an item's outcome, which does not depend on them)."""
        ...

    def record_progress(
        self,
        run_id: str,
        index: int,
        attempt: int,
        progress: dict[str, Any],
        events: Sequence[TraceEvent],
    ) -> bool:
        """Store a running attempt's progress report and its ``step:progress`` events, if
        step ``index`` is still ``running`` with that ``attempt``. Out of band: no version
        bump, so a report never makes the attempt's own outcome a concurrent update."""
        ...

    def transaction(self) -> AbstractContextManager[Transaction]: ...

    def list_runs(
        self,
        workflow: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 50,
        offset: int = 0,
    ) -> list[RunState]: ...

    def count_runs(self, workflow: str | None = None) -> dict[str, int]: ...

    def workflow_names(self) -> list[str]:
        """The names of the workflows that have stored runs, sorted."""
        ...

    def due_times(self, run_ids: Sequence[str]) -> dict[str, datetime]:
        """When the first step of each of ``run_ids`` that is stored (others left out) was
        due: its ``not_before`` when it was started with a countdown, else ``created_at``.
        No trace event records it on Celery (``workflow:start`` is written by the worker);
        ``profile`` measures the first step's queue wait from it. Reads by primary key."""
        ...

    def run_ids_with_prefix(
        self, prefix: str, limit: int = 3, *, descending: bool = False
    ) -> list[str]:
        """Up to ``limit`` run ids that start with ``prefix`` (case-sensitive), sorted
        (``descending``: from the greatest; a schedule's newest run, see schedules/)."""
        ...

    def stale_runs(self, updated_before: datetime, limit: int = 100) -> list[RunState]:
        """Runs ``pending``/``running``/``rolling_back`` not updated since ``updated_before``
        (``recover`` resumes them; expired waits come from ``expired_waits``)."""
        ...

    def expired_waits(self, now: datetime, limit: int = 100) -> list[RunState]: ...

    def delete_run(self, run_id: str) -> bool: ...

    def prune_runs(
        self, updated_before: datetime, statuses: Sequence[str], limit: int | None = 500
    ) -> int:
        """Delete up to ``limit`` runs in ``statuses`` (finished ones) not updated since
        ``updated_before``, with their steps and traces, in one transaction; how many. With
        ``limit=None`` nothing is deleted: the count is how many would be."""
        ...

    def append_traces(self, events: Sequence[TraceEvent]) -> None: ...

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
        """Events in the order they were written; ``newest_first`` pages from the end;
        ``since``: only those with a later ``ts``."""
        ...


@dataclass(frozen=True)
class StepClaim:
    """What a store needs to start step ``index`` while it loads the run (one round trip
    instead of two on Celery workers). See ``ClaimingStorage``."""

    index: int
    workflow: str
    step: str
    kind: str
    definition_hash: str
    max_attempts: int
    task_id: str | None
    worker: str | None
    event_id: str
    now: datetime
    #: The ``workflow:start`` event's id, used when the claim starts a ``pending`` run.
    start_event_id: str


@runtime_checkable
class ClaimingStorage(Protocol):
    """An optional capability (PostgreSQL): load a run and start one of its steps at once."""

    def load_and_claim(self, run_id: str, claim: StepClaim) -> tuple[RunState | None, bool]:
        """The run as stored before the claim, and whether the claim landed. It lands only
        when the run is ``running`` at ``claim.index`` (or ``pending`` there, with its start
        meta stored) with the same definition, and that step is ``pending`` with fewer than
        ``max_attempts`` attempts. Then, atomically: the run ``running``, its version + 1 and
        ``updated_at = now``; the step ``running``, attempts + 1, ``task_id``,
        ``started_at = now``, ``finished_at`` cleared; for a run that was pending a
        ``workflow:start`` event (id ``start_event_id``, meta the stored start meta); one
        ``step:start`` event (id ``event_id``); both at ``now``. Of concurrent claims of one
        step, one lands."""
        ...


@runtime_checkable
class RowViewStorage(Protocol):
    """An optional capability: read a run as the task of one row of a group reads it
    (a for_each of many items), without reading every item."""

    def load_row_view(self, run_id: str, row: int, defined: int, waiting: int) -> RunState | None:
        """The run, whose ``steps`` are a ``PartialRows``: its first ``defined`` rows (the
        workflow's own steps), row ``row``, and the ``waiting`` rows from where its group's
        next send looks (``scope["next"]`` of the row's ``parent``), in index order; every
        other row is read when first asked for."""
        ...


def as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def iter_nothing() -> Iterator[None]:
    yield None
