"""Delays longer than a worker may hold a message (RabbitMQ's consumer_timeout closes the
channel and the worker exits) are taken in hops of FLUX_MAX_COUNTDOWN: here 1 s, against a
3.5 s wait timeout and a 3.5 s retry backoff. The delay is kept; no message waits longer."""

from __future__ import annotations

import time

import pytest
from helpers import wait_until

from fluxcelery import RunStatus, StepStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def hopping(rabbit_cluster):
    rabbit_cluster.worker("hops", concurrency=2, env={"FLUX_MAX_COUNTDOWN": "1"})
    return rabbit_cluster


def test_a_wait_timeout_longer_than_a_hop_fires_at_its_deadline(hopping) -> None:
    import it_workflows as w

    c = hopping
    handle = c.engine.start(w.long_wait, {"wait": 3.5})
    suspended = wait_until(
        lambda: (s := c.engine.get(handle.id)) and s.status == RunStatus.SUSPENDED and s
    )
    deadline = suspended.step("ask").wait_deadline
    result = wait_until(
        lambda: (s := c.engine.get(handle.id)) and s.status != RunStatus.SUSPENDED and s
    )
    assert result.status == RunStatus.FAILED
    assert "no signal 'approval' within the wait timeout" in (result.error or "")
    (error,) = c.engine.traces(run_id=handle.id, type="step:error")
    assert error.ts >= deadline  # not at the first hop, one second in
    hops = c.workers[-1].log().count("flux.wait_timeout[")
    assert hops >= 3 * 2  # "Task ... received" and "succeeded" for at least 3 hops


def test_a_retry_delay_longer_than_a_hop_keeps_its_delay_and_counts_one_attempt(hopping) -> None:
    import it_workflows as w

    c = hopping
    result = c.engine.start(w.slow_retry, {}).get(timeout=30)
    assert result.status == RunStatus.COMPLETED
    flaky = result.step("flaky")
    assert flaky.status == StepStatus.COMPLETED and flaky.attempts == 2
    assert result.results["flaky"] == 2
    assert result.step("after").status == StepStatus.COMPLETED  # the chain went on
    (retry,) = c.engine.traces(run_id=result.id, type="step:retry")
    starts = [e for e in c.engine.traces(run_id=result.id, type="step:start") if e.step == "flaky"]
    assert [e.attempt for e in starts] == [1, 2]  # the hops started nothing
    waited = (starts[1].ts - retry.ts).total_seconds()
    assert waited >= 3.5 - 0.05, waited
    received = [
        line
        for line in c.workers[-1].log().splitlines()
        if "flux.it-slow-retry.flaky[" in line and "received" in line
    ]
    assert len(received) >= 1 + 3  # the first attempt, then the retry in 1 s hops


def test_a_start_countdown_longer_than_a_hop_starts_the_run_on_time(hopping) -> None:
    import it_workflows as w

    c = hopping
    c.app.conf.flux_max_countdown = 1.0  # the producer's cap too (it sends the first task)
    try:
        started = time.monotonic()
        handle = c.engine.start(w.four, {"add": 1}, countdown=3.5)
        result = handle.get(timeout=30)
    finally:
        c.app.conf.flux_max_countdown = 600.0
    assert result.status == RunStatus.COMPLETED
    assert time.monotonic() - started >= 3.5 - 0.05
    first = c.engine.traces(run_id=handle.id, type="step:start")[0]
    assert (first.step, first.attempt) == ("a", 1)  # the hops started nothing
    received = [
        line
        for line in c.workers[-1].log().splitlines()
        if "flux.it-four.a[" in line and "received" in line
    ]
    assert len(received) >= 3  # held 1 s at a time, then run


def test_recover_leaves_a_run_that_is_not_due_yet(hopping) -> None:
    """A run started with a countdown is pending with no task started: ``recover`` used to
    take it for stuck and start it at once."""
    import it_workflows as w

    c = hopping
    handle = c.engine.start(w.four, {"add": 1}, countdown=60)
    try:
        assert handle.id not in c.engine.recover(older_than=0)
        time.sleep(1.0)
        state = c.engine.get(handle.id)
        assert state is not None and state.status == RunStatus.PENDING
        assert c.engine.traces(run_id=handle.id, type="step:start") == []
    finally:
        c.engine.cancel(handle.id, reason="test over")
