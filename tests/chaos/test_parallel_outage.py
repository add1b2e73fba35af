"""Parallel branches across a PostgreSQL restart on real workers (SPEC section 11): one
branch's outcome is stored, the database restarts while the other branch runs, and once it
is back the second outcome lands with the join, exactly once per run."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from conftest import OutageCluster, chaos_bench

from fluxcelery import RunStatus, StepStatus

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(200)]

RUNS = 6


def _rows(c: OutageCluster, run_id: str) -> list[str]:
    with c.storage.engine.connect() as conn:
        q = sa.text("SELECT step FROM outage_effects WHERE run_id = :r ORDER BY id")
        return [r.step for r in conn.execute(q, {"r": run_id})]


def test_postgres_restarted_between_a_branch_outcome_and_the_join(
    outage_cluster: OutageCluster,
) -> None:
    import chaos_workflows as w

    c = outage_cluster
    c.worker(concurrency=RUNS + 2)  # every late branch runs at once (they mostly sleep)
    ids = [c.engine.start(w.par_outage, {"naps": {"late": 5}}).id for _ in range(RUNS)]
    # Every run's quick branch has its outcome stored; its late branch runs (or waits).
    for run_id in ids:
        c.wait(run_id, lambda s: s.step("quick").status == StepStatus.COMPLETED, timeout=60)
    try:
        chaos_bench._pg_ctl("stop")
        time.sleep(6)  # late branches end while the database is down
    finally:
        chaos_bench._pg_ctl("start")
        chaos_bench.wait_port(5432)
    joins = reruns = 0
    for run_id in ids:
        state = c.wait(run_id, lambda s: s.status.value in ("completed", "failed"), timeout=150)
        assert state.status == RunStatus.COMPLETED, (run_id, state.error)
        assert state.step("both").output == {
            "quick": {"recorded": True},
            "late": {"step": "late", "attempt": 1},  # the same attempt, not a worker loss
        }
        types = [e.type for e in c.engine.traces(run_id=run_id)]
        assert types.count("parallel:join") == 1 and types.count("workflow:complete") == 1
        assert _rows(c, run_id) == ["quick", "after-join"]  # each commit landed once
        joins += types.count("parallel:join")
        starts = [e for e in c.engine.traces(run_id=run_id, type="step:start") if e.step == "late"]
        reruns += any((e.meta or {}).get("outage") for e in starts)
    print(
        f"\n{RUNS} runs: {joins} joins; {reruns} late branches re-ran their attempt "
        "after the outage"
    )
    assert joins == RUNS
    assert reruns >= 1  # an outcome did meet the outage, and was stored once it was over
