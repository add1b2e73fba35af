"""``FluxEngine``: define once, run in-process (``execute``) or on Celery (``start``).

The engine is handed its storage, a dispatcher (what sends work to workers) and a clock; it
never imports celery/. The Celery dispatcher is plugged in by the composition root,
defaults.py (which ``import fluxcelery`` runs): handed to the default engine where it is
built, and made for any other engine by ``FluxEngine.dispatcher_factory``."""

from __future__ import annotations

import builtins
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

from .core import transitions as t
from .core.approvals import check_decider
from .core.builder import Workflow
from .core.errors import (
    ConcurrentUpdate,
    DispatchError,
    FluxError,
    IdempotencyConflict,
    InvalidTransition,
    NotAllowed,
    RunNotFound,
    SignalMismatch,
    describe_error,
)
from .core.jsoncodec import (
    DEFAULT_MAX_BYTES,
    DEFAULT_REDACT,
    Redactor,
    check_depth,
    roundtrip,
)
from .core.policy import Backoff, Defaults, rollback_plan
from .core.records import FluxResult, RunState, StepState, utcnow
from .core.states import (
    CANCELLABLE_RUN,
    DONE_STEP,
    MOVING_RUN,
    RETRYABLE_RUN,
    UNCOMPENSATED_STEP,
    RunStatus,
    StepStatus,
)
from .handle import RunHandle
from .retention import FINISHED, prune
from .runner.catalog import Catalog
from .runner.change import Action, Next
from .runner.decisions import Decisions
from .runner.invoke import Invoker
from .runner.notify import Notifier
from .runner.runtime import Runtime
from .runner.steps import StepRunner, first_unfinished, resume_point
from .runner.upkeep import Upkeep
from .schedules.definition import declared_schedules
from .schedules.runs import ScheduleView, describe_schedules
from .settings import env_flag, load_settings
from .storage.base import ClaimingStorage, RowViewStorage, Storage
from .storage.sql import SqlStorage
from .trace.event import TraceEvent
from .trace.fanout import TraceFanout

log = logging.getLogger("fluxcelery.engine")

#: Threads that run a group's branch steps or items in process (``execute``), at most.
GROUP_THREADS = 32
#: Times ``cancel`` reads a run again after the run moved on before its write landed.
CANCEL_TRIES = 20

EXECUTORS = ("local", "celery")


class Dispatcher(Protocol):
    """Sends a run's next work to workers (celery/dispatch.py: ``CeleryDispatcher``)."""

    def register(self, wf: Workflow, default_timeout: float | None) -> None:
        """Make ``wf``'s steps runnable by workers, with time limits resolved against
        ``default_timeout``."""

    def dispatch(
        self, state: RunState, wf: Workflow, nxt: Next, countdown: float | None = None
    ) -> None:
        """Send what ``nxt`` says (steps from an index, a compensation, a retry)."""

    def send_rows(self, run_id: str, wf: Workflow, rows: Sequence[tuple[int, str, int]]) -> None:
        """Send a group's rows ``(row, task id, definition index)`` (parallel branches,
        for_each items), each as its own task."""
        ...

    def schedule_wait_timeout(self, run_id: str, index: int, seconds: float) -> None:
        """Fail step ``index``'s wait after ``seconds`` unless a signal comes first."""

    def live_task_ids(self) -> set[str] | None:
        """Task ids workers hold now (None: they could not be asked): ``recover`` leaves
        their runs alone, and runs it cannot check."""

    def revoke(self, run_id: str, running: Sequence[str], *, terminate: bool) -> None:
        """A cancel was recorded: workers drop the run's tasks they hold (prefetched,
        waiting for a countdown); ``terminate`` also interrupts the ``running`` ones."""


class FluxEngine:
    """Runs workflows and owns their persisted state.

    ``storage`` defaults to ``SqlStorage`` on ``FLUX_DATABASE_URL`` (SQLite in ``.flux/``).
    With SQL storage every trace event is also written to ``flux_traces`` in the same
    transaction as the state change it describes; ``trace`` adds more sinks.
    ``dispatcher`` sends runs started with ``start`` to workers (default: Celery, on ``app``
    or the process-wide app); ``clock`` gives the time of every transition (tests can set it);
    ``sleep`` waits out in-process retry backoff and ``timer`` times in-process waits
    (``fluxcelery.testing.FluxClock`` gives all three for time-skipping tests).
    """

    def __init__(
        self,
        storage: Storage | None = None,
        trace: Any = None,
        *,
        default_retries: int = 3,
        default_timeout: float | None = 30.0,
        backoff: Backoff | None = None,
        on: Mapping[str, Callable[..., Any]] | None = None,
        redact: Iterable[str] = DEFAULT_REDACT,
        max_payload_bytes: int | None = DEFAULT_MAX_BYTES,
        hook_timeout: float | None = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        app: Any = None,
        dispatcher: Dispatcher | None = None,
        clock: Callable[[], datetime] = utcnow,
        timer: Callable[[float, Callable[[], None]], Any] | None = None,
    ) -> None:
        if (
            isinstance(default_retries, bool)
            or not isinstance(default_retries, int)
            or default_retries < 0
        ):
            raise ValueError(f"default_retries must be an int >= 0, got {default_retries!r}")
        if default_timeout is not None and default_timeout <= 0:
            raise ValueError(f"default_timeout must be > 0 or None, got {default_timeout!r}")
        if storage is None:
            storage = SqlStorage(load_settings().database_url)
        self.storage: Storage = storage
        sinks = (
            [] if trace is None else (list(trace) if isinstance(trace, (list, tuple)) else [trace])
        )
        self.sinks = TraceFanout(sinks)
        self.defaults = Defaults(default_retries, default_timeout, backoff or Backoff())
        self.redact = Redactor(redact)
        self.max_payload_bytes = max_payload_bytes
        #: ``RunHandle.get`` is woken by the write that settles the run where the storage
        #: can push (PostgreSQL ``LISTEN``/``NOTIFY``); False: it polls (``FLUX_PUSH_GET=0``).
        self.push_get = env_flag(os.environ.get("FLUX_PUSH_GET"), True)
        self.sleep = sleep
        self.clock = clock
        #: ``timer(seconds, callback)`` times in-process waits (None: a daemon thread timer).
        self.timer = timer
        self.invoker = Invoker()
        self.notifier = Notifier(
            storage, self.sinks, on or {}, self.invoker, self.redact, hook_timeout
        )
        self.catalog = Catalog()
        self.rt = Runtime(
            storage=storage,
            catalog=self.catalog,
            defaults=self.defaults,
            invoker=self.invoker,
            notifier=self.notifier,
            redact=self.redact,
            max_payload_bytes=max_payload_bytes,
            clock=clock,
            claiming=storage if isinstance(storage, ClaimingStorage) else None,
            views=storage if isinstance(storage, RowViewStorage) else None,
        )
        self.runner = StepRunner(self.rt)
        self.upkeep = Upkeep(self.rt, self.runner, self.continue_run, self._live_task_ids)
        self.decisions = Decisions(self.rt, self.runner, self.redact)
        self._app = app
        self._dispatcher: Dispatcher | None = dispatcher
        self._lock = threading.Lock()
        self.storage.init()

    #: Makes the dispatcher of an engine given none (``factory(engine, app)``): plugged in
    #: by the composition root (defaults.py) with the Celery dispatcher.
    dispatcher_factory: ClassVar[Callable[[FluxEngine, Any], Dispatcher] | None] = None

    # -- settings (read-only views of ``defaults`` and the notifier) ------------------------
    @property
    def default_retries(self) -> int:
        return self.defaults.retries

    @property
    def default_timeout(self) -> float | None:
        return self.defaults.timeout

    @property
    def backoff(self) -> Backoff:
        return self.defaults.backoff

    @property
    def hooks(self) -> dict[str, Callable[..., Any]]:
        return self.notifier.hooks

    @property
    def hook_timeout(self) -> float | None:
        return self.notifier.hook_timeout

    def __repr__(self) -> str:
        return f"<FluxEngine storage={self.storage!r}>"

    # -- workflows ------------------------------------------------------------------------
    def register(self, *workflows: Workflow) -> FluxEngine:
        """Make workflows known by name (for signal/retry/resume and workers)."""
        for wf in workflows:
            wf = self.catalog.register(wf)
            if self._dispatcher is not None:
                self._dispatcher.register(wf, self.default_timeout)
        return self

    @property
    def workflows(self) -> dict[str, Workflow]:
        return self.catalog.all()

    def workflow(self, name: str) -> Workflow:
        return self.catalog.get(name)

    def workflow_for(self, state: RunState) -> Workflow:
        """The definition a stored run continues with; refuses a changed definition."""
        return self.catalog.for_run(state)

    # -- traces ---------------------------------------------------------------------------
    def publish(self, events: Sequence[TraceEvent]) -> None:
        """Send already-stored events to the extra sinks."""
        self.notifier.publish(events)

    def record(self, events: Sequence[TraceEvent]) -> None:
        """Store and publish events that are not part of a state change (``hook:error``)."""
        self.notifier.record(events)

    # -- starting runs --------------------------------------------------------------------
    def _new_run(self, wf: Workflow, input: Any, executor: str, run_id: str | None) -> RunState:
        wf = self.catalog.register(wf)
        stored = wf.prepare_input(input, max_bytes=self.max_payload_bytes)
        if run_id is not None and (not isinstance(run_id, str) or not run_id or len(run_id) > 64):
            raise ValueError(f"run_id must be a non-empty string of at most 64 chars: {run_id!r}")
        return RunState(
            id=run_id or str(uuid.uuid4()),
            workflow=wf.name,
            workflow_version=wf.version,
            definition_hash=wf.definition_hash,
            status=RunStatus.PENDING,
            input=stored,
            data={},
            steps=[
                StepState(name=s.name, index=s.index, kind=s.kind, branch=s.branch, parent=s.parent)
                for s in wf.steps
            ],
            executor=executor,
            start_meta={"input": self.redact(stored)},
        )

    def execute(
        self, workflow: Workflow, input: Any = None, *, run_id: str | None = None
    ) -> FluxResult:
        """Run a workflow in this process and return its result.

        Step failures do not raise: see ``result.status`` and ``result.error``. Invalid input
        raises ``InvalidInput`` before anything is stored. A ``run_id`` that exists gives
        that run's result (same workflow and input) or ``IdempotencyConflict``.
        """
        state = self._new_run(workflow, input, "local", run_id)
        if run_id is not None and (existing := self.storage.load_run(run_id)) is not None:
            self._check_repeat(existing, state)
            return FluxResult.from_state(existing)
        # The run is inserted with its first step's start: one write fewer per run. When the
        # run id exists already, that insert does not land and this returns the stored run.
        final = self._drive_local(state.id, Next(Action.CONTINUE, 0), state, create=True)
        return FluxResult.from_state(final) if final is not None else self._result(state.id)

    def start(
        self,
        workflow: Workflow,
        input: Any = None,
        *,
        run_id: str | None = None,
        countdown: float | None = None,
    ) -> RunHandle:
        """Enqueue a run on Celery workers. With a ``run_id`` that exists for the same
        workflow and input, nothing new starts (idempotent start, e.g. keyed on a message
        id); with other content it raises ``IdempotencyConflict``."""
        state = self._new_run(workflow, input, "celery", run_id)
        if countdown:
            state.not_before = self.clock() + timedelta(seconds=countdown)  # recover waits
        dispatcher = self.dispatcher()
        wf = self.workflow(state.workflow)
        dispatcher.register(wf, self.default_timeout)
        if not self.storage.create_run(state, []):
            existing = self.storage.load_run(state.id)
            if existing is not None:
                self._check_repeat(existing, state)
            return RunHandle(self, state.id)
        try:
            dispatcher.dispatch(state, wf, Next(Action.CONTINUE, 0), countdown=countdown)
        except Exception as exc:
            # Start either enqueues the run or leaves nothing behind, so that starting
            # again (with the same run_id) works once the broker is back.
            self.storage.delete_run(state.id)
            raise DispatchError(
                f"could not send run {state.id} of {state.workflow!r} to the broker "
                f"({describe_error(exc)}); nothing was stored"
            ) from exc
        return RunHandle(self, state.id)

    @staticmethod
    def _check_repeat(existing: RunState, new: RunState) -> None:
        """A start under an existing run id repeats that run (nothing new starts) only
        when it has the same workflow and input; otherwise ``IdempotencyConflict``."""
        conflict = existing.start_conflict(new.workflow, new.input)
        if conflict is not None:
            raise IdempotencyConflict(conflict, run_id=existing.id)

    def dispatcher(self) -> Any:
        """The dispatcher that sends runs to workers (made on first use when none was
        given: see ``dispatcher_factory``)."""
        with self._lock:
            if self._dispatcher is None:
                factory = type(self).dispatcher_factory
                if factory is None:
                    raise DispatchError(
                        "this engine has no dispatcher: pass FluxEngine(dispatcher=...) "
                        "to start runs on workers"
                    )
                self._dispatcher = factory(self, self._app)
                for wf in self.catalog.own():
                    self._dispatcher.register(wf, self.default_timeout)
            return self._dispatcher

    def _live_task_ids(self) -> set[str] | None:
        """The task ids workers hold (None: they could not be asked). Made with the
        dispatcher even when this engine has not sent anything (the CLI's ``recover``)."""
        return self.dispatcher().live_task_ids()

    # -- driving --------------------------------------------------------------------------
    def continue_run(self, state: RunState, nxt: Next) -> None:
        """Carry a run on where it runs: dispatch its next work to workers (a run started
        with ``start``), or drive it in this process (``execute``)."""
        if nxt.action in (Action.DONE, Action.STOP):
            return
        if state.executor != "celery":
            self._drive_local(state.id, nxt)
            return
        wf = self.workflow(state.workflow)
        if nxt.action is Action.COMPENSATE and wf.row_def(state, nxt.index or 0).compensate is None:
            # Nothing to run at this index: finalize the rollback here.
            self.continue_run(state, self.runner.run_compensation(state.id, nxt.index or 0))
            return
        self.dispatcher().dispatch(state, wf, nxt)

    def fan_out(self, run_id: str, workflow: str, nxt: Next) -> None:
        """Send a group's rows (``Action.FANOUT``) to workers: their rows are recorded in
        flight already, each under the task id it is sent with (no read needed)."""
        self.dispatcher().send_rows(run_id, self.workflow(workflow), nxt.rows)

    def _drive_local(
        self, run_id: str, nxt: Next, state: RunState | None = None, create: bool = False
    ) -> RunState | None:
        """Run in this process until the run waits or ends. Returns the run as stored, or
        None when another process moved it (then read it again). ``create``: ``state`` is a
        new run, stored by its first write."""
        runner = self.runner
        while True:
            action = nxt.action
            if action is Action.CONTINUE:
                nxt = runner.run_step(run_id, nxt.index or 0, fuse=True, state=state, create=create)
                create = False
            elif action is Action.COMPENSATE:
                nxt = runner.run_compensation(run_id, nxt.index or 0, state=state)
            elif action is Action.RETRY:
                if nxt.delay > 0:
                    self.sleep(nxt.delay)
                    state = None  # someone may have cancelled it meanwhile: read again
                index = nxt.index or 0
                nxt = (
                    runner.run_compensation(run_id, index, state=state)
                    if nxt.phase == "compensate"
                    else runner.run_step(run_id, index, fuse=True, state=state)
                )
            elif action is Action.FANOUT:
                nxt = self._drive_group(run_id, nxt)
                state = None
            elif action is Action.SUSPEND:
                if nxt.wait_timeout:
                    self._local_wait_timer(run_id, nxt.index or 0, nxt.wait_timeout)
                return state
            elif action is Action.DONE:
                return state
            else:
                return None

    def _drive_group(self, run_id: str, fanout: Next) -> Next:
        """Run a group's branch steps or items in this process, at the same time on threads
        (as many as the group sends at once: its branches, or ``max_concurrency`` items),
        until the group is done. Returns what follows it (the join's next action, or the
        rollback a failed branch started); STOP when nothing follows here."""
        runner = self.runner
        state = self.storage.load_run(run_id)
        if state is None:
            return Next(Action.STOP)
        workflow = state.workflow  # lets an item's attempt read only its own row

        def run_row(row: int, definition: int) -> Next:
            nxt = runner.run_step(run_id, row, workflow=workflow, definition=definition)
            while nxt.action is Action.RETRY and nxt.phase == "step" and nxt.index == row:
                if nxt.delay > 0:
                    self.sleep(nxt.delay)
                nxt = runner.run_step(run_id, row, workflow=workflow, definition=definition)
            return nxt

        outcome = Next(Action.STOP)
        width = max(1, min(len(fanout.rows), GROUP_THREADS))
        with ThreadPoolExecutor(width, thread_name_prefix=f"flux-{run_id[:8]}") as pool:
            pending = {pool.submit(run_row, row, d) for row, _, d in fanout.rows}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    nxt = future.result()
                    if nxt.action is Action.FANOUT:
                        pending |= {pool.submit(run_row, row, d) for row, _, d in nxt.rows}
                    elif nxt.action is not Action.STOP:
                        outcome = nxt  # the join's (or the rollback's): one row says it
        return outcome

    def _local_wait_timer(self, run_id: str, index: int, seconds: float) -> None:
        """In-process wait deadline; ``recover`` is the durable path if this process exits."""
        if self.timer is not None:
            self.timer(seconds, lambda: self._expire_quietly(run_id, index))
            return
        timer = threading.Timer(seconds, self._expire_quietly, args=(run_id, index))
        timer.daemon = True
        timer.start()

    def _expire_quietly(self, run_id: str, index: int) -> None:
        try:
            self.expire_wait(run_id, index)
        except Exception as exc:  # a timer thread must not die noisily
            log.warning("wait timeout of run %s failed: %s", run_id, exc)

    def _result(self, run_id: str) -> FluxResult:
        state = self.storage.load_run(run_id)
        if state is None:
            raise RunNotFound(run_id)
        return FluxResult.from_state(state)

    def _load(self, run_id: str) -> RunState:
        state = self.storage.load_run(run_id)
        if state is None:
            raise RunNotFound(run_id)
        return state

    def _handle(self, state: RunState) -> RunHandle:
        return RunHandle(self, state.id)

    # -- operations on stored runs --------------------------------------------------------
    def get(self, run_id: str) -> RunState | None:
        return self.storage.load_run(run_id)

    def list(
        self,
        workflow: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 50,
        offset: int = 0,
    ) -> list[RunState]:
        return self.storage.list_runs(
            workflow=workflow, status=_status_values(status), limit=limit, offset=offset
        )

    def traces(
        self,
        run_id: str | None = None,
        workflow: str | None = None,
        type: str | Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 1000,
        offset: int = 0,
        newest_first: bool = False,
    ) -> builtins.list[TraceEvent]:
        return self.storage.list_traces(
            run_id=run_id,
            workflow=workflow,
            type=type,
            status=_status_values(status),
            limit=limit,
            offset=offset,
            newest_first=newest_first,
        )

    def schedules(self, now: datetime | None = None) -> builtins.list[ScheduleView]:
        """The schedules declared in this process (``fluxcelery.schedule``), each with its
        next tick after ``now`` and its newest run and status (see schedules/runs.py)."""
        return describe_schedules(self.storage, declared_schedules().values(), now or self.clock())

    def signal(
        self, run_id: str, name: str, payload: Any = None, *, force: bool = False
    ) -> RunHandle:
        """Deliver a signal to a suspended run; the payload becomes the waiting step's output.

        Exactly one of several concurrent signals continues the run; the others raise
        ``ConcurrentUpdate`` or ``InvalidTransition``.
        """
        state, wf, index = self._waiting(run_id, force)
        step = state.steps[index]
        if step.kind == "approval":
            raise NotAllowed(
                f"Run {run_id} waits for a decision on approval step {step.name!r}: "
                "use approve/reject, which check its approvers"
            )
        if step.waiting_for != name:
            raise SignalMismatch(
                f"Run {run_id} is waiting for signal {step.waiting_for!r}, received {name!r}"
            )
        value = roundtrip(payload, what="signal payload", max_bytes=self.max_payload_bytes)
        check_depth(value, what="signal payload")
        change = self.rt.change(state)
        now = self.clock()
        change.apply(t.deliver_signal(state, index, name, value, self.redact(value), now))
        finished = state.current_step >= len(wf.steps)
        if finished:
            change.apply(t.finish_run(state, RunStatus.COMPLETED, self.clock()))
        if not change.save():
            raise ConcurrentUpdate(f"Run {run_id} was changed concurrently; signal not applied")
        if not finished:
            self.continue_run(state, Next(Action.CONTINUE, index + 1))
        return self._handle(state)

    def approve(
        self, run_id: str, by: str, comment: str | None = None, *, force: bool = False
    ) -> RunHandle:
        """Approve the run's waiting approval step as ``by`` (one of its approvers): the
        decision becomes the step's output and the run goes on. ``NotAllowed`` for anyone
        else (nothing changes)."""
        by = check_decider(by, "approve")
        if comment is not None and not isinstance(comment, str):
            raise ValueError(f"approve: comment must be a string, got {comment!r}")
        state, wf, index = self._approval(run_id, force)
        self.decisions.check_allowed(wf, state, index, by)
        kept = None if comment is None else self._safe_text(comment)
        nxt = self.decisions.approve(wf, state, index, by, kept)
        self.continue_run(state, nxt)
        return self._handle(state)

    def reject(self, run_id: str, by: str, reason: str, *, force: bool = False) -> RunHandle:
        """Reject the run's waiting approval step as ``by``: the step fails (not retried)
        with ``Rejected: <reason>``, and the run's failure path (compensation) follows."""
        by = check_decider(by, "reject")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"reject: give a reason (a non-empty string), got {reason!r}")
        state, wf, index = self._approval(run_id, force)
        self.decisions.check_allowed(wf, state, index, by)
        nxt = self.decisions.reject(wf, state, index, by, self._safe_text(reason))
        self.continue_run(state, nxt)
        return self._handle(state)

    def _waiting(self, run_id: str, force: bool) -> tuple[RunState, Workflow, int]:
        """The suspended run, its definition and the index of its waiting step."""
        state = self._load(run_id)
        if state.status != RunStatus.SUSPENDED:
            raise InvalidTransition(
                state.status.value, "running", detail=f"run {run_id} is not suspended"
            )
        wf = self.catalog.forced(state) if force else self.workflow_for(state)
        index = state.current_step
        step = state.steps[index] if index < len(state.steps) else None
        if step is None or step.status != StepStatus.SUSPENDED:
            raise InvalidTransition(
                state.status.value, "running", detail=f"run {run_id} has no suspended step"
            )
        return state, wf, index

    def _approval(self, run_id: str, force: bool) -> tuple[RunState, Workflow, int]:
        state, wf, index = self._waiting(run_id, force)
        if wf.steps[index].kind != "approval":
            raise InvalidTransition(
                state.status.value,
                "running",
                detail=f"run {run_id} waits for signal {state.steps[index].waiting_for!r}, "
                "not for an approval",
            )
        return state, wf, index

    def _safe_text(self, text: str) -> str:
        """A comment or reason as stored: JSON-safe and of bounded size."""
        kept: str = roundtrip(text, what="approval comment", max_bytes=self.max_payload_bytes)
        return kept

    def retry(
        self, run_id: str, from_step: str | int | None = None, *, force: bool = False
    ) -> RunHandle:
        """Re-run a ``failed``/``rolled_back`` run from a step (default: the failed step).

        Completed commit steps are never re-run. Steps whose effects were compensated are
        re-run. A run that failed because a compensation failed re-attempts the failed
        compensations (unless ``from_step`` is given).
        """
        state = self._load(run_id)
        if state.status not in RETRYABLE_RUN:
            raise InvalidTransition(
                state.status.value,
                "running",
                detail="only failed or rolled_back runs can be retried",
            )
        wf = self.catalog.forced(state) if force else self.workflow_for(state)
        change = self.rt.change(state)
        failed_idx = next((s.index for s in state.steps if s.status == StepStatus.FAILED), None)
        comp_failed = [s.index for s in state.steps if s.status in UNCOMPENSATED_STEP]
        if comp_failed and from_step is None:
            limit = failed_idx if failed_idx is not None else len(state.steps)
            plan = rollback_plan(wf, state, limit if limit < len(state.steps) else None)
            change.apply(t.begin_rollback(state, plan, state.error, retry=True, at=self.clock()))
            if not change.save():
                raise ConcurrentUpdate(f"Run {run_id} was changed concurrently; not retried")
            self.continue_run(
                state, Next(Action.COMPENSATE, plan[0]) if plan else Next(Action.DONE)
            )
            return self._handle(state)

        start = self._retry_index(state, wf, from_step, failed_idx)
        compensated = [
            s.index if s.parent is None else s.parent  # a group is redone as a whole
            for s in state.steps
            if s.status == StepStatus.COMPENSATED
        ]
        if compensated:
            start = min(start, min(compensated))  # undone effects are redone
        change.apply(t.reset_for_retry(state, start, self.clock()))
        if not change.save():
            raise ConcurrentUpdate(f"Run {run_id} was changed concurrently; not retried")
        self.continue_run(state, Next(Action.CONTINUE, start))
        return self._handle(state)

    @staticmethod
    def _retry_index(
        state: RunState, wf: Workflow, from_step: str | int | None, failed_idx: int | None
    ) -> int:
        if from_step is None:
            return failed_idx if failed_idx is not None else first_unfinished(state)
        if isinstance(from_step, int) and not isinstance(from_step, bool):
            if not 0 <= from_step < len(wf.steps):
                raise FluxError(f"Invalid step index: {from_step} (0..{len(wf.steps) - 1})")
            index = from_step
        else:
            named = wf.step_named(str(from_step))
            # A branch step is retried with its parallel step (its branch and the join).
            index = named.parent if named.parent is not None else named.index
        # Compensated steps are redone by the retry, so they do not block it.
        unfinished = next(
            (
                s.index
                for s in state.steps
                if s.status not in DONE_STEP and s.status != StepStatus.COMPENSATED
            ),
            len(state.steps),
        )
        if index > unfinished:
            blocker = state.steps[unfinished]
            raise InvalidTransition(
                state.status.value,
                "running",
                detail=f"cannot retry from {state.steps[index].name!r}: earlier step "
                f"{blocker.name!r} is {blocker.status.value}",
            )
        return index

    def resume(self, run_id: str, *, force: bool = False) -> RunHandle:
        """Continue a run interrupted mid-way (a crash) from its first unfinished step.

        Completed steps are not re-run; a step found ``running`` counts a new attempt.
        """
        state = self._load(run_id)
        if state.status not in MOVING_RUN:
            raise InvalidTransition(
                state.status.value,
                "running",
                detail="only pending, running or rolling_back runs resume",
            )
        if force:
            self.catalog.forced(state)
            change = self.rt.change(state)
            if not change.save():
                raise ConcurrentUpdate(f"Run {run_id} was changed concurrently; not resumed")
        else:
            self.workflow_for(state)
        self.continue_run(state, resume_point(state, self.workflow(state.workflow)))
        return self._handle(state)

    def cancel(
        self,
        run_id: str,
        reason: str = "cancelled",
        *,
        compensate: bool = False,
        terminate: bool = False,
    ) -> RunState:
        """Stop a run for good (SPEC section 12). Once the cancel is recorded no step starts:
        tasks of the run that workers hold are revoked, and one that arrives anyway finds
        the run cancelled and does nothing. A running attempt finishes and its outcome is
        recorded, unless ``terminate``: then it is interrupted (revoked with SIGTERM on a
        process pool; cancelled in this process for async handlers and handlers running on
        a helper thread) and its writes are discarded. ``compensate``: the completed steps
        are compensated in reverse order (``rolling_back``, after the running attempt
        settled), then the run ends ``cancelled``."""
        # A run moving on workers (a for_each's items start and end all the time) can win
        # the race for the write: read it again and cancel what it is now.
        for _ in range(CANCEL_TRIES):
            state = self._load(run_id)
            if state.status not in CANCELLABLE_RUN:
                raise InvalidTransition(
                    state.status.value,
                    "cancelled",
                    detail=f"run {run_id} is already {state.status.value}",
                )
            wf = self.workflow(state.workflow) if compensate else None
            plan = rollback_plan(wf, state, None) if wf is not None else None
            running = [
                s.task_id for s in state.steps if s.status == StepStatus.RUNNING and s.task_id
            ]
            change = self.rt.change(state)
            change.apply(t.cancel_run(state, reason, self.clock(), terminate=terminate, plan=plan))
            if change.save():
                break
        else:
            raise ConcurrentUpdate(f"Run {run_id} was changed concurrently; not cancelled")
        self._stop_work(state, running, terminate)
        waiting = any(s.status == StepStatus.RUNNING for s in state.steps)
        if state.status == RunStatus.ROLLING_BACK and wf is not None and not waiting:
            self.continue_run(state, resume_point(state, wf))  # the rollback starts now
            return self._load(run_id)
        return state

    def _stop_work(self, state: RunState, running: builtins.list[str], terminate: bool) -> None:
        """After a cancel: workers drop the run's tasks they hold (and, ``terminate``,
        interrupt its running attempt); in this process, a running attempt is cancelled."""
        if terminate:
            self.rt.interrupts.interrupt(state.id)
        if state.executor != "celery":
            return
        try:
            self.dispatcher().revoke(state.id, running, terminate=terminate)
        except Exception as exc:  # the cancel is recorded: a task that arrives does nothing
            log.warning("run %s cancelled, but its tasks could not be revoked: %s", state.id, exc)

    def expire_wait(self, run_id: str, index: int, now: datetime | None = None) -> bool:
        """Fail a suspended step whose wait deadline has passed; True if it did."""
        return self.upkeep.expire_wait(run_id, index, now)

    def wait_remaining(self, run_id: str, index: int) -> float | None:
        """Seconds until the wait of step ``index`` times out; None when it is not waiting."""
        return self.upkeep.wait_remaining(run_id, index)

    def recover(self, older_than: float | None = None, *, limit: int = 100) -> builtins.list[str]:
        """Continue runs stuck mid-way (a worker or process died) and expire overdue waits;
        the ids of the runs acted on (see upkeep.py)."""
        return self.upkeep.recover(older_than, limit=limit)

    def prune(
        self,
        older_than: timedelta,
        *,
        statuses: Sequence[str] | None = None,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete finished runs (and their steps and traces) not updated for
        ``older_than``; see retention.py."""
        return prune(
            self.storage,
            older_than,
            statuses=statuses or FINISHED,
            dry_run=dry_run,
            progress=progress,
        )

    def close(self) -> None:
        self.invoker.close()
        self.storage.close()


def _status_values(status: Any) -> Any:
    if status is None:
        return None
    if isinstance(status, (str, RunStatus, StepStatus)):
        return str(status.value if isinstance(status, (RunStatus, StepStatus)) else status)
    return [str(s.value if isinstance(s, (RunStatus, StepStatus)) else s) for s in status]
