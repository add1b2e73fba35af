"""``FluxEngine``: define once, run in-process (``execute``) or on Celery (``start``)."""

from __future__ import annotations

import builtins
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .builder import Workflow, registered_workflows
from .change import Action, Change, Next
from .errors import (
    ConcurrentUpdate,
    DefinitionChanged,
    DispatchError,
    FluxError,
    InvalidInput,
    InvalidTransition,
    PayloadTooLarge,
    RunNotFound,
    SerializationError,
    SignalMismatch,
    WorkflowNotFound,
    describe_error,
)
from .handle import RunHandle
from .invoke import Invoker
from .jsoncodec import DEFAULT_MAX_BYTES, DEFAULT_REDACT, Redactor, roundtrip
from .policy import Backoff, compensation_plan
from .records import FluxResult, RunState, StepState, ms_between, utcnow
from .runner import StepRunner, first_unfinished
from .states import DONE_STEP, RunStatus, StepStatus
from .storage.base import Storage
from .trace.event import TraceEvent
from .trace.fanout import TraceFanout
from .upkeep import Upkeep

if TYPE_CHECKING:
    from .celery.dispatch import CeleryDispatcher

log = logging.getLogger("fluxcelery.engine")

HOOKS = ("step_start", "step_complete", "step_error", "workflow_complete", "workflow_error")
EXECUTORS = ("local", "celery")


class FluxEngine:
    """Runs workflows and owns their persisted state.

    ``storage`` defaults to ``SqlStorage`` on ``FLUX_DATABASE_URL`` (SQLite in ``.flux/``).
    With SQL storage every trace event is also written to ``flux_traces`` in the same
    transaction as the state change it describes; ``trace`` adds more sinks.
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
    ) -> None:
        if (
            isinstance(default_retries, bool)
            or not isinstance(default_retries, int)
            or default_retries < 0
        ):
            raise ValueError(f"default_retries must be an int >= 0, got {default_retries!r}")
        if default_timeout is not None and default_timeout <= 0:
            raise ValueError(f"default_timeout must be > 0 or None, got {default_timeout!r}")
        unknown = set(on or {}) - set(HOOKS)
        if unknown:
            raise ValueError(f"unknown hook(s) {sorted(unknown)}; hooks are {list(HOOKS)}")
        if storage is None:
            from .settings import load_settings
            from .storage.sql import SqlStorage

            storage = SqlStorage(load_settings().database_url)
        self.storage: Storage = storage
        sinks = (
            [] if trace is None else (list(trace) if isinstance(trace, (list, tuple)) else [trace])
        )
        self.sinks = TraceFanout(sinks)
        self.default_retries = default_retries
        self.default_timeout = default_timeout
        self.backoff = backoff or Backoff()
        self.hooks: dict[str, Callable[..., Any]] = dict(on or {})
        self.redact = Redactor(redact)
        self.max_payload_bytes = max_payload_bytes
        self.hook_timeout = hook_timeout
        self.sleep = sleep
        self.invoker = Invoker()
        self.runner = StepRunner(self)
        self.upkeep = Upkeep(self)
        self._workflows: dict[str, Workflow] = {}
        self._app = app
        self._dispatcher: CeleryDispatcher | None = None
        self._lock = threading.Lock()
        self.storage.init()

    def __repr__(self) -> str:
        return f"<FluxEngine storage={self.storage!r}>"

    # -- workflows ------------------------------------------------------------------------
    def register(self, *workflows: Workflow) -> FluxEngine:
        """Make workflows known by name (for signal/retry/resume and workers)."""
        for wf in workflows:
            wf.freeze()
            self._workflows[wf.name] = wf
            if self._dispatcher is not None:
                self._dispatcher.register(wf)
        return self

    @property
    def workflows(self) -> dict[str, Workflow]:
        known = registered_workflows()
        known.update(self._workflows)
        return known

    def workflow(self, name: str) -> Workflow:
        wf = self._workflows.get(name) or registered_workflows().get(name)
        if wf is None:
            raise WorkflowNotFound(name, list(self.workflows))
        return wf.freeze()

    def workflow_for(self, state: RunState) -> Workflow:
        """The definition a stored run continues with; refuses a changed definition."""
        wf = self.workflow(state.workflow)
        if state.definition_hash and wf.definition_hash != state.definition_hash:
            raise DefinitionChanged(
                f"Run {state.id} was started with definition {state.definition_hash} of "
                f"workflow {state.workflow!r}; the current definition is "
                f"{wf.definition_hash}. Retry with force=True (CLI: --force) to continue "
                "with the current definition."
            )
        return wf

    def _forced(self, state: RunState) -> Workflow:
        wf = self.workflow(state.workflow)
        names = [(s.name, s.kind) for s in state.steps]
        if names != [(s.name, s.kind) for s in wf.steps]:
            raise DefinitionChanged(
                f"Run {state.id}: the steps of {state.workflow!r} changed "
                f"({[n for n, _ in names]} -> {[s.name for s in wf.steps]}); "
                "a run cannot continue across a change of its steps"
            )
        state.definition_hash = wf.definition_hash
        state.workflow_version = wf.version
        return wf

    # -- traces ---------------------------------------------------------------------------
    def publish(self, events: Sequence[TraceEvent]) -> None:
        """Send already-stored events to the extra sinks."""
        if self.sinks:
            self.sinks.emit_all(events)

    def record(self, events: Sequence[TraceEvent]) -> None:
        """Store and publish events that are not part of a state change (``hook:error``)."""
        try:
            self.storage.append_traces(events)
        except Exception as exc:
            log.warning("could not store trace events: %s", exc)
        self.publish(events)

    # -- starting runs --------------------------------------------------------------------
    def _new_run(self, wf: Workflow, input: Any, executor: str, run_id: str | None) -> RunState:
        wf = wf.freeze()
        self._workflows.setdefault(wf.name, wf)
        if self._workflows[wf.name] is not wf:
            self._workflows[wf.name] = wf
        try:
            stored = roundtrip(
                wf.validate_input(input), what="workflow input", max_bytes=self.max_payload_bytes
            )
        except (SerializationError, PayloadTooLarge) as exc:
            raise InvalidInput(f"Invalid input for workflow {wf.name!r}: {exc}") from None
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
            steps=[StepState(name=s.name, index=s.index, kind=s.kind) for s in wf.steps],
            executor=executor,
            start_meta={"input": self.redact(stored)},
        )

    def execute(
        self, workflow: Workflow, input: Any = None, *, run_id: str | None = None
    ) -> FluxResult:
        """Run a workflow in this process and return its result.

        Step failures do not raise: see ``result.status`` and ``result.error``. Invalid input
        raises ``InvalidInput`` before anything is stored.
        """
        state = self._new_run(workflow, input, "local", run_id)
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
        """Enqueue a run on Celery workers. With a ``run_id`` that exists, nothing new starts
        (idempotent start, e.g. keyed on a message id)."""
        state = self._new_run(workflow, input, "celery", run_id)
        if countdown:
            state.not_before = utcnow() + timedelta(seconds=countdown)  # recover waits for it
        dispatcher = self.dispatcher()
        dispatcher.register(self.workflow(state.workflow))
        if self.storage.create_run(state, []):
            try:
                dispatcher.dispatch(state, Next(Action.CONTINUE, 0), countdown=countdown)
            except Exception as exc:
                # Start either enqueues the run or leaves nothing behind, so that starting
                # again (with the same run_id) works once the broker is back.
                self.storage.delete_run(state.id)
                raise DispatchError(
                    f"could not send run {state.id} of {state.workflow!r} to the broker "
                    f"({describe_error(exc)}); nothing was stored"
                ) from exc
        return RunHandle(self, state.id)

    def dispatcher(self) -> CeleryDispatcher:
        with self._lock:
            if self._dispatcher is None:
                from .celery.dispatch import CeleryDispatcher

                self._dispatcher = CeleryDispatcher(self, self._app)
                for wf in self._workflows.values():
                    self._dispatcher.register(wf)
            return self._dispatcher

    # -- driving --------------------------------------------------------------------------
    def _continue(self, state: RunState, nxt: Next) -> None:
        if nxt.action in (Action.DONE, Action.STOP):
            return
        if state.executor == "celery":
            self.dispatcher().dispatch(state, nxt)
        else:
            self._drive_local(state.id, nxt)

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
            elif action is Action.SUSPEND:
                if nxt.wait_timeout:
                    self._local_wait_timer(run_id, nxt.index or 0, nxt.wait_timeout)
                return state
            elif action is Action.DONE:
                return state
            else:
                return None

    def _local_wait_timer(self, run_id: str, index: int, seconds: float) -> None:
        """In-process wait deadline; ``recover`` is the durable path if this process exits."""
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

    def signal(
        self, run_id: str, name: str, payload: Any = None, *, force: bool = False
    ) -> RunHandle:
        """Deliver a signal to a suspended run; the payload becomes the waiting step's output.

        Exactly one of several concurrent signals continues the run; the others raise
        ``ConcurrentUpdate`` or ``InvalidTransition``.
        """
        state = self._load(run_id)
        if state.status != RunStatus.SUSPENDED:
            raise InvalidTransition(
                state.status.value, "running", detail=f"run {run_id} is not suspended"
            )
        wf = self._forced(state) if force else self.workflow_for(state)
        index = state.current_step
        step = state.steps[index] if index < len(state.steps) else None
        if step is None or step.status != StepStatus.SUSPENDED:
            raise InvalidTransition(
                state.status.value, "running", detail=f"run {run_id} has no suspended step"
            )
        if step.waiting_for != name:
            raise SignalMismatch(
                f"Run {run_id} is waiting for signal {step.waiting_for!r}, received {name!r}"
            )
        value = roundtrip(payload, what="signal payload", max_bytes=self.max_payload_bytes)
        change = Change(self.runner, state)
        s = change.step(index)
        now = utcnow()
        s.status = StepStatus.COMPLETED
        s.output = value
        s.finished_at = now
        s.duration_ms = ms_between(s.started_at, now)
        s.wait_deadline = None
        state.status = RunStatus.RUNNING
        state.current_step = index + 1
        change.step_event(
            "signal:received",
            s,
            status="completed",
            meta={"signal": name, "payload": self.redact(value)},
        )
        finished = state.current_step >= len(wf.steps)
        if finished:
            self.runner._finish_run(change, RunStatus.COMPLETED)
        if not change.save():
            raise ConcurrentUpdate(f"Run {run_id} was changed concurrently; signal not applied")
        if not finished:
            self._continue(state, Next(Action.CONTINUE, index + 1))
        return self._handle(state)

    def retry(
        self, run_id: str, from_step: str | int | None = None, *, force: bool = False
    ) -> RunHandle:
        """Re-run a ``failed``/``rolled_back`` run from a step (default: the failed step).

        Completed commit steps are never re-run. Steps whose effects were compensated are
        re-run. A run that failed because a compensation failed re-attempts the failed
        compensations (unless ``from_step`` is given).
        """
        state = self._load(run_id)
        if state.status not in (RunStatus.FAILED, RunStatus.ROLLED_BACK):
            raise InvalidTransition(
                state.status.value,
                "running",
                detail="only failed or rolled_back runs can be retried",
            )
        wf = self._forced(state) if force else self.workflow_for(state)
        change = Change(self.runner, state)
        failed_idx = next((s.index for s in state.steps if s.status == StepStatus.FAILED), None)
        comp_failed = [
            s.index
            for s in state.steps
            if s.status in (StepStatus.COMPENSATION_FAILED, StepStatus.COMPENSATING)
        ]
        if comp_failed and from_step is None:
            limit = failed_idx if failed_idx is not None else len(state.steps)
            plan = compensation_plan(wf.steps, [s.status for s in state.steps], limit)
            state.status = RunStatus.ROLLING_BACK
            state.finished_at = None
            for i in plan:
                change.step(i).compensation_attempts = 0
            change.event(
                "workflow:rollback_start",
                status="rolling_back",
                error=state.error,
                meta={"retry": True, "plan": [state.steps[i].name for i in plan]},
            )
            if not change.save():
                raise ConcurrentUpdate(f"Run {run_id} was changed concurrently; not retried")
            self._continue(state, Next(Action.COMPENSATE, plan[0]) if plan else Next(Action.DONE))
            return self._handle(state)

        start = self._retry_index(state, wf, from_step, failed_idx)
        compensated = [s.index for s in state.steps if s.status == StepStatus.COMPENSATED]
        if compensated:
            start = min(start, compensated[0])  # undone effects are redone
        landed = (StepStatus.COMPLETED, StepStatus.COMPENSATION_FAILED, StepStatus.COMPENSATING)
        for s in state.steps[start:]:
            if s.kind == "commit" and s.status in landed:
                # A commit whose effect landed (and was not undone) is never re-run.
                if s.status != StepStatus.COMPLETED:
                    change.step(s.index).status = StepStatus.COMPLETED
                continue
            if s.status != StepStatus.PENDING or s.attempts:
                s.reset()
                change.steps.add(s.index)
        state.status = RunStatus.RUNNING
        state.current_step = start
        state.error = None
        state.finished_at = None
        change.event(
            "workflow:start",
            status="running",
            meta={"retry": True, "from_step": state.steps[start].name},
        )
        if not change.save():
            raise ConcurrentUpdate(f"Run {run_id} was changed concurrently; not retried")
        self._continue(state, Next(Action.CONTINUE, start))
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
            index = wf.step_named(str(from_step)).index
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
        if state.status not in (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.ROLLING_BACK):
            raise InvalidTransition(
                state.status.value,
                "running",
                detail="only pending, running or rolling_back runs resume",
            )
        if force:
            self._forced(state)
            change = Change(self.runner, state)
            if not change.save():
                raise ConcurrentUpdate(f"Run {run_id} was changed concurrently; not resumed")
        else:
            self.workflow_for(state)
        self._continue(state, self._resume_point(state))
        return self._handle(state)

    def _resume_point(self, state: RunState) -> Next:
        if state.status == RunStatus.ROLLING_BACK:
            wf = self.workflow(state.workflow)
            failed = next(
                (s.index for s in state.steps if s.status == StepStatus.FAILED), len(state.steps)
            )
            plan = compensation_plan(wf.steps, [s.status for s in state.steps], failed)
            if plan:
                return Next(Action.COMPENSATE, plan[0])
            return Next(Action.COMPENSATE, 0)  # finalizes the rollback
        return Next(Action.CONTINUE, first_unfinished(state))

    def cancel(self, run_id: str, reason: str = "cancelled") -> RunState:
        """Stop a run for good. A step still running on a worker is discarded when it ends."""
        state = self._load(run_id)
        if state.status not in (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUSPENDED):
            raise InvalidTransition(
                state.status.value,
                "cancelled",
                detail=f"run {run_id} is already {state.status.value}",
            )
        change = Change(self.runner, state)
        for s in state.steps:
            if s.status in (StepStatus.RUNNING, StepStatus.SUSPENDED):
                step = change.step(s.index)
                step.status = StepStatus.FAILED
                step.error = f"Cancelled: {reason}"
                step.finished_at = utcnow()
                step.wait_deadline = None
        state.status = RunStatus.CANCELLED
        state.error = f"Cancelled: {reason}"
        state.finished_at = utcnow()
        change.event(
            "workflow:cancel", status="cancelled", error=state.error, meta={"reason": reason}
        )
        if not change.save():
            raise ConcurrentUpdate(f"Run {run_id} was changed concurrently; not cancelled")
        return state

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
        from .retention import FINISHED, prune

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
