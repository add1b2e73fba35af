"""Deciding a waiting approval step (SPEC section 16): ``engine.approve`` / ``reject``.

Approving delivers the decision as the step's output (the run goes on); rejecting fails the
step for good (the saga rolls back). Who may decide is checked first: anyone outside the
step's approvers gets ``NotAllowed`` and nothing is written.
"""

from __future__ import annotations

from ..core import transitions as t
from ..core.approvals import decision, resolve_approvers
from ..core.builder import Workflow
from ..core.errors import ConcurrentUpdate, NotAllowed, Rejected, describe_error
from ..core.jsoncodec import Redactor
from ..core.records import RunState
from ..core.states import RunStatus
from .change import DONE, STOP, Action, Next
from .runtime import Runtime
from .steps import StepRunner


class Decisions:
    """Records a person's decision on a suspended approval step."""

    def __init__(self, rt: Runtime, runner: StepRunner, redact: Redactor) -> None:
        self.rt = rt
        self.runner = runner
        self.redact = redact

    def check_allowed(self, wf: Workflow, state: RunState, index: int, by: str) -> None:
        sdef = wf.steps[index]
        ctx = self.rt.context(wf, state, sdef, state.steps[index].attempts)
        try:
            names = resolve_approvers(sdef.approvers, ctx)
        except Exception as exc:  # a bug in the user's callable: nobody may decide now
            raise NotAllowed(
                f"the approvers of step {sdef.name!r} could not be listed "
                f"({describe_error(exc)}); nothing changed"
            ) from exc
        if names is not None and by not in names:
            raise NotAllowed(
                f"{by!r} may not decide approval step {sdef.name!r} of run {state.id}; "
                f"approvers: {', '.join(names) or '(none)'}"
            )

    def approve(
        self, wf: Workflow, state: RunState, index: int, by: str, comment: str | None
    ) -> Next:
        """Store the approval; the next action (the step after it, or done)."""
        step = state.steps[index]
        now = self.rt.clock()
        verdict = decision("approved", by, comment, now)
        change = self.rt.change(state)
        change.apply(t.decide_approval(state, index, verdict, at=now))
        signal = step.waiting_for or ""
        change.apply(t.deliver_signal(state, index, signal, verdict, self.redact(verdict), now))
        nxt: Next = Next(Action.CONTINUE, index + 1)
        if state.current_step >= len(wf.steps):
            change.apply(t.finish_run(state, RunStatus.COMPLETED, self.rt.clock()))
            nxt = DONE
        if not change.save():
            raise ConcurrentUpdate(f"Run {state.id} was changed concurrently; approval not applied")
        return nxt

    def reject(self, wf: Workflow, state: RunState, index: int, by: str, reason: str) -> Next:
        """Fail the step for good with ``Rejected: <reason>``; the run's failure path next."""
        step = state.steps[index]
        now = self.rt.clock()
        verdict = decision("rejected", by, reason, now)
        change = self.rt.change(state)
        change.apply(t.decide_approval(state, index, verdict, reason=reason, at=now))
        err = describe_error(Rejected(reason))
        nxt = self.runner.fail_step(change, wf, wf.steps[index], step.attempts, err)
        if nxt is STOP:
            raise ConcurrentUpdate(
                f"Run {state.id} was changed concurrently; rejection not applied"
            )
        return nxt
