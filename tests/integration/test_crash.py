"""SIGKILL a worker while a step is mid-way: a second worker completes the run, and the
commit step before it ran exactly once."""

from __future__ import annotations

import time

import pytest

from fluxcelery import RunStatus, StepStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def wait_for_step(engine, run_id: str, step: str, status: StepStatus, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = engine.get(run_id)
        if state is not None and state.step(step).status == status:
            return state
        time.sleep(0.05)
    raise AssertionError(f"step {step} never reached {status}: {engine.get(run_id)}")


def test_sigkill_mid_step_loses_nothing(rabbit_cluster) -> None:
    import it_workflows as w

    c = rabbit_cluster
    first = c.worker("doomed", concurrency=1)
    handle = c.engine.start(w.crash, {"sleep": 3})
    state = wait_for_step(c.engine, handle.id, "slow", StepStatus.RUNNING)
    assert state.step("slow").attempts == 1
    assert c.effects(handle.id, "charge") == 1
    first.kill()  # the worker and its pool child, mid-step, before any ack

    c.worker("rescuer", concurrency=1)
    result = handle.get(timeout=60)
    assert result.status == RunStatus.COMPLETED
    slow = result.step("slow")
    assert slow.attempts == 2  # the redelivered task counted a new attempt
    starts = [e for e in c.engine.traces(run_id=handle.id, type="step:start") if e.step == "slow"]
    assert [e.attempt for e in starts] == [1, 2]
    assert starts[1].meta == {"redelivered": True}
    assert starts[0].worker != starts[1].worker
    # The commit step before the crash ran exactly once, and was not re-run.
    assert c.effects(handle.id, "charge") == 1
    assert (
        len([e for e in c.engine.traces(run_id=handle.id, type="step:start") if e.step == "charge"])
        == 1
    )
