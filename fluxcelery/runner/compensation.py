"""Saga compensation: undoes completed steps in reverse order, one compensator at a time.

Each compensator runs like a step attempt: a guarded write marks it ``compensating``, its
outcome is a second write, a failure is retried with the step's policy and, once out of
attempts, recorded (``compensation_failed``) while the rollback goes on with the next step.
A commit step's compensator writes through ``ctx.session`` in the same transaction as its
``compensated`` record.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .builder import StepDef, Workflow
from .change import DONE, STOP, Action, Change, Next
from .context import StepContext
from .errors import FluxError
from .policy import compensation_plan, should_retry
from .records import RunState, ms_between, utcnow
from .states import RunStatus, StepStatus

if TYPE_CHECKING:
    from .runner import StepRunner


class Compensation:
    """The rollback half of ``StepRunner`` (which owns one)."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner

    def run(
        self,
        run_id: str,
        index: int,
        *,
        task_id: str | None = None,
        worker: str | None = None,
        state: RunState | None = None,
    ) -> Next:
        if state is None:
            state = self.runner.storage.load_run(run_id)
        if state is None or state.status != RunStatus.ROLLING_BACK:
            return STOP
        try:
            wf = self.runner.engine.workflow_for(state)
        except FluxError as exc:
            return self.runner._fail_unrunnable(state, exc)
        if not 0 <= index < len(wf.steps):
            return STOP
        sdef = wf.steps[index]
        step = state.steps[index]
        eligible = (StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED)
        change = Change(self.runner, state)
        if sdef.compensate is None or step.status not in eligible:
            return self._next_compensation(change, wf, index)

        s = change.step(index)
        s.status = StepStatus.COMPENSATING
        s.compensation_attempts += 1
        attempt = s.compensation_attempts
        if not change.save():
            return STOP
        started = utcnow()
        if sdef.is_commit:
            return self._commit_compensation(wf, change, sdef, attempt, started, task_id, worker)
        ctx = self.runner._context(wf, state, sdef, attempt)
        try:
            self._call_compensator(sdef, ctx)
        except Exception as exc:
            return self._compensation_failed(
                wf, change, sdef, attempt, exc, started, task_id, worker
            )
        self._apply_compensated(change, sdef, attempt, started, task_id, worker)
        return self._next_compensation(change, wf, index)

    def _call_compensator(self, sdef: StepDef, ctx: StepContext) -> None:
        assert sdef.compensate is not None
        self.runner.engine.invoker.call(
            sdef.compensate,
            ctx,
            timeout=self.runner.timeout(sdef),
            what=f"compensation of step {sdef.name!r}",
        )

    def _commit_compensation(
        self,
        wf: Workflow,
        change: Change,
        sdef: StepDef,
        attempt: int,
        started: datetime,
        task_id: str | None,
        worker: str | None,
    ) -> Next:
        """Undo a commit step: its ``ctx.session`` writes commit together with the
        ``compensated`` record, exactly like the step's own writes did."""
        failure: BaseException | None = None
        nxt = STOP
        with self.runner.storage.transaction() as tx:
            ctx = self.runner._context(wf, change.state, sdef, attempt, session=tx.session)
            try:
                self._call_compensator(sdef, ctx)
            except Exception as exc:
                failure = exc
            else:
                self._apply_compensated(change, sdef, attempt, started, task_id, worker)
                nxt = self._next_compensation(change, wf, sdef.index, tx=tx)
        if failure is not None:
            return self._compensation_failed(
                wf, change, sdef, attempt, failure, started, task_id, worker
            )
        if nxt.action is not Action.STOP:
            change.landed()
        return nxt

    def _apply_compensated(
        self,
        change: Change,
        sdef: StepDef,
        attempt: int,
        started: datetime,
        task_id: str | None,
        worker: str | None,
    ) -> None:
        s = change.step(sdef.index)
        s.status = StepStatus.COMPENSATED
        s.error = None
        s.traceback = None
        # finished_at/duration_ms keep describing the forward run; the undo is in the trace.
        change.step_event(
            "step:compensate",
            s,
            sdef,
            status="compensated",
            attempt=attempt,
            duration_ms=ms_between(started, utcnow()),
            task_id=task_id,
            worker=worker,
        )

    def _compensation_failed(
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
        s = change.step(sdef.index)
        err = self.runner.error_text(exc, change.state)
        failure = self.runner.failure(exc, err, change.state)
        s.traceback = failure.traceback
        retry = should_retry(exc, attempt, self.runner.max_attempts(sdef))
        delay = (sdef.backoff or self.runner.engine.backoff).delay(attempt) if retry else 0.0
        change.step_event(
            "step:compensate_error",
            s,
            sdef,
            status="compensating" if retry else "compensation_failed",
            attempt=attempt,
            error=err,
            task_id=task_id,
            worker=worker,
            duration_ms=ms_between(started, utcnow()),
            meta={"will_retry": retry, "delay_s": delay},
        )
        if retry:
            nxt = Next(Action.RETRY, sdef.index, delay=delay, phase="compensate", failure=failure)
            return nxt if change.save() else STOP
        s.status = StepStatus.COMPENSATION_FAILED
        s.error = f"compensation failed: {err}"
        nxt = self._next_compensation(change, wf, sdef.index)
        return nxt if nxt.action is Action.STOP else replace(nxt, failure=failure)

    def _next_compensation(self, change: Change, wf: Workflow, index: int, tx: Any = None) -> Next:
        state = change.state
        plan = compensation_plan(wf.steps, [x.status for x in state.steps], index)
        if plan:
            return Next(Action.COMPENSATE, plan[0]) if change.save(tx) else STOP
        failed = [s.name for s in state.steps if s.status == StepStatus.COMPENSATION_FAILED]
        # The failed step keeps the error that started the rollback (state.error may already
        # describe an earlier, retried compensation failure).
        original = next(
            (s.error for s in state.steps if s.status == StepStatus.FAILED and s.error),
            state.error,
        )
        if failed:
            names = ", ".join(repr(n) for n in failed)
            err = (
                f"CompensationError: compensation failed at step {names}; "
                f"original error: {original}"
            )
            self.runner._finish_run(change, RunStatus.FAILED, err)
        else:
            change.event("workflow:rollback_complete", status="rolled_back")
            self.runner._finish_run(change, RunStatus.ROLLED_BACK, original)
        if self.runner.engine.hooks:
            ctx = self.runner._context(wf, state, wf.steps[index], 0)
            change.hook("workflow_error", ctx, RuntimeError(state.error or "rolled back"))
        return DONE if change.save(tx) else STOP
