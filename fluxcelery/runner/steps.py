"""Runs ONE step attempt (or one compensation) and maps its outcome to a persisted
transition, trace events and the next action. Embedded mode and Celery tasks both call this,
so a workflow behaves the same in-process and on workers.

Every state change is a guarded write (``save_run`` with the version read). A write that does
not land means another process moved the run first: the attempt's result is discarded and the
caller stops (``Action.STOP``). That is a normal, tested outcome.

The ``_apply_*`` methods only mutate a ``Change``; ``run_step`` decides when to save. On
Celery each attempt is two writes (its start, its outcome); on PostgreSQL the start rides on
the load (``ClaimingStorage``), so a step task costs two statements. In-process
(``fuse=True``) the outcome of step *i* and the start of step *i + 1* are one write, and a new
run is inserted with its first start, so a run costs one transaction per step (plus one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .builder import DEFAULT, StepDef, WaitFor, Workflow
from .change import DONE, STOP, Action, Change, Next
from .claim import load_claiming
from .compensation import Compensation
from .context import StepContext
from .errors import FluxError, SerializationError, describe_error
from .failure import Failure, capture
from .jsoncodec import roundtrip
from .policy import compensation_plan, should_retry
from .records import RunState, ms_between, utcnow
from .states import DONE_STEP, RunStatus, StepStatus
from .storage.base import ClaimingStorage
from .trace.event import TraceEvent

if TYPE_CHECKING:
    from .engine import FluxEngine

log = logging.getLogger("fluxcelery.runner")


class StepRunner:
    def __init__(self, engine: FluxEngine) -> None:
        self.engine = engine
        self.storage = engine.storage
        #: The store, when it can start a step in the load statement (asked once: a runtime
        #: protocol check is slow, and every step task would ask it).
        self.claiming = engine.storage if isinstance(engine.storage, ClaimingStorage) else None
        self.compensation = Compensation(self)

    def run_compensation(
        self,
        run_id: str,
        index: int,
        *,
        task_id: str | None = None,
        worker: str | None = None,
        state: RunState | None = None,
    ) -> Next:
        """Run the compensator of step ``index`` (see compensation.py)."""
        return self.compensation.run(run_id, index, task_id=task_id, worker=worker, state=state)

    # -- settings resolved against the engine -------------------------------------------
    def max_attempts(self, sdef: StepDef) -> int:
        retries = self.engine.default_retries if sdef.retries is None else sdef.retries
        return retries + 1

    def timeout(self, sdef: StepDef) -> float | None:
        if sdef.timeout is DEFAULT:
            return self.engine.default_timeout
        return sdef.timeout  # type: ignore[return-value]

    def publish(self, events: list[TraceEvent]) -> None:
        self.engine.publish(events)

    # -- helpers --------------------------------------------------------------------------
    def _context(
        self, wf: Workflow, state: RunState, sdef: StepDef, attempt: int, session: Any = None
    ) -> StepContext:
        spec = wf.input_spec
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
            redactor=self.engine.redact,
            raw_input=state.input,
        )

    def error_text(self, exc: BaseException, state: RunState) -> str:
        """``describe_error`` with the run's secrets masked: an exception message is stored
        and traced, and a handler may have put a token in it."""
        return self.engine.redact.scrub(describe_error(exc), state.input, state.data)

    def failure(self, exc: BaseException | None, err: str, state: RunState) -> Failure:
        """The attempt's failure for Celery and the step's stored traceback, masked like
        ``error_text``."""
        return capture(
            exc, err, lambda text: self.engine.redact.scrub(text, state.input, state.data)
        )

    def call_hook(self, name: str, state: RunState, *args: Any) -> None:
        """Call a hook; a raising hook is logged and traced, never changes the outcome."""
        fn = self.engine.hooks.get(name)
        if fn is None:
            return
        try:
            self.engine.invoker.call(
                fn, *args, timeout=self.engine.hook_timeout, what=f"hook {name}"
            )
        except Exception as exc:
            err = self.error_text(exc, state)
            log.warning("hook %s raised for run %s: %s", name, state.id, err)
            event = TraceEvent(
                type="hook:error",
                run_id=state.id,
                workflow=state.workflow,
                error=err,
                meta={"hook": name},
                step=args[0] if args and isinstance(args[0], str) else None,
            )
            self.engine.record([event])

    def _finish_run(self, change: Change, status: RunStatus, error: str | None = None) -> None:
        state = change.state
        state.status = status
        now = state.finished_at = utcnow()
        if error is not None:
            state.error = error
        duration = ms_between(state.created_at, now)
        if status == RunStatus.COMPLETED:
            state.error = None
            change.event("workflow:complete", status=status.value, duration_ms=duration, ts=now)
        else:
            change.event(
                "workflow:error",
                status=status.value,
                duration_ms=duration,
                error=state.error,
                ts=now,
            )

    # -- forward steps --------------------------------------------------------------------
    def run_step(
        self,
        run_id: str,
        index: int,
        *,
        task_id: str | None = None,
        worker: str | None = None,
        fuse: bool = False,
        state: RunState | None = None,
        outage: bool = False,
        create: bool = False,
        workflow: str | None = None,
    ) -> Next:
        """Run step ``index`` of a run: one attempt (on Celery), or with ``fuse`` every
        following step too until the run needs to wait, retry, compensate or is done.

        ``state``: the run as last written by this process (saves a read). Safe because
        every write is guarded by its version: a stale state only loses its race.
        ``outage``: this task is retried because the database failed while it ran; an
        attempt it left ``running`` never got its outcome stored, so it runs again under the
        same attempt number instead of counting as a worker loss.
        ``create``: ``state`` is a new run, not stored yet; it is inserted together with the
        start of its first step (one write instead of two). A run with the same id already
        stored makes that insert fail, and this returns ``STOP``.
        ``workflow``: the workflow the caller expects (a step task knows it). With it, a
        store that can (``ClaimingStorage``) starts the step in the same round trip as the
        load, in the plain case; any other case goes the usual way from the loaded run.
        """
        claimed = False
        if state is None:
            state, claimed = load_claiming(self, run_id, index, workflow, task_id, worker, outage)
        if state is None:
            log.warning("step task for unknown run %s ignored", run_id)
            return STOP
        decision = None if claimed else self._decide(state, index)
        if decision is not None:
            return decision
        try:
            wf = self.engine.workflow_for(state)
        except FluxError as exc:
            return self._fail_unrunnable(state, exc)

        change = Change(self, state, create=create)
        while True:
            if not claimed:
                nxt = self._prepare(change, wf, index, task_id, worker, outage)
                outage = False  # only the step this task was retried for
                if nxt is not None:
                    if nxt.action is Action.CONTINUE and fuse:
                        index = nxt.index or 0
                        continue
                    return nxt if change.save() else STOP
                if not change.save():
                    return STOP
            claimed = False
            sdef = wf.steps[index]
            attempt = state.steps[index].attempts
            if "step_start" in self.engine.hooks:
                ctx = self._context(wf, state, sdef, attempt)
                self.call_hook("step_start", state, sdef.name, ctx)
            nxt, pending = self._attempt(wf, change, sdef, attempt, task_id, worker, fuse)
            if pending is None:
                return nxt
            if nxt.action is Action.CONTINUE:
                index = nxt.index or 0
                continue  # the next step's start joins this write
            return nxt if change.save() else STOP

    def _decide(self, state: RunState, index: int) -> Next | None:
        """Whether a task for step ``index`` may run now; None means go ahead."""
        if state.status not in (RunStatus.PENDING, RunStatus.RUNNING):
            return STOP
        cursor = state.current_step
        n = len(state.steps)
        if index < 0 or index >= n:
            return STOP
        if index < cursor:
            # A redelivered task whose step finished before the worker died: make sure the
            # run moves on (the next task may never have been sent).
            nxt = state.steps[cursor] if cursor < n else None
            if (
                index == cursor - 1
                and state.steps[index].status in DONE_STEP
                and nxt is not None
                and nxt.status == StepStatus.PENDING
                and nxt.attempts == 0
            ):
                return Next(Action.CONTINUE, cursor)
            return STOP
        if index > cursor:
            return STOP
        status = state.steps[index].status
        if status in DONE_STEP or status in (StepStatus.PENDING, StepStatus.RUNNING):
            return None
        return STOP

    def _prepare(
        self,
        change: Change,
        wf: Workflow,
        index: int,
        task_id: str | None,
        worker: str | None,
        outage: bool = False,
    ) -> Next | None:
        """Mutate ``change`` to start step ``index``. None: an attempt is ready to run;
        otherwise what happens next (the step was skipped, kept, or failed at once)."""
        state = change.state
        sdef = wf.steps[index]
        step = state.steps[index]
        if state.status == RunStatus.PENDING:
            state.status = RunStatus.RUNNING
            change.event(
                "workflow:start",
                status="running",
                task_id=task_id,
                worker=worker,
                # Made when the run was (``start_meta``) unless it was loaded since.
                meta=state.start_meta or {"input": self.engine.redact(state.input)},
            )
        if step.status in DONE_STEP:
            # Kept ``completed`` across a retry (a commit step): never run it again.
            change.steps.add(index)
            state.current_step = index + 1
            change.step_event(
                "step:skipped",
                step,
                status=step.status.value,
                meta={"reason": "already completed", "not_rerun": True},
            )
            return self._advance(change, wf, index)

        if step.attempts == 0 and sdef.when is not None:
            ctx = self._context(wf, state, sdef, 0)
            try:
                go = self.engine.invoker.call(
                    sdef.when, ctx, timeout=self.timeout(sdef), what=f"when() of step {sdef.name!r}"
                )
            except Exception as exc:
                err = f"when() raised {self.error_text(exc, state)}"
                return self._apply_fail(change, wf, sdef, 0, err, exc, task_id, worker)
            if not go:
                s = change.step(index)
                s.status = StepStatus.SKIPPED
                s.finished_at = utcnow()
                state.current_step = index + 1
                change.step_event(
                    "step:skipped", s, status="skipped", task_id=task_id, worker=worker
                )
                change.hook("step_complete", sdef.name, ctx, None)
                return self._advance(change, wf, index, ctx)

        max_attempts = self.max_attempts(sdef)
        attempt = step.attempts + 1
        rerun = (
            outage
            and step.status == StepStatus.RUNNING
            and step.attempts > 0
            and task_id is not None
            and step.task_id == task_id
        )
        if rerun:
            attempt = step.attempts  # the same attempt: its outcome was never stored
        if attempt > max_attempts:
            # Redelivered after worker deaths until the attempts ran out: stop the loop.
            err = (
                f"WorkerLost: step {sdef.name!r} was interrupted {step.attempts} times "
                f"(max {max_attempts} attempts)"
            )
            return self._apply_fail(change, wf, sdef, step.attempts, err, None, task_id, worker)

        s = change.step(index)
        redelivered = s.status == StepStatus.RUNNING
        s.status = StepStatus.RUNNING
        s.attempts = attempt
        s.task_id = task_id
        s.started_at = now = utcnow()
        s.finished_at = None
        state.current_step = index
        change.step_event(
            "step:start",
            s,
            sdef,
            ts=now,
            status="running",
            attempt=attempt,
            task_id=task_id,
            worker=worker,
            meta=({"redelivered": True, "outage": True} if rerun else {"redelivered": True})
            if redelivered
            else None,
        )
        return None

    def _advance(
        self, change: Change, wf: Workflow, index: int, ctx: StepContext | None = None
    ) -> Next:
        """After step ``index`` is done: finish the run, or go on with the next step."""
        if change.state.current_step >= len(wf.steps):
            self._finish_run(change, RunStatus.COMPLETED)
            change.hook(
                "workflow_complete", ctx or self._context(wf, change.state, wf.steps[index], 0)
            )
            return DONE
        return Next(Action.CONTINUE, index + 1)

    def _attempt(
        self,
        wf: Workflow,
        change: Change,
        sdef: StepDef,
        attempt: int,
        task_id: str | None,
        worker: str | None,
        fuse: bool,
    ) -> tuple[Next, Change | None]:
        """Run the handler. Returns the next action and, when its success is not yet
        written (``fuse``), the change holding it; otherwise the outcome is stored."""
        state = change.state
        if sdef.is_commit:
            return self._commit_attempt(wf, change, sdef, attempt, task_id, worker), None
        started = utcnow()
        ctx = self._context(wf, state, sdef, attempt)
        try:
            value = self.engine.invoker.call(
                sdef.handler, ctx, timeout=self.timeout(sdef), what=f"step {sdef.name!r}"
            )
            nxt = self._apply_success(change, wf, sdef, ctx, value, started, task_id, worker)
        except Exception as exc:
            change.rebase()
            return self._attempt_failed(
                wf, change, sdef, attempt, exc, started, task_id, worker
            ), None
        if fuse and nxt.action is Action.CONTINUE:
            return nxt, change
        return (nxt if change.save() else STOP), None

    def _commit_attempt(
        self,
        wf: Workflow,
        change: Change,
        sdef: StepDef,
        attempt: int,
        task_id: str | None,
        worker: str | None,
    ) -> Next:
        """A commit step: its ``ctx.session`` writes and its completion commit together.

        A failure is recorded only after the transaction has rolled back, so the failure
        record never waits on the handler's own locks.
        """
        failure: BaseException | None = None
        landed = False
        started = utcnow()
        nxt = STOP
        with self.storage.transaction() as tx:
            ctx = self._context(wf, change.state, sdef, attempt, session=tx.session)
            try:
                value = self.engine.invoker.call(
                    sdef.handler, ctx, timeout=self.timeout(sdef), what=f"step {sdef.name!r}"
                )
                nxt = self._apply_success(change, wf, sdef, ctx, value, started, task_id, worker)
            except Exception as exc:
                failure = exc
            else:
                # Outside the ``except``: a database error while saving the completion is not
                # a step failure. It rolls the transaction back and propagates, so that the
                # task retries the attempt (see celery/tasks.py) from the stored state,
                # instead of recording a failure on top of the in-memory completed state
                # (which left the run's cursor past the step and the run stuck).
                landed = change.save(tx)
        if failure is not None:
            change.rebase()
            return self._attempt_failed(
                wf, change, sdef, attempt, failure, started, task_id, worker
            )
        if not landed:
            return STOP
        change.landed()
        return nxt

    def _apply_success(
        self,
        change: Change,
        wf: Workflow,
        sdef: StepDef,
        ctx: StepContext,
        value: Any,
        started: datetime,
        task_id: str | None,
        worker: str | None,
    ) -> Next:
        """Record a handler that returned; raises ``FluxError`` for data that cannot be
        stored (the attempt then fails, and the stored state stays as it was)."""
        state = change.state
        max_bytes = self.engine.max_payload_bytes
        data = roundtrip(ctx.data, what=f"ctx.data after step {sdef.name!r}", max_bytes=max_bytes)
        if not isinstance(data, dict):
            raise SerializationError(f"ctx.data must stay a dict, got {type(data).__name__}")
        waiting = isinstance(value, WaitFor)
        output = (
            None
            if waiting
            else roundtrip(value, what=f"output of step {sdef.name!r}", max_bytes=max_bytes)
        )
        s = change.step(sdef.index)
        now = utcnow()
        state.data = data
        if isinstance(value, WaitFor):
            s.status = StepStatus.SUSPENDED
            s.waiting_for = value.signal
            s.duration_ms = ms_between(started, now)
            s.wait_deadline = (now + timedelta(seconds=value.timeout)) if value.timeout else None
            state.status = RunStatus.SUSPENDED
            change.step_event(
                "step:suspend",
                s,
                status="suspended",
                attempt=ctx.attempt,
                task_id=task_id,
                worker=worker,
                meta={"signal": value.signal, "timeout": value.timeout},
            )
            return Next(Action.SUSPEND, sdef.index, wait_timeout=value.timeout)
        s.status = StepStatus.COMPLETED
        s.output = output
        s.error = None
        s.traceback = None
        s.finished_at = now
        s.duration_ms = ms_between(started, now)
        state.current_step = sdef.index + 1
        change.step_event(
            "step:complete",
            s,
            sdef,
            ts=now,
            status="completed",
            attempt=ctx.attempt,
            duration_ms=s.duration_ms,
            task_id=task_id,
            worker=worker,
        )
        change.hook("step_complete", sdef.name, ctx, output)
        return self._advance(change, wf, sdef.index, ctx)

    def _attempt_failed(
        self,
        wf: Workflow,
        change: Change,
        sdef: StepDef,
        attempt: int,
        exc: BaseException,
        started: datetime,
        task_id: str | None,
        worker: str | None,
    ) -> Next:
        """Store a failed attempt: a retry, or the step's failure."""
        max_attempts = self.max_attempts(sdef)
        err = self.error_text(exc, change.state)
        if should_retry(exc, attempt, max_attempts, sdef.retry_on, sdef.no_retry_on):
            delay = (sdef.backoff or self.engine.backoff).delay(attempt)
            failure = self.failure(exc, err, change.state)
            s = change.step(sdef.index)
            s.status = StepStatus.PENDING
            s.error = err
            s.traceback = failure.traceback
            s.duration_ms = ms_between(started, utcnow())
            change.step_event(
                "step:retry",
                s,
                sdef,
                status="pending",
                attempt=attempt,
                duration_ms=s.duration_ms,
                error=err,
                task_id=task_id,
                worker=worker,
                meta={"delay_s": delay, "next_attempt": attempt + 1},
            )
            nxt = Next(Action.RETRY, sdef.index, delay=delay, failure=failure)
            return nxt if change.save() else STOP
        nxt = self._apply_fail(change, wf, sdef, attempt, err, exc, task_id, worker, started)
        return nxt if change.save() else STOP

    def fail_step(
        self, change: Change, wf: Workflow, sdef: StepDef, attempt: int, err: str
    ) -> Next:
        """Fail a step for good from outside an attempt (an expired wait) and store it."""
        nxt = self._apply_fail(change, wf, sdef, attempt, err, None, None, None)
        return nxt if change.save() else STOP

    def _apply_fail(
        self,
        change: Change,
        wf: Workflow,
        sdef: StepDef,
        attempt: int,
        err: str,
        exc: BaseException | None,
        task_id: str | None,
        worker: str | None,
        started: datetime | None = None,
    ) -> Next:
        """The step failed for good: compensate earlier steps, or fail the run. The next
        action carries the failure, which a Celery task raises once it is stored."""
        state = change.state
        failure = self.failure(exc, err, state)
        s = change.step(sdef.index)
        now = utcnow()
        s.status = StepStatus.FAILED
        s.error = err
        s.traceback = failure.traceback
        s.finished_at = now
        s.wait_deadline = None
        if started is not None:
            s.duration_ms = ms_between(started, now)
        if state.status in (RunStatus.PENDING, RunStatus.SUSPENDED):
            state.status = RunStatus.RUNNING
        state.current_step = sdef.index
        state.error = err
        change.step_event(
            "step:error",
            s,
            sdef,
            status="failed",
            attempt=attempt or None,
            duration_ms=s.duration_ms,
            error=err,
            task_id=task_id,
            worker=worker,
        )
        plan = compensation_plan(wf.steps, [x.status for x in state.steps], sdef.index)
        error = exc or RuntimeError(err)
        ctx = self._context(wf, state, sdef, attempt) if self.engine.hooks else None
        change.hook("step_error", sdef.name, ctx, error)
        if plan:
            state.status = RunStatus.ROLLING_BACK
            change.event(
                "workflow:rollback_start",
                status="rolling_back",
                error=err,
                meta={"plan": [state.steps[i].name for i in plan]},
            )
            return Next(Action.COMPENSATE, plan[0], failure=failure)
        self._finish_run(change, RunStatus.FAILED, err)
        change.hook("workflow_error", ctx, error)
        return Next(Action.DONE, failure=failure)

    def _fail_unrunnable(self, state: RunState, exc: FluxError) -> Next:
        """The worker cannot run this run (unknown workflow, changed definition)."""
        change = Change(self, state)
        err = describe_error(exc)
        self._finish_run(change, RunStatus.FAILED, err)
        log.error("run %s cannot continue here: %s", state.id, exc)
        landed = change.save()
        return Next(Action.DONE, failure=self.failure(exc, err, state)) if landed else STOP

    # -- compensation ---------------------------------------------------------------------


def first_unfinished(state: RunState) -> int:
    for s in state.steps:
        if s.status not in DONE_STEP:
            return s.index
    return len(state.steps)


HookCall = Callable[..., Any]
