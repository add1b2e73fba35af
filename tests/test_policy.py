"""Pure decisions, table-driven, no sleeping."""

from __future__ import annotations

import random
from typing import Any

import pytest

from fluxcelery import (
    Backoff,
    DefinitionError,
    NonRetryableError,
    RunState,
    RunStatus,
    StepState,
    StepStatus,
    branch,
    workflow,
)
from fluxcelery.core.errors import PayloadTooLarge, SerializationError
from fluxcelery.core.policy import rollback_plan, should_retry


@pytest.mark.parametrize(
    ("backoff", "failures", "expected"),
    [
        (Backoff(jitter=False), 1, 1.0),
        (Backoff(jitter=False), 2, 2.0),
        (Backoff(jitter=False), 3, 4.0),
        (Backoff(jitter=False), 10, 60.0),
        (Backoff(base=0.5, factor=3, max=10, jitter=False), 3, 4.5),
        (Backoff(base=0.5, factor=3, max=10, jitter=False), 4, 10.0),
        (Backoff(base=0, factor=1, max=0, jitter=False), 5, 0.0),
        (Backoff(jitter=False), 0, 0.0),
    ],
)
def test_backoff_delay(backoff: Backoff, failures: int, expected: float) -> None:
    assert backoff.delay(failures) == expected


def test_jitter_stays_between_half_and_full_delay() -> None:
    rng = random.Random(7)
    draws = [Backoff(base=2, factor=2, max=60).delay(3, rng) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in draws)
    assert len(set(draws)) > 50  # actually spread out, not lockstep


@pytest.mark.parametrize("bad", [{"base": -1}, {"factor": 0.5}, {"max": "x"}])
def test_backoff_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(DefinitionError, match="Backoff"):
        Backoff(**bad)


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "attempt", "max_attempts", "retry_on", "no_retry_on", "expected"),
    [
        (RuntimeError("x"), 1, 3, None, (), True),
        (RuntimeError("x"), 3, 3, None, (), False),
        (NonRetryableError("x"), 1, 3, None, (), False),
        (SerializationError("x"), 1, 3, None, (), False),
        (PayloadTooLarge("x"), 1, 3, None, (), False),
        (Transient(), 1, 3, (Transient,), (), True),
        (Fatal(), 1, 3, (Transient,), (), False),
        (Fatal(), 1, 3, None, (Fatal,), False),
    ],
)
def test_should_retry(exc, attempt, max_attempts, retry_on, no_retry_on, expected) -> None:
    assert should_retry(exc, attempt, max_attempts, retry_on, no_retry_on) is expected


def _state(wf: Any, statuses: list[StepStatus], extra: list[StepState] = ()) -> RunState:
    steps = [
        StepState(name=d.name, index=d.index, kind=d.kind, branch=d.branch, parent=d.parent)
        for d in wf.steps
    ]
    for step, status in zip(steps, statuses, strict=True):
        step.status = status
    return RunState(
        id="r",
        workflow=wf.name,
        status=RunStatus.RUNNING,
        input={},
        data={},
        steps=[*steps, *extra],
    )


def test_rollback_plan_is_strict_reverse_of_completed_compensable_steps() -> None:
    wf = (
        workflow("policy-plan")
        .step("a", lambda c: None, compensate=lambda c: None)
        .step("b", lambda c: None)
        .step("c", lambda c: None, compensate=lambda c: None)
        .step("d", lambda c: None, compensate=lambda c: None)
        .step("e", lambda c: None)
    )
    S = StepStatus
    state = _state(wf, [S.COMPLETED, S.COMPLETED, S.COMPLETED, S.SKIPPED, S.FAILED])
    assert rollback_plan(wf, state, 4) == [2, 0]
    # Resuming a rollback: steps already compensated are left alone, failed ones retried.
    state = _state(wf, [S.COMPENSATION_FAILED, S.COMPLETED, S.COMPENSATED, S.SKIPPED, S.FAILED])
    assert rollback_plan(wf, state, 4) == [0]
    assert rollback_plan(wf, state, 0) == []
    assert rollback_plan(wf, state, None) == [0]  # a cancel: every completed step


def test_rollback_plan_of_a_group_undoes_its_branches_and_items_then_earlier_steps() -> None:
    undo = lambda c: None  # noqa: E731
    wf = (
        workflow("policy-plan-groups")
        .step("a", len, compensate=undo)  # 0
        .parallel(  # 1
            "p",
            branch("x").step("x1", len, compensate=undo).step("x2", len, compensate=undo),  # 2, 3
            branch("y").step("y1", len, compensate=undo),  # 4
        )
        .for_each("e", len, items=lambda c: [], compensate=undo)  # 5
        .step("z", len, compensate=undo)  # 6
    )
    S = StepStatus
    done = S.COMPLETED
    # The for_each's items are rows added at fan-out (indexes 7, 8, 9).
    items = [
        StepState(name="e", index=7 + k, item=k, parent=5, status=st)
        for k, st in enumerate([done, S.FAILED, done])
    ]
    state = _state(wf, [done, done, done, done, done, S.FAILED, S.PENDING], items)
    # An item failed: the group's completed items (latest first), then earlier steps, each
    # branch latest first and in reverse order within it.
    assert rollback_plan(wf, state, 8) == [9, 7, 4, 3, 2, 0]
    assert rollback_plan(wf, state, 5) == [9, 7, 4, 3, 2, 0]  # the group step itself
    # Going on after compensating row 3: the rows before it.
    assert rollback_plan(wf, state, 3, after=True) == [2, 0]
    # A failed branch step of the parallel: its group and earlier, not the later for_each.
    state = _state(wf, [done, S.FAILED, done, S.FAILED, done, S.PENDING, S.PENDING])
    assert rollback_plan(wf, state, 3) == [4, 2, 0]
