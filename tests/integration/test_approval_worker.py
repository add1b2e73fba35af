"""Approvals on a real prefork worker (SPEC section 16): the run waits holding no worker;
a decision taken in the producer's process continues it on the worker (approved: the next
commit lands) or fails it and compensates there (rejected); the policy decides on the
worker without asking."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from conftest import Cluster
from helpers import wait_until

from fluxcelery import NotAllowed, RunStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _effects(c: Cluster, run_id: str) -> list[tuple[str, str]]:
    with c.storage.engine.connect() as conn:
        q = sa.text("SELECT step, what FROM it_effects WHERE run_id = :r ORDER BY id")
        return [(r.step, r.what) for r in conn.execute(q, {"r": run_id})]


@pytest.fixture(scope="module")
def workers(rabbit_cluster: Cluster) -> Cluster:
    rabbit_cluster.worker("approvals", concurrency=2)
    return rabbit_cluster


def _suspended(c: Cluster, run_id: str) -> None:
    wait_until(
        lambda: (s := c.engine.get(run_id)) is not None and s.status == RunStatus.SUSPENDED,
        what="the run to wait for a decision",
    )


def test_an_approval_given_in_the_producer_continues_the_run_on_the_worker(
    workers: Cluster,
) -> None:
    import it_workflows as w

    c = workers
    handle = c.engine.start(w.signed, {"amount": 300})
    _suspended(c, handle.id)
    active = c.app.control.inspect(timeout=1.0).active() or {}
    assert not any(tasks for tasks in active.values()), "a waiting run holds no worker"
    with pytest.raises(NotAllowed):
        c.engine.approve(handle.id, "kim")
    c.engine.approve(handle.id, "ann", "within budget")
    done = handle.get(timeout=60)
    assert done.status == RunStatus.COMPLETED
    assert done.results["manager"]["by"] == "ann"
    assert done.results["manager"]["comment"] == "within budget"
    assert _effects(c, handle.id) == [("reserve", "booked"), ("pay", "booked")]
    (paid,) = [
        e for e in c.engine.traces(run_id=handle.id, type="step:complete") if e.step == "pay"
    ]
    assert paid.worker and paid.task_id  # ran on the worker
    types = [e.type for e in c.engine.traces(run_id=handle.id)]
    assert types.count("approval:requested") == 1 and types.count("approval:decided") == 1


def test_a_rejection_compensates_on_the_worker(workers: Cluster) -> None:
    import it_workflows as w

    c = workers
    handle = c.engine.start(w.signed, {"amount": 500})
    _suspended(c, handle.id)
    c.engine.reject(handle.id, "lee", "not this quarter")
    done = handle.get(timeout=60)
    assert done.status == RunStatus.ROLLED_BACK
    assert done.error == "Rejected: not this quarter"
    assert _effects(c, handle.id) == [("reserve", "booked"), ("reserve", "unbooked")]


@pytest.mark.parametrize(("amount", "status"), [(5, "completed"), (5000, "rolled_back")])
def test_the_policy_decides_on_the_worker(workers: Cluster, amount: int, status: str) -> None:
    import it_workflows as w

    c = workers
    done = c.engine.start(w.signed, {"amount": amount}).get(timeout=60)
    assert done.status.value == status
    decided = [e for e in c.engine.traces(run_id=done.id) if e.type == "approval:decided"]
    assert [e.meta["by"] for e in decided] == ["policy"]  # type: ignore[index]
    (policy_ran,) = c.engine.traces(run_id=done.id, type="step:start", limit=2)[1:]
    assert policy_ran.step == "manager" and policy_ran.worker  # decided on the worker
