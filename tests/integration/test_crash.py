"""SIGKILL a worker while a step is mid-way: a second worker completes the run, and the
commit step before it ran exactly once."""

from __future__ import annotations

import time
import uuid

import pytest

from fluxcelery import RunState, RunStatus, StepState, StepStatus
from fluxcelery.celery.tasks import step_task_name

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


def test_a_worker_lost_during_an_outage_retry_counts_an_attempt(rabbit_cluster) -> None:
    """An outage retry re-runs the attempt the outage interrupted (same number). If that
    re-run kills its worker, the redelivered retry must count a new attempt: otherwise a
    handler that crashes its worker is re-run under the same attempt forever."""
    import it_workflows as w

    c = rabbit_cluster
    run_id = f"outage-kill-{uuid.uuid4().hex[:8]}"
    task_id = uuid.uuid4().hex
    queue = f"{c.queue}-outage"  # only this test's workers (earlier tests' keep running)
    # The run as an outage leaves it: "charge" done, "slow" running attempt 1 under task_id.
    c.engine.storage.create_run(
        RunState(
            id=run_id,
            workflow=w.crash.name,
            workflow_version=w.crash.version,
            definition_hash=w.crash.freeze().definition_hash,
            status=RunStatus.RUNNING,
            input={"sleep": 3},
            data={},
            current_step=1,
            executor="celery",
            steps=[
                StepState(name="charge", index=0, kind="commit", status=StepStatus.COMPLETED),
                StepState(
                    name="slow", index=1, status=StepStatus.RUNNING, attempts=1, task_id=task_id
                ),
                StepState(name="done", index=2),
            ],
        ),
        [],
    )
    # ... and the retry of that step task the outage sent (tasks.py, _outage_retry).
    c.app.send_task(
        step_task_name(w.crash.name, "slow"),
        kwargs={"run_id": run_id, "outage": True},
        task_id=task_id,
        queue=queue,
    )
    first = c.worker("outage-doomed", concurrency=1, queue=queue)
    starts = wait_for_starts(c.engine, run_id, "slow", 1)
    assert starts[0].attempt == 1 and starts[0].meta == {"redelivered": True, "outage": True}
    first.kill()  # mid re-run, before any ack

    c.worker("outage-rescuer", concurrency=1, queue=queue)
    state = wait_for_step(c.engine, run_id, "done", StepStatus.COMPLETED, timeout=60)
    assert state.step("slow").attempts == 2
    starts = wait_for_starts(c.engine, run_id, "slow", 2)
    assert [e.attempt for e in starts] == [1, 2]
    assert starts[1].meta == {"redelivered": True}  # a lost worker, not the outage again


def wait_for_starts(engine, run_id: str, step: str, n: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        starts = [e for e in engine.traces(run_id=run_id, type="step:start") if e.step == step]
        if len(starts) >= n:
            return starts
        time.sleep(0.05)
    raise AssertionError(f"{step} of {run_id} never had {n} step:start events")
