"""The database goes away while a step runs on a real worker: once it is back, the step's
outcome is stored (or the step runs again), the commit lands once, and the run never ends
``completed`` with a step that did not complete."""

from __future__ import annotations

import time

import pytest
from conftest import OutageCluster, chaos_bench, step_starts

from fluxcelery import RunStatus, StepStatus

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(170)]


def _all_completed(c: OutageCluster, run_id: str) -> None:
    state = c.get(run_id)
    assert state is not None
    assert state.status == RunStatus.COMPLETED, (state.status, state.error)
    assert [s.status for s in state.steps] == [StepStatus.COMPLETED] * 3
    types = [e.type for e in c.engine.traces(run_id=run_id)]
    assert types.count("workflow:complete") == 1
    done = {e.step for e in c.engine.traces(run_id=run_id, type="step:complete")}
    assert done == {"slow", "record", "after"}
    assert c.effects(run_id) == 1  # the commit's row landed exactly once


def test_postgres_stopped_mid_step(outage_cluster: OutageCluster) -> None:
    """PostgreSQL stops while ``slow`` (retries=0) runs: the attempt's outcome cannot be
    stored; the task is retried when the database is back and re-runs the same attempt
    (not a worker loss that would fail the run)."""
    import chaos_workflows as w

    c = outage_cluster
    c.worker()
    handle = c.engine.start(w.outage, {"sleep": 3})
    c.wait(handle.id, lambda s: s.steps[0].status == StepStatus.RUNNING, timeout=60)
    try:
        chaos_bench._pg_ctl("stop")
        time.sleep(5)  # the step finishes while the database is down
    finally:
        chaos_bench._pg_ctl("start")
        chaos_bench.wait_port(5432)
    c.wait(handle.id, lambda s: s.status.value in ("completed", "failed"), timeout=90)
    _all_completed(c, handle.id)
    slow = c.get(handle.id).step("slow")  # type: ignore[union-attr]
    assert slow.attempts == 1
    starts = step_starts(c, handle.id, "slow")
    assert [e.attempt for e in starts][-1] == 1
    assert any((e.meta or {}).get("outage") for e in starts[1:]) or len(starts) == 1


def test_connections_terminated_mid_commit(outage_cluster: OutageCluster) -> None:
    """``pg_terminate_backend`` on the workers' connections while the commit step holds its
    transaction: the transaction rolls back, the step is retried, its row lands once."""
    import chaos_workflows as w

    c = outage_cluster
    c.worker()
    handle = c.engine.start(w.outage, {"sleep": 0, "commit_sleep": 2})
    c.wait(handle.id, lambda s: s.steps[1].status == StepStatus.RUNNING, timeout=60)
    time.sleep(0.5)
    assert c.terminate_backends() >= 1
    c.wait(handle.id, lambda s: s.status.value in ("completed", "failed"), timeout=90)
    _all_completed(c, handle.id)
    # The attempt whose completion could not be saved ran again under the same number.
    record = c.get(handle.id).step("record")  # type: ignore[union-attr]
    assert record.attempts == 1
    starts = step_starts(c, handle.id, "record")
    assert len(starts) >= 2 and (starts[-1].meta or {}).get("outage") is True


def test_connections_terminated_mid_plain_step(outage_cluster: OutageCluster) -> None:
    """Connections killed while a plain step runs: the pool reconnects and the outcome is
    stored by the same attempt."""
    import chaos_workflows as w

    c = outage_cluster
    c.worker()
    handle = c.engine.start(w.outage, {"sleep": 2})
    c.wait(handle.id, lambda s: s.steps[0].status == StepStatus.RUNNING, timeout=60)
    assert c.terminate_backends() >= 1
    c.wait(handle.id, lambda s: s.status.value in ("completed", "failed"), timeout=90)
    _all_completed(c, handle.id)
