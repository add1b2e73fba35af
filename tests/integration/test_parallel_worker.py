"""Parallel branches and for_each on real prefork workers (SPEC section 11): branches run at
the same time, the join is decided in SQL exactly once (also when the last two branches end
together on two workers, and when a worker is killed mid-branch), for_each keeps at most
``max_concurrency`` items in flight, and a failure compensates what completed."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Cluster
from helpers import wait_until

from fluxcelery import RunStatus, StepStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RACE_RUNS = 200


def _effects(c: Cluster, run_id: str) -> list[tuple[str, str]]:
    with c.storage.engine.connect() as conn:
        q = sa.text("SELECT step, what FROM it_effects WHERE run_id = :r ORDER BY id")
        return [(r.step, r.what) for r in conn.execute(q, {"r": run_id})]


def _types(c: Cluster, run_id: str) -> list[str]:
    return [e.type for e in c.engine.traces(run_id=run_id)]


def _settled(c: Cluster, ids: list[str], timeout: float) -> list[Any]:
    done = ("completed", "failed", "rolled_back", "cancelled")

    def all_settled() -> list[Any] | None:
        states = [c.engine.get(i) for i in ids]
        return states if all(s is not None and s.status.value in done for s in states) else None

    return wait_until(all_settled, timeout=timeout, what=f"{len(ids)} runs to settle")


def test_two_one_second_branches_run_at_the_same_time_on_c2(cluster: Cluster) -> None:
    import it_workflows as w

    c = cluster
    c.engine.start(w.par_pair, {"nap": 0}).get(timeout=60)  # warm the pool processes
    result = c.engine.start(w.par_pair, {"nap": 1}).get(timeout=60)
    assert result.status == RunStatus.COMPLETED, result.error
    pair = result.step("pair")
    a, b = result.step("nap-a"), result.step("nap-b")
    assert a.started_at and b.started_at and a.finished_at and b.finished_at
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # they overlapped
    assert pair.duration_ms is not None and pair.duration_ms < 1600, pair.duration_ms
    print(f"\n[{c.broker}] parallel step of two 1 s branches: {pair.duration_ms} ms")


def test_for_each_on_workers_keeps_max_concurrency_and_compensates_on_failure(
    cluster: Cluster,
) -> None:
    import it_workflows as w

    c = cluster
    ok = c.engine.start(w.par_each, {"items": list(range(12))}).get(timeout=60)
    assert ok.status == RunStatus.COMPLETED, ok.error
    assert ok.step("each").output == list(range(12))
    effects = _effects(c, ok.id)
    assert sorted(what for step, what in effects if step == "each") == sorted(
        f"item {i}" for i in range(12)
    )
    assert [s for s, _ in effects].count("after") == 1

    failed = c.engine.start(w.par_each, {"items": list(range(12)), "fail_item": 5}).get(timeout=60)
    assert failed.status == RunStatus.ROLLED_BACK
    assert failed.error == "item 5 failed: NonRetryableError: item 5 refused"
    done = [what for _, what in _effects(c, failed.id) if not what.startswith("undo")]
    undone = [what for _, what in _effects(c, failed.id) if what.startswith("undo")]
    assert sorted(undone) == sorted(f"undo {x}" for x in done)  # every landed item undone
    items = {s.item: s.status for s in failed.steps if s.item is not None}
    assert items[5] == StepStatus.FAILED


def test_max_concurrency_bounds_items_running_on_a_wider_worker(rabbit_cluster: Cluster) -> None:
    """A worker with 6 pool processes and a for_each of 12 items that each nap 0.3 s with
    max_concurrency=3: never more than 3 items run at once, and 3 do."""
    import it_workflows as w

    c = rabbit_cluster
    wide = c.worker("wide", concurrency=6)
    try:
        handle = c.engine.start(w.par_each_nap, {"items": list(range(12)), "nap": 0.3})
        result = handle.get(timeout=60)
    finally:
        wide.stop()  # the module's other tests count their own workers
    assert result.status == RunStatus.COMPLETED, result.error
    assert _most_at_once(c, result.id) == 3


def _most_at_once(c: Cluster, run_id: str) -> int:
    """The most item attempts running at one moment, from their start and end events."""
    moments = []
    for e in c.engine.traces(run_id=run_id, limit=None):
        if (e.meta or {}).get("item") is None:
            continue
        if e.type == "step:start":
            moments.append((e.ts, 1))
        elif e.type in ("step:complete", "step:error", "step:retry"):
            moments.append((e.ts, -1))
    running = most = 0
    for _, change in sorted(moments, key=lambda m: (m[0], m[1])):
        running += change
        most = max(most, running)
    return most


def test_a_failing_branch_compensates_the_other_on_workers(cluster: Cluster) -> None:
    import it_workflows as w

    c = cluster
    result = c.engine.start(w.par_race, {"fail": "right-book"}).get(timeout=60)
    assert result.error == "branch 'right' failed: NonRetryableError: right-book refused"
    effects = _effects(c, result.id)
    if ("left-book", "booked") in effects:  # the left branch ran: it is undone
        assert result.status == RunStatus.ROLLED_BACK
        assert effects == [("left-book", "booked"), ("left-book", "unbooked")]
        assert result.step("left-book").status == StepStatus.COMPENSATED
    else:  # the failure came first: the left branch never started, nothing to undo
        assert result.status == RunStatus.FAILED
        assert effects == [] and result.step("left-book").status == StepStatus.PENDING
    assert "parallel:join" not in _types(c, result.id)


@pytest.fixture(scope="module")
def two_workers(rabbit_cluster: Cluster) -> Cluster:
    rabbit_cluster.worker("race-a", concurrency=2)
    rabbit_cluster.worker("race-b", concurrency=2)
    return rabbit_cluster


def test_200_runs_whose_two_branches_end_together_join_once_each(
    two_workers: Cluster, tmp_path: Any
) -> None:
    """Each run's two branch steps meet (a file each, across worker processes) and return
    at the same instant, so that their outcomes race for the join."""
    import it_workflows as w

    c = two_workers
    tmp_path.chmod(0o777)
    ids = [c.engine.start(w.par_race, {"meet": str(tmp_path)}).id for _ in range(RACE_RUNS)]
    states = _settled(c, ids, timeout=240)
    assert [s.status for s in states] == [RunStatus.COMPLETED] * RACE_RUNS
    joins = duplicates = lost = raced = 0
    workers_seen: set[str] = set()
    for s in states:
        n = _types(c, s.id).count("parallel:join")
        joins += n
        duplicates += max(0, n - 1)
        lost += n == 0
        steps = [step for step, _ in _effects(c, s.id)]
        assert sorted(steps) == ["after", "left-book", "right-book"], s.id  # each once
        raced += any(
            (e.meta or {}).get("raced") for e in c.engine.traces(run_id=s.id, type="step:complete")
        )
        workers_seen |= {e.worker or "" for e in c.engine.traces(run_id=s.id, type="step:complete")}
    print(
        f"\n{RACE_RUNS} runs: {joins} joins, {duplicates} duplicates, {lost} lost; "
        f"{raced} runs where one branch's outcome lost the race and was written again; "
        f"workers {len(workers_seen - {''})}"
    )
    assert (joins, duplicates, lost) == (RACE_RUNS, 0, 0)
    assert len(workers_seen - {""}) == 2  # both workers ran branch steps
    assert raced > 0  # the race the join must survive did happen


def test_a_worker_killed_mid_branch_redelivers_it_and_the_join_happens_once(
    rabbit_cluster: Cluster,
) -> None:
    import it_workflows as w

    c = rabbit_cluster
    doomed = c.worker("doomed", concurrency=2)
    handle = c.engine.start(w.par_nap, {"naps": {"nap-b": 4}})

    def nap_b_running() -> Any:
        state = c.engine.get(handle.id)
        return state if state and state.step("nap-b").status == StepStatus.RUNNING else None

    wait_until(nap_b_running, timeout=60, what="nap-b running")
    time.sleep(0.5)
    doomed.kill()  # SIGKILL the worker and its pool mid-branch
    c.worker("rescue", concurrency=2)
    result = handle.get(timeout=120)
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.step("nap-b").attempts == 2  # redelivered: a new attempt
    assert result.step("nap-a").attempts == 1
    types = _types(c, handle.id)
    assert types.count("parallel:join") == 1 and types.count("workflow:complete") == 1
    assert sorted(step for step, _ in _effects(c, handle.id)) == ["after", "mark-b"]
    assert result.step("book").output == {"a": "nap-a", "b": {"booked": "mark-b"}}


def test_an_item_failing_among_200_in_flight_rolls_back_every_landed_item_once(
    cluster: Cluster,
) -> None:
    """Items start (claims) while one fails: the failure waits for the running ones, then
    one rollback undoes every item whose effect landed, each once."""
    import it_workflows as w

    c = cluster
    result = c.engine.start(w.par_each_all, {"items": list(range(200)), "fail_item": 120})
    final = result.get(timeout=180)
    assert final.status == RunStatus.ROLLED_BACK, final.error
    effects = _effects(c, result.id)
    done = sorted(what for _, what in effects if what.startswith("item "))
    undone = sorted(what.removeprefix("undo ") for _, what in effects if what.startswith("undo"))
    assert done == undone and len(set(done)) == len(done)  # each landed item undone once
    types = _types(c, result.id)
    assert types.count("workflow:rollback_start") == 1 and types[-1] == "workflow:error"
    assert not [s for s in final.steps if s.status == StepStatus.RUNNING]
    print(f"\n[{c.broker}] 200 items, item 120 failed: {len(done)} landed and undone")


def test_cancel_with_compensate_undoes_both_branches_once_the_running_one_ends(
    rabbit_cluster: Cluster,
) -> None:
    """Cancelled while one branch's commit sleeps on a worker: it finishes and is recorded,
    then both branches' bookings are undone and the run ends ``cancelled``."""
    import it_workflows as w

    c = rabbit_cluster
    c.worker("par-cancel", concurrency=2)
    handle = c.engine.start(w.par_cancel, {"slow": "slow-book", "sleep": 3})

    def slow_running() -> Any:
        state = c.engine.get(handle.id)
        fast_done = state and state.step("fast-book").status == StepStatus.COMPLETED
        slow = state and state.step("slow-book").status == StepStatus.RUNNING
        return state if fast_done and slow else None

    wait_until(slow_running, timeout=60, what="fast booked, slow running")
    state = c.engine.cancel(handle.id, "trip called off", compensate=True)
    assert state.status == RunStatus.ROLLING_BACK  # waits for the running branch step
    final = handle.get(timeout=60)
    assert final.status == RunStatus.CANCELLED, final.error
    effects = _effects(c, handle.id)
    assert sorted(effects) == sorted(
        [
            ("fast-book", "booked"),
            ("slow-book", "booked"),
            ("slow-book", "unbooked"),
            ("fast-book", "unbooked"),
        ]
    )
    assert effects[-2:] == [("slow-book", "unbooked"), ("fast-book", "unbooked")]
