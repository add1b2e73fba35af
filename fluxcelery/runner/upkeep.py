"""Upkeep: what keeps runs moving when no task is carrying them. Waits whose deadline
passed are failed, and runs whose worker or process died are continued (``recover``, from
cron or a beat schedule; ``flux.wait_timeout`` on workers)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .change import Action, Change
from .errors import FluxError, StepTimeout, describe_error
from .records import RunState, utcnow
from .states import RunStatus, StepStatus

if TYPE_CHECKING:
    from .engine import FluxEngine

log = logging.getLogger("fluxcelery.engine")


class Upkeep:
    def __init__(self, engine: FluxEngine) -> None:
        self.engine = engine

    def expire_wait(self, run_id: str, index: int, now: datetime | None = None) -> bool:
        """Fail a suspended step whose wait deadline has passed; True if it did."""
        state = self.engine.storage.load_run(run_id)
        if state is None or state.status != RunStatus.SUSPENDED:
            return False
        step = state.steps[index] if 0 <= index < len(state.steps) else None
        now = now or utcnow()
        if (
            step is None
            or step.status != StepStatus.SUSPENDED
            or step.wait_deadline is None
            or step.wait_deadline > now + timedelta(seconds=0.05)
        ):
            return False
        wf = self.engine.workflow_for(state)
        sdef = wf.steps[index]
        err = describe_error(
            StepTimeout(
                f"no signal {step.waiting_for!r} within the wait timeout of step {sdef.name!r}"
            )
        )
        nxt = self.engine.runner.fail_step(
            Change(self.engine.runner, state), wf, sdef, step.attempts, err
        )
        if nxt.action is Action.STOP:
            return False
        self.engine._continue(state, nxt)
        return True

    def wait_remaining(self, run_id: str, index: int) -> float | None:
        """Seconds until the wait of step ``index`` times out; None when it is not waiting
        (signalled, cancelled, or without a timeout)."""
        state = self.engine.storage.load_run(run_id)
        if state is None or state.status != RunStatus.SUSPENDED:
            return None
        step = state.steps[index] if 0 <= index < len(state.steps) else None
        if step is None or step.status != StepStatus.SUSPENDED or step.wait_deadline is None:
            return None
        return max(0.0, (step.wait_deadline - utcnow()).total_seconds())

    def recover(self, older_than: float | None = None, *, limit: int = 100) -> list[str]:
        """Continue runs stuck mid-way (a worker or process died) and expire overdue waits.

        A run counts as stuck when it has not been updated for longer than its current step's
        timeout plus a grace period (or ``older_than`` seconds, when given).
        """
        now = utcnow()
        acted: list[str] = []
        for state in self.engine.storage.expired_waits(now, limit=limit):
            if self.expire_wait(state.id, state.current_step, now):
                acted.append(state.id)
        threshold = older_than if older_than is not None else 60.0
        live = self._live_task_ids()
        for state in self.engine.storage.stale_runs(
            now - timedelta(seconds=threshold), limit=limit
        ):
            if older_than is None and not self._overdue(state, now):
                continue
            step = (
                state.steps[state.current_step] if state.current_step < len(state.steps) else None
            )
            if step is not None and step.task_id and step.task_id in live:
                continue
            try:
                self.engine.workflow_for(state)
            except FluxError as exc:
                log.warning("recover: run %s skipped: %s", state.id, exc)
                continue
            self.engine._continue(state, self.engine._resume_point(state))
            acted.append(state.id)
        return acted

    def _overdue(self, state: RunState, now: datetime) -> bool:
        try:
            wf = self.engine.workflow(state.workflow)
        except FluxError:
            return False
        idx = min(state.current_step, len(wf.steps) - 1)
        timeout = self.engine.runner.timeout(wf.steps[idx])
        if timeout is None:
            return False
        backoff = wf.steps[idx].backoff or self.engine.backoff
        grace = timeout + backoff.max + 30.0
        return (now - state.updated_at).total_seconds() > grace

    def _live_task_ids(self) -> set[str]:
        if self.engine._dispatcher is None:
            return set()
        return self.engine._dispatcher.live_task_ids()
