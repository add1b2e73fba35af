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
from typing import Any

from ..core import transitions as t
from ..core.builder import StepDef, Workflow
from ..core.context import StepContext
from ..core.errors import FluxError
from ..core.policy import rollback_plan, should_retry
from ..core.records import RunState, ms_between
from ..core.states import COMPENSABLE_STEP, RunStatus
from .change import DONE, STOP, Action, Change, Next
from .runtime import Runtime


class Compensation:
    """The rollback half of ``StepRunner`` (which owns one), with the same ``Runtime``."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

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
            state = self.rt.storage.load_run(run_id)
        if state is None or state.status != RunStatus.ROLLING_BACK:
            return STOP
        try:
            wf = self.rt.catalog.for_run(state)
        except FluxError as exc:
            return self.rt.fail_unrunnable(state, exc)
        if not 0 <= index < len(state.steps):
            return STOP
        sdef = wf.row_def(state, index)
        step = state.steps[index]
        change = self.rt.change(state)
        if sdef.compensate is None or step.status not in COMPENSABLE_STEP:
            return self._next_compensation(change, wf, index)

        change.apply(t.begin_compensation(state, index))
        attempt = state.steps[index].compensation_attempts
        if not change.save():
            return STOP
        started = self.rt.clock()
        if sdef.is_commit:
            return self._commit_compensation(wf, change, sdef, attempt, started, task_id, worker)
        ctx = self.rt.context(wf, state, sdef, attempt)
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
        self.rt.invoker.call(
            sdef.compensate,
            ctx,
            timeout=self.rt.defaults.timeout_of(sdef),
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
        with self.rt.storage.transaction() as tx:
            ctx = self.rt.context(wf, change.state, sdef, attempt, session=tx.session)
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
        now = self.rt.clock()
        change.apply(
            t.compensate_step(
                change.state,
                sdef.index,
                attempt=attempt,
                max_attempts=self.rt.defaults.max_attempts(sdef),
                duration_ms=ms_between(started, now),
                task_id=task_id,
                worker=worker,
                at=now,
            )
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
        err = self.rt.error_text(exc, change.state)
        failure = self.rt.failure(exc, err, change.state)
        max_attempts = self.rt.defaults.max_attempts(sdef)
        retry = should_retry(exc, attempt, max_attempts)
        delay = self.rt.defaults.backoff_of(sdef).delay(attempt) if retry else 0.0
        now = self.rt.clock()
        change.apply(
            t.fail_compensation(
                change.state,
                sdef.index,
                err,
                failure.traceback,
                retry=retry,
                delay=delay,
                attempt=attempt,
                max_attempts=max_attempts,
                duration_ms=ms_between(started, now),
                task_id=task_id,
                worker=worker,
                at=now,
            )
        )
        if retry:
            nxt = Next(Action.RETRY, sdef.index, delay=delay, phase="compensate", failure=failure)
            return nxt if change.save() else STOP
        nxt = self._next_compensation(change, wf, sdef.index)
        return nxt if nxt.action is Action.STOP else replace(nxt, failure=failure)

    def _next_compensation(self, change: Change, wf: Workflow, index: int, tx: Any = None) -> Next:
        state = change.state
        plan = rollback_plan(wf, state, index, after=True)
        if plan:
            return Next(Action.COMPENSATE, plan[0]) if change.save(tx) else STOP
        change.apply(t.finish_rollback(state, self.rt.clock()))
        if self.rt.notifier.hooks:
            ctx = self.rt.context(wf, state, wf.row_def(state, index), 0)
            change.hook("workflow_error", ctx, RuntimeError(state.error or "rolled back"))
        return DONE if change.save(tx) else STOP
