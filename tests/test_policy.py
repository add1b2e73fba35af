"""Pure decisions, table-driven, no sleeping."""

from __future__ import annotations

import random

import pytest

from fluxcelery import Backoff, DefinitionError, NonRetryableError, StepStatus, workflow
from fluxcelery.core.errors import PayloadTooLarge, SerializationError
from fluxcelery.core.policy import compensation_plan, should_retry


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


def test_compensation_plan_is_strict_reverse_of_completed_compensable_steps() -> None:
    wf = (
        workflow("policy-plan")
        .step("a", lambda c: None, compensate=lambda c: None)
        .step("b", lambda c: None)
        .step("c", lambda c: None, compensate=lambda c: None)
        .step("d", lambda c: None, compensate=lambda c: None)
        .step("e", lambda c: None)
    )
    S = StepStatus
    statuses = [S.COMPLETED, S.COMPLETED, S.COMPLETED, S.SKIPPED, S.FAILED]
    assert compensation_plan(wf.steps, statuses, 4) == [2, 0]
    # Resuming a rollback: steps already compensated are left alone, failed ones retried.
    statuses = [S.COMPENSATION_FAILED, S.COMPLETED, S.COMPENSATED, S.SKIPPED, S.FAILED]
    assert compensation_plan(wf.steps, statuses, 4) == [0]
    assert compensation_plan(wf.steps, statuses, 0) == []
