"""Run and step statuses and the transition table. Pure: no I/O."""

from __future__ import annotations

from enum import StrEnum

from .errors import InvalidTransition


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    SUSPENDED = "suspended"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


R = RunStatus
S = StepStatus

#: SPEC section 4, plus three edges it implies: a queued run can be cancelled or fail before
#: it starts, and ``retry`` of a run whose compensation failed goes back to ``rolling_back``.
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    R.PENDING: frozenset({R.RUNNING, R.CANCELLED, R.FAILED}),
    R.RUNNING: frozenset(
        {R.RUNNING, R.COMPLETED, R.SUSPENDED, R.ROLLING_BACK, R.FAILED, R.CANCELLED}
    ),
    R.SUSPENDED: frozenset({R.RUNNING, R.CANCELLED, R.ROLLING_BACK, R.FAILED}),
    R.ROLLING_BACK: frozenset({R.ROLLING_BACK, R.ROLLED_BACK, R.FAILED, R.CANCELLED}),
    R.FAILED: frozenset({R.RUNNING, R.ROLLING_BACK}),
    R.ROLLED_BACK: frozenset({R.RUNNING}),
    R.COMPLETED: frozenset(),
    R.CANCELLED: frozenset(),
}

STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.SKIPPED, S.FAILED}),
    # running -> running: a redelivered task counts a new attempt; -> pending: waiting to retry.
    S.RUNNING: frozenset({S.RUNNING, S.PENDING, S.COMPLETED, S.FAILED, S.SUSPENDED}),
    S.SUSPENDED: frozenset({S.COMPLETED, S.FAILED, S.PENDING}),
    S.COMPLETED: frozenset({S.COMPENSATING, S.PENDING}),
    # A rollback retried from an earlier step resets undone steps; a commit whose undo failed
    # stays done (its effect landed), so compensation_failed -> completed.
    S.COMPENSATING: frozenset(
        {S.COMPENSATING, S.COMPENSATED, S.COMPENSATION_FAILED, S.PENDING, S.COMPLETED}
    ),
    S.COMPENSATION_FAILED: frozenset({S.COMPENSATING, S.PENDING, S.COMPLETED}),
    S.COMPENSATED: frozenset({S.PENDING}),
    S.FAILED: frozenset({S.PENDING}),
    S.SKIPPED: frozenset({S.PENDING}),
}

# Status groups, named once: code, SQL filters and UIs use these, never a list of their own.
TERMINAL_RUN = frozenset({R.COMPLETED, R.FAILED, R.ROLLED_BACK, R.CANCELLED})
#: States in which a run stops moving on its own (``RunHandle.get`` returns on these).
SETTLED_RUN = TERMINAL_RUN | {R.SUSPENDED}
#: Runs a task or process is carrying forward (``recover`` looks here for stuck ones).
MOVING_RUN = frozenset({R.PENDING, R.RUNNING, R.ROLLING_BACK})
#: Runs not finished: moving, or waiting for a signal.
ACTIVE_RUN = MOVING_RUN | {R.SUSPENDED}
#: Runs a step task may work on.
STEPPING_RUN = frozenset({R.PENDING, R.RUNNING})
#: Runs ``cancel`` stops.
CANCELLABLE_RUN = frozenset({R.PENDING, R.RUNNING, R.SUSPENDED})
#: Runs ``retry`` re-runs.
RETRYABLE_RUN = frozenset({R.FAILED, R.ROLLED_BACK})
#: Runs that ended without completing.
UNSUCCESSFUL_RUN = frozenset({R.FAILED, R.ROLLED_BACK, R.CANCELLED})

DONE_STEP = frozenset({S.COMPLETED, S.SKIPPED})
#: Steps whose effect is there to undo: a saga compensates these.
COMPENSABLE_STEP = frozenset({S.COMPLETED, S.COMPENSATING, S.COMPENSATION_FAILED})
#: Steps whose compensation has not succeeded yet (``retry`` of a failed rollback).
UNCOMPENSATED_STEP = frozenset({S.COMPENSATING, S.COMPENSATION_FAILED})


def values(group: frozenset[RunStatus] | frozenset[StepStatus]) -> tuple[str, ...]:
    """A group's status values, in table order (for SQL filters and JSON)."""
    members: list[StrEnum] = list(type(next(iter(group)))) if group else []
    return tuple(s.value for s in members if s in group)


def can_transition_run(current: RunStatus, target: RunStatus) -> bool:
    return target in RUN_TRANSITIONS[current]


def check_run_change(before: RunStatus, after: RunStatus) -> None:
    """Validate one change of a run's status: an edge of the table, or no change. Strict: a
    write that passes through ``running`` (a run that starts and skips its only step) is two
    transitions, each checked when it is made (core/transitions.py)."""
    if after == before or after in RUN_TRANSITIONS[before]:
        return
    raise InvalidTransition(before.value, after.value, what="run")


def check_run_transition(current: RunStatus, target: RunStatus) -> None:
    if target not in RUN_TRANSITIONS[current]:
        raise InvalidTransition(current.value, target.value, what="run")


def check_step_transition(current: StepStatus, target: StepStatus, step: str = "") -> None:
    if target not in STEP_TRANSITIONS[current]:
        raise InvalidTransition(
            current.value, target.value, what="step", detail=f"step {step!r}" if step else ""
        )
