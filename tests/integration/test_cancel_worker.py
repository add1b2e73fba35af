"""Cancellation on a real prefork worker (SPEC section 12): ``terminate`` interrupts a running
attempt within seconds and discards its writes; without it the attempt finishes and its
outcome (and effect) is recorded, and nothing follows; ``compensate`` undoes the completed
commits on the worker, in reverse order, and the run ends ``cancelled``; a task a worker
holds for a countdown is revoked (the worker drops it when it is due)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Cluster
from helpers import wait_until

from fluxcelery import RunStatus, StepStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _effects(c: Cluster, run_id: str) -> list[tuple[str, str]]:
    with c.storage.engine.connect() as conn:
        q = sa.text("SELECT step, what FROM it_effects WHERE run_id = :r ORDER BY id")
        return [(r.step, r.what) for r in conn.execute(q, {"r": run_id})]


def _held(c: Cluster, getter: str) -> set[str]:
    found = getattr(c.app.control.inspect(timeout=1.0), getter)() or {}
    return {t.get("request", t)["id"] for tasks in found.values() for t in tasks}


@pytest.fixture(scope="module")
def workers(rabbit_cluster: Cluster) -> Cluster:
    rabbit_cluster.worker("cancel", concurrency=2)
    return rabbit_cluster


def _running(c: Cluster, run_id: str, step: str) -> Any:
    def check() -> Any:
        state = c.engine.get(run_id)
        s = state.step(step) if state else None
        return s if s and s.status == StepStatus.RUNNING and s.task_id else None

    return wait_until(check, what=f"{step} running")


def test_terminate_interrupts_a_60s_step_within_5s_and_discards_its_writes(
    workers: Cluster,
) -> None:
    import it_workflows as w

    c = workers
    handle = c.engine.start(w.cancellable, {"slow": "hotel", "sleep": 60})
    hotel = _running(c, handle.id, "hotel")
    began = time.monotonic()
    state = c.engine.cancel(handle.id, "stop now", terminate=True)
    assert state.status == RunStatus.CANCELLED
    wait_until(lambda: hotel.task_id not in _held(c, "active"), timeout=10, what="the task to stop")
    took = time.monotonic() - began
    assert took < 5, f"the attempt was interrupted after {took:.1f}s"
    time.sleep(2)  # a redelivery, if any, must change nothing
    final = c.engine.get(handle.id)
    assert final is not None and final.status == RunStatus.CANCELLED
    assert final.step("hotel").status == StepStatus.FAILED
    assert final.step("hotel").error == "Cancelled: stop now (attempt terminated)"
    assert final.step("car").status == StepStatus.PENDING
    assert _effects(c, handle.id) == [("flight", "booked")]  # the hotel's write discarded


def test_without_terminate_the_attempt_finishes_is_recorded_and_nothing_follows(
    workers: Cluster,
) -> None:
    import it_workflows as w

    c = workers
    handle = c.engine.start(w.cancellable, {"slow": "hotel", "sleep": 2})
    _running(c, handle.id, "hotel")
    c.engine.cancel(handle.id, "no more")

    def settled() -> Any:
        state = c.engine.get(handle.id)
        return state if state and state.step("hotel").status == StepStatus.COMPLETED else None

    final = wait_until(settled, what="the hotel's outcome")
    assert final.status == RunStatus.CANCELLED
    time.sleep(1)
    assert c.engine.get(handle.id).step("car").status == StepStatus.PENDING  # type: ignore[union-attr]
    assert _effects(c, handle.id) == [("flight", "booked"), ("hotel", "booked")]


def test_compensate_undoes_the_commits_in_reverse_on_the_worker(workers: Cluster) -> None:
    import it_workflows as w

    c = workers
    handle = c.engine.start(w.cancellable, {"hold": True})
    wait_until(
        lambda: (s := c.engine.get(handle.id)) and s.status == RunStatus.SUSPENDED,
        what="the run to wait",
    )
    c.engine.cancel(handle.id, "trip called off", compensate=True)
    final = wait_until(
        lambda: (s := c.engine.get(handle.id)) and s.status == RunStatus.CANCELLED and s,
        what="the rollback",
    )
    assert [s.status for s in final.steps[:2]] == [StepStatus.COMPENSATED] * 2
    assert _effects(c, handle.id) == [
        ("flight", "booked"),
        ("hotel", "booked"),
        ("hotel", "unbooked"),
        ("flight", "unbooked"),
    ]
    last = c.engine.traces(run_id=handle.id)[-1]
    assert (last.type, last.status) == ("workflow:rollback_complete", "cancelled")


def test_a_task_held_for_a_countdown_is_revoked(workers: Cluster) -> None:
    import it_workflows as w

    c = workers
    handle = c.engine.start(w.cancellable, {}, countdown=60)

    def scheduled() -> set[str]:
        return _held(c, "scheduled")

    held = wait_until(scheduled, timeout=20, what="the worker to hold the task")

    def revoked() -> set[str]:
        found = c.app.control.inspect(timeout=1.0).revoked() or {}
        return {task_id for ids in found.values() for task_id in ids}

    c.engine.cancel(handle.id, "never mind")
    # The worker keeps the timer entry, and drops the task when it is due (not waited here).
    wait_until(lambda: held <= revoked(), timeout=10, what="the revoke")
    assert _effects(c, handle.id) == []
