"""Upkeep: what keeps runs moving when no task is carrying them. Waits whose deadline
passed are failed, and runs whose worker or process died are continued (``recover``, from
cron or a beat schedule; ``flux.wait_timeout`` on workers)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from ..core.errors import FluxError, StepTimeout, describe_error
from ..core.records import RunState
from ..core.states import RunStatus, StepStatus
from .change import Action, Next
from .fanout import in_flight
from .runtime import Runtime
from .steps import StepRunner, resume_point

log = logging.getLogger("fluxcelery.engine")


class Upkeep:
    """``carry_on(state, next)`` continues a run where it runs (the engine's: a dispatch to
    Celery, or in this process); ``live_task_ids()`` names the tasks workers hold."""

    def __init__(
        self,
        rt: Runtime,
        runner: StepRunner,
        carry_on: Callable[[RunState, Next], None],
        live_task_ids: Callable[[], set[str] | None],
    ) -> None:
        self.rt = rt
        self.runner = runner
        self.carry_on = carry_on
        self.live_task_ids = live_task_ids

    def expire_wait(self, run_id: str, index: int, now: datetime | None = None) -> bool:
        """Fail a suspended step whose wait deadline has passed; True if it did."""
        state = self.rt.storage.load_run(run_id)
        if state is None or state.status != RunStatus.SUSPENDED:
            return False
        step = state.steps[index] if 0 <= index < len(state.steps) else None
        now = now or self.rt.clock()
        if (
            step is None
            or step.status != StepStatus.SUSPENDED
            or step.wait_deadline is None
            or step.wait_deadline > now + timedelta(seconds=0.05)
        ):
            return False
        wf = self.rt.catalog.for_run(state)
        sdef = wf.steps[index]
        waited = (
            f"no decision on approval step {sdef.name!r} within its timeout"
            if sdef.kind == "approval"
            else f"no signal {step.waiting_for!r} within the wait timeout of step {sdef.name!r}"
        )
        err = describe_error(StepTimeout(waited))
        nxt = self.runner.fail_step(self.rt.change(state), wf, sdef, step.attempts, err)
        if nxt.action is Action.STOP:
            return False
        self.carry_on(state, nxt)
        return True

    def wait_remaining(self, run_id: str, index: int) -> float | None:
        """Seconds until the wait of step ``index`` times out; None when it is not waiting
        (signalled, cancelled, or without a timeout)."""
        state = self.rt.storage.load_run(run_id)
        if state is None or state.status != RunStatus.SUSPENDED:
            return None
        step = state.steps[index] if 0 <= index < len(state.steps) else None
        if step is None or step.status != StepStatus.SUSPENDED or step.wait_deadline is None:
            return None
        return max(0.0, (step.wait_deadline - self.rt.clock()).total_seconds())

    def recover(self, older_than: float | None = None, *, limit: int = 100) -> list[str]:
        """Continue runs stuck mid-way (a worker or process died) and expire overdue waits.

        A run counts as stuck when it has not been updated for longer than its current step's
        timeout plus a grace period (or ``older_than`` seconds, when given).
        """
        now = self.rt.clock()
        acted: list[str] = []
        for state in self.rt.storage.expired_waits(now, limit=limit):
            if self.expire_wait(state.id, state.current_step, now):
                acted.append(state.id)
        threshold = older_than if older_than is not None else 60.0
        live: set[str] | None = None
        asked = False
        for state in self.rt.storage.stale_runs(now - timedelta(seconds=threshold), limit=limit):
            if older_than is None and not self._overdue(state, now):
                continue
            step = (
                state.steps[state.current_step] if state.current_step < len(state.steps) else None
            )
            if step is not None and step.task_id and state.executor == "celery":
                if not asked:  # asked once, and only when a run may be on a worker
                    live, asked = self.live_task_ids(), True
                if live is None:
                    log.warning(
                        "recover: run %s skipped: the workers could not be asked which "
                        "tasks they hold",
                        state.id,
                    )
                    continue
                ids = {step.task_id} | {r.task_id for r in in_flight(state, step.index)}
                if ids & live:
                    continue  # running on a live worker (a group: any of its rows): not stuck
            try:
                wf = self.rt.catalog.for_run(state)
            except FluxError as exc:
                log.warning("recover: run %s skipped: %s", state.id, exc)
                continue
            self.carry_on(state, resume_point(state, wf))
            acted.append(state.id)
        return acted

    def _overdue(self, state: RunState, now: datetime) -> bool:
        try:
            wf = self.rt.catalog.get(state.workflow)
        except FluxError:
            return False
        idx = min(state.current_step, len(wf.steps) - 1)
        timeout = self.rt.defaults.timeout_of(wf.steps[idx])
        if timeout is None:
            return False
        backoff = self.rt.defaults.backoff_of(wf.steps[idx])
        grace = timeout + backoff.max + 30.0
        return (now - state.updated_at).total_seconds() > grace
