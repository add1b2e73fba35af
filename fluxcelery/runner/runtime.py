"""What running a step needs, handed by the engine to the runner, the compensation and
upkeep: none of them holds the engine or calls into it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..core import transitions as t
from ..core.branching import branch_data
from ..core.builder import StepDef, Workflow
from ..core.context import StepContext
from ..core.errors import FluxError, describe_error
from ..core.failure import Failure, capture
from ..core.jsoncodec import Redactor, roundtrip
from ..core.policy import Defaults
from ..core.records import RunState, StepState, secret_sources
from ..core.states import RunStatus
from ..storage.base import ClaimingStorage, RowViewStorage, Storage
from .catalog import Catalog
from .change import STOP, Action, Change, Next
from .interrupts import Interrupts
from .invoke import Invoker
from .notify import Notifier

log = logging.getLogger("fluxcelery.runner")

#: How many of its group's rows not sent yet an item's task reads (it sends at most as many
#: as ended since the last send: one, or a few when sends raced).
VIEW_WAITING = 2


class GroupLocks:
    """A lock per run id, kept while some thread holds it (no growth across runs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, run_id: str) -> Iterator[None]:
        with self._lock:
            lock, users = self._held.get(run_id) or (threading.Lock(), 0)
            self._held[run_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._held[run_id]
                if users == 1:
                    del self._held[run_id]
                else:
                    self._held[run_id] = (lock, users - 1)


@dataclass(frozen=True)
class Runtime:
    storage: Storage
    catalog: Catalog
    defaults: Defaults
    invoker: Invoker
    notifier: Notifier
    redact: Redactor
    max_payload_bytes: int | None
    clock: Callable[[], datetime]
    #: The store, when it can start a step in the load statement (asked once: a runtime
    #: protocol check is slow, and every step task would ask it).
    claiming: ClaimingStorage | None
    #: The store, when it can read a run as one for_each item's task needs it (asked once).
    views: RowViewStorage | None = None
    #: Attempts running in this process (``engine.cancel(terminate=True)`` stops them).
    interrupts: Interrupts = field(default_factory=Interrupts)
    #: One lock per run whose group rows this process writes (``StepRunner._store``): the
    #: threads of an in-process group redo a lost write once, instead of racing again.
    group_locks: GroupLocks = field(default_factory=lambda: GroupLocks())

    def change(self, state: RunState, *, create: bool = False) -> Change:
        return Change(self.storage, self.notifier, state, create=create)

    def context(
        self, wf: Workflow, state: RunState, sdef: StepDef, attempt: int, session: Any = None
    ) -> StepContext:
        spec = wf.input_spec
        row = state.steps[sdef.index] if sdef.index < len(state.steps) else None
        if row is not None and row.parent is not None:
            return self._row_context(wf, state, sdef, attempt, session, row)
        return StepContext(
            run_id=state.id,
            workflow=state.workflow,
            step=sdef.name,
            step_index=sdef.index,
            attempt=attempt,
            input=spec.load(state.input) if spec else state.input,
            data=roundtrip(state.data) if state.data else {},
            results=state.results,
            session=session,
            redactor=self.redact,
            raw_input=state.input,
        )

    def _row_context(
        self,
        wf: Workflow,
        state: RunState,
        sdef: StepDef,
        attempt: int,
        session: Any,
        row: StepState,
    ) -> StepContext:
        """A branch step's or item's context: the run's data as it was at fan-out plus the
        keys its branch set so far; an item's value and index; an idempotency key per item."""
        spec = wf.input_spec
        scope = row.scope or {}
        if row.branch is not None and row.index > (row.parent or 0) + 1:
            before = state.steps[row.index - 1]  # the branch's previous step carries its keys
            if before.branch == row.branch:
                scope = before.scope or {}
        ctx = StepContext(
            run_id=state.id,
            workflow=state.workflow,
            step=sdef.name,
            step_index=sdef.index,
            attempt=attempt,
            input=spec.load(state.input) if spec else state.input,
            data=branch_data(state.data, scope),
            results=state.results,
            session=session,
            redactor=self.redact,
            raw_input=state.input,
        )
        ctx.branch = row.branch
        if row.item is not None:
            ctx.item = roundtrip(scope.get("value"))
            ctx.item_index = row.item
            ctx.idempotency_key = f"{state.id}:{sdef.name}:{row.item}"
        return ctx

    def load_row(self, run_id: str, index: int, wf: Workflow | None) -> RunState | None:
        """The run, as the task of row ``index`` needs it: a for_each item's reads only
        its own row, the defined steps and its group's counts (``RowViewStorage``), not
        every item; any other row reads the whole run."""
        if self.views is None or wf is None or index < len(wf.steps):
            return self.storage.load_run(run_id)
        return self.views.load_row_view(run_id, index, len(wf.steps), VIEW_WAITING)

    def error_text(self, exc: BaseException, state: RunState) -> str:
        return self.notifier.error_text(exc, state)

    def failure(self, exc: BaseException | None, err: str, state: RunState) -> Failure:
        """The attempt's failure for Celery and the step's stored traceback, masked like
        ``error_text``."""
        sources = secret_sources(state)
        return capture(exc, err, lambda text: self.redact.scrub(text, *sources))

    def fail_unrunnable(self, state: RunState, exc: FluxError) -> Next:
        """This process cannot run this run (unknown workflow, changed definition): it
        fails, and a Celery task shows why."""
        change = self.change(state)
        err = describe_error(exc)
        change.apply(t.finish_run(state, RunStatus.FAILED, self.clock(), err))
        log.error("run %s cannot continue here: %s", state.id, exc)
        landed = change.save()
        return Next(Action.DONE, failure=self.failure(exc, err, state)) if landed else STOP
