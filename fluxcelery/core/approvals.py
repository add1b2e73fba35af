"""Approval steps (SPEC section 16): a policy decides at once or asks a person.

An approval step is an ordinary step whose handler is built here: it calls the policy, and
``"ask"`` suspends the run on a signal only ``engine.approve`` / ``engine.reject`` may send
(the engine checks the approvers first). Keeping it a step means retries, timeouts,
compensation, Celery tasks and every UI treat it like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from .errors import NonRetryableError, Rejected
from .waits import WaitFor, wait_for

if TYPE_CHECKING:
    from .context import StepContext

PolicyChoice = Literal["auto", "ask", "deny"]
Policy = Callable[["StepContext"], str]
Approvers = tuple[str, ...] | Callable[["StepContext"], Iterable[str]]

POLICY_CHOICES: tuple[str, ...] = ("auto", "ask", "deny")
#: The ``by`` of a decision the policy took.
BY_POLICY = "policy"
#: Where the signal an approval waits for starts: ``engine.signal`` refuses it (only
#: ``approve``/``reject`` decide, after checking the approvers).
SIGNAL_PREFIX = "approval:"


def approval_signal(step: str) -> str:
    return SIGNAL_PREFIX + step


def decision(
    verdict: Literal["approved", "rejected"], by: str, comment: str | None, at: datetime
) -> dict[str, Any]:
    """What ``ctx.results[step]`` holds once the approval is decided."""
    return {"decision": verdict, "by": by, "comment": comment, "at": at.isoformat()}


def check_approval_options(
    policy: Any, approvers: Any, timeout: Any, compensate: Any, problems: list[str]
) -> Approvers | None:
    """Add what is wrong with ``.approval``'s options to ``problems``; the approvers as
    stored (a tuple of names, a callable, or None: anyone)."""
    if policy is not None and not callable(policy):
        problems.append(f"policy must be callable(ctx) -> 'auto'|'ask'|'deny', got {policy!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        problems.append(f"timeout must be seconds > 0 or None, got {timeout!r}")
    if compensate is not None and not callable(compensate):
        problems.append(f"compensate must be callable(ctx), got {compensate!r}")
    if approvers is None or callable(approvers):
        return approvers
    if isinstance(approvers, str):
        approvers = [approvers]
    names = tuple(approvers) if isinstance(approvers, (list, tuple, set, frozenset)) else None
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        problems.append(
            f"approvers must be a non-empty list of names or callable(ctx) -> names, "
            f"got {approvers!r}"
        )
        return None
    return tuple(sorted(names)) if isinstance(approvers, (set, frozenset)) else names


def approval_handler(
    step: str, policy: Policy | None, timeout: float | None
) -> Callable[[StepContext], Any]:
    """The handler of an approval step: the decision of ``policy`` (default ``"ask"``)."""

    def approve_or_ask(ctx: StepContext) -> dict[str, Any] | WaitFor:
        choice = "ask" if policy is None else policy(ctx)
        if choice == "auto":
            return decision("approved", BY_POLICY, None, datetime.now(UTC))
        if choice == "deny":
            denied = decision("rejected", BY_POLICY, "denied by policy", datetime.now(UTC))
            raise Rejected("denied by policy", denied)
        if choice == "ask":
            return wait_for(approval_signal(step), timeout)
        raise NonRetryableError(
            f"the policy of approval step {step!r} returned {choice!r}; "
            f"expected one of {', '.join(POLICY_CHOICES)}"
        )

    approve_or_ask.__qualname__ = f"approval[{step}]"
    return approve_or_ask


def resolve_approvers(approvers: Approvers | None, ctx: StepContext) -> list[str] | None:
    """The names who may decide (None: anyone)."""
    if approvers is None:
        return None
    if callable(approvers):
        names = approvers(ctx)
        if isinstance(names, str):
            return [names]
        return [n for n in names if isinstance(n, str)]
    return list(approvers)


def check_decider(by: Any, what: str) -> str:
    if not isinstance(by, str) or not by.strip() or len(by) > 200:
        raise ValueError(f"{what}: 'by' must name who decides (a non-empty string), got {by!r}")
    return by.strip()


def describe_approvers(approvers: Approvers | None) -> list[str] | str | None:
    if approvers is None or not callable(approvers):
        return None if approvers is None else list(approvers)
    return getattr(approvers, "__qualname__", "callable")
