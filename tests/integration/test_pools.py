"""Each Celery pool on a real ``celery -A fluxcelery worker -P <pool>`` (RabbitMQ,
PostgreSQL): the tests behind the Pools table of docs/celery.md, whose cells name them.
Runs, retries, signals and compensation work alike on all four; a step's timeout and
``cancel --terminate`` differ, as the worker's start warning (celery/pools.py) says:

| pool    | sync step at its timeout  | CPU-bound step      | cancel --terminate             |
| ------- | ------------------------- | ------------------- | ------------------------------ |
| prefork | interrupted (soft limit)  | interrupted         | interrupted (process stopped)  |
| threads | abandoned, writes dropped | abandoned, computes | runs to its end, outcome dropped |
| solo    | interrupted (SIGALRM)     | interrupted         | runs to its end, outcome dropped |
| gevent  | abandoned, writes dropped | not timed out       | runs to its end, writes dropped  |

An ``async def`` step is cancelled at its timeout on all four. "Runs on" is seen outside the
database: the handler appends to a file at its end. One worker per pool, for that pool's
tests (about 15 s each)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Cluster, WorkerProcess
from helpers import IN_CI, wait_until

from fluxcelery import RunStatus, StepStatus
from fluxcelery.celery.pools import POOLS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: ``-c`` of each pool's worker.
CONCURRENCY = {"prefork": 2, "threads": 4, "solo": 1, "gevent": 4}
#: Pools where a sync handler is stopped at its timeout (elsewhere it is abandoned).
INTERRUPTED_AT_TIMEOUT = {"prefork", "solo"}
#: Pools where ``cancel --terminate`` stops the running handler.
STOPPED_BY_TERMINATE = {"prefork"}


@dataclass
class Pool:
    name: str
    cluster: Cluster
    worker: WorkerProcess

    def ran_here(self, run_id: str) -> bool:
        """Every attempt of the run started on this pool's worker."""
        starts = self.cluster.engine.traces(run_id=run_id, type="step:start")
        return bool(starts) and {(e.worker or "").split("@")[0] for e in starts} == {
            self.worker.name
        }


@pytest.fixture(scope="module", params=list(CONCURRENCY))
def pool(request: pytest.FixtureRequest, rabbit_cluster: Cluster) -> Iterator[Pool]:
    import it_workflows as w

    name = request.param
    if name == "gevent" and not IN_CI:  # CI installs the dev extra, which has gevent
        pytest.importorskip("gevent", reason='the gevent pool needs "fluxcelery[gevent]"')
    rabbit_cluster.engine.register(
        w.pool_timeout,
        w.pool_cpu,
        w.pool_async,
        w.pool_saga,
        w.pool_cancel,
        w.pool_slow_query,
        w.pool_db_naps,
    )
    worker = rabbit_cluster.worker(f"pool-{name}", concurrency=CONCURRENCY[name], pool=name)
    try:
        yield Pool(name, rabbit_cluster, worker)
    finally:
        worker.stop()


def _effects(c: Cluster, run_id: str) -> list[tuple[str, str]]:
    with c.storage.engine.connect() as conn:
        q = sa.text("SELECT step, what FROM it_effects WHERE run_id = :r ORDER BY id")
        return [(r.step, r.what) for r in conn.execute(q, {"r": run_id})]


def _log_tail(p: Pool) -> str:
    return p.worker.log()[-3000:]


def test_run_completes(pool: Pool) -> None:
    import it_workflows as w

    result = pool.cluster.engine.start(w.four, {"add": 2}).get(timeout=30)
    assert result.status == RunStatus.COMPLETED, (result.error, _log_tail(pool))
    assert result.results["d"] == {"total": 4}
    assert pool.cluster.effects(result.id, "b") == 1
    assert pool.ran_here(result.id)


def test_retry_until_success(pool: Pool) -> None:
    import it_workflows as w

    result = pool.cluster.engine.start(w.retrying, {}).get(timeout=30)
    assert result.status == RunStatus.COMPLETED, (result.error, _log_tail(pool))
    assert result.results["flaky"] == {"attempt": 3}
    retries = pool.cluster.engine.traces(run_id=result.id, type="step:retry")
    assert [(e.step, e.attempt) for e in retries] == [("flaky", 1), ("flaky", 2)]
    assert pool.ran_here(result.id)


def test_signal_continues_run(pool: Pool) -> None:
    import it_workflows as w

    c = pool.cluster
    handle = c.engine.start(w.approval, {})
    assert handle.get(timeout=30).status == RunStatus.SUSPENDED
    result = c.engine.signal(handle.id, "approval", {"by": "ann"}).get(timeout=30)
    assert result.status == RunStatus.COMPLETED, (result.error, _log_tail(pool))
    assert result.results["finish"] == {"approved_by": "ann"}
    assert pool.ran_here(result.id)


def test_failure_compensates_in_reverse(pool: Pool) -> None:
    import it_workflows as w

    c = pool.cluster
    result = c.engine.start(w.pool_saga, {}).get(timeout=30)
    assert result.status == RunStatus.ROLLED_BACK, (result.error, _log_tail(pool))
    assert [s.status for s in result.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
    ]
    assert _effects(c, result.id) == [
        ("flight", "booked"),
        ("hotel", "booked"),
        ("hotel", "unbooked"),
        ("flight", "unbooked"),
    ]
    assert pool.ran_here(result.id)


def test_sync_step_timeout(pool: Pool, tmp_path: Path) -> None:
    """Attempt 1 sleeps 3 s under a 1 s timeout: it fails with ``StepTimeout`` at 1 s and
    attempt 2 books. On prefork and solo attempt 1 was stopped there; on threads and gevent
    it runs on to its end (its file appears at 3 s), and its writes (an effect row, a
    ``ctx.data`` key) are discarded."""
    import it_workflows as w

    c = pool.cluster
    mark = tmp_path / "mark"
    began = time.monotonic()
    result = c.engine.start(w.pool_timeout, {"sleep": 3, "mark": str(mark)}).get(timeout=30)
    assert result.status == RunStatus.COMPLETED, (result.error, _log_tail(pool))
    assert result.step("book").attempts == 2
    [retry] = c.engine.traces(run_id=result.id, type="step:retry")
    assert _first_attempt_seconds(c, result.id, "step:retry") < 2.5  # at its timeout
    assert (retry.error or "").startswith("StepTimeout: step 'book'"), retry.error
    if pool.name in INTERRUPTED_AT_TIMEOUT:
        assert "abandoned" not in (retry.error or "")
        time.sleep(max(0.0, began + 4 - time.monotonic()))
        assert not mark.exists()  # stopped at its timeout: it never reached its end
    else:
        assert (retry.error or "").endswith("(attempt abandoned)")
        wait_until(mark.exists, timeout=10, what="the abandoned attempt to end")
        assert mark.read_text() == "1\n"
        time.sleep(0.5)  # its effect, had it landed, would be there now
    assert _effects(c, result.id) == [("book", "booked")]  # attempt 2's only
    assert result.results["after"] == {"late": False}
    assert pool.ran_here(result.id)


def test_cpu_bound_step_timeout(pool: Pool, tmp_path: Path) -> None:
    """A handler that computes for 3 s under a 1 s timeout, never yielding: prefork and solo
    stop it at 1 s; threads abandons it at 1 s (it computes on to its end, sharing the GIL
    with the tasks that follow); gevent cannot time it out at all (the timer is a greenlet
    too, and no greenlet runs until the handler ends), so the step completes."""
    import it_workflows as w

    c = pool.cluster
    mark = tmp_path / "mark"
    began = time.monotonic()
    result = c.engine.start(w.pool_cpu, {"spin": 3, "mark": str(mark)}).get(timeout=30)
    if pool.name == "gevent":
        assert result.status == RunStatus.COMPLETED, (result.error, _log_tail(pool))
        assert result.results["spin"] == "spun" and mark.exists()
        return
    assert result.status == RunStatus.FAILED, _log_tail(pool)
    assert (result.error or "").startswith("StepTimeout: step 'spin'"), result.error
    assert _first_attempt_seconds(c, result.id, "step:error") < 2.5  # at its timeout
    if pool.name in INTERRUPTED_AT_TIMEOUT:
        time.sleep(max(0.0, began + 4 - time.monotonic()))
        assert not mark.exists()
    else:
        assert (result.error or "").endswith("(attempt abandoned)")
        wait_until(mark.exists, timeout=10, what="the abandoned handler to end")


def test_async_step_timeout(pool: Pool, tmp_path: Path) -> None:
    """An ``async def`` handler sleeping 3 s under a 1 s timeout is cancelled on every pool:
    it never wakes (its file never appears)."""
    import it_workflows as w

    c = pool.cluster
    mark = tmp_path / "mark"
    began = time.monotonic()
    result = c.engine.start(w.pool_async, {"sleep": 3, "mark": str(mark)}).get(timeout=30)
    assert result.status == RunStatus.FAILED, _log_tail(pool)
    assert (result.error or "").startswith("StepTimeout: step 'nap'"), result.error
    assert _first_attempt_seconds(c, result.id, "step:error") < 2.5
    time.sleep(max(0.0, began + 4 - time.monotonic()))
    assert not mark.exists()


def test_commit_step_timeout_mid_query(pool: Pool) -> None:
    """A commit step 3 s into a query under a 1 s timeout fails at 1 s on every pool, and
    its query is cancelled on the server: interrupted in the handler's thread (prefork,
    solo), the connection that cannot take a ROLLBACK is dropped; abandoned (threads,
    gevent), the query fails under the handler and the ROLLBACK follows."""
    import it_workflows as w

    c = pool.cluster
    result = c.engine.start(w.pool_slow_query, {"nap": 3}).get(timeout=30)
    assert result.status == RunStatus.FAILED, _log_tail(pool)
    assert (result.error or "").startswith("StepTimeout: step 'query'"), result.error
    assert _first_attempt_seconds(c, result.id, "step:error") < 2.5
    assert _effects(c, result.id) == []
    assert not _sleeping_queries(c)


def _first_attempt_seconds(c: Cluster, run_id: str, outcome: str) -> float:
    """From the first attempt's start to its ``outcome`` event, by the stored times: the
    attempt failed at its timeout (1 s), not at the handler's end (3 s). Not the wall clock
    of this process, which a loaded machine stretches with queueing before the start."""
    start = c.engine.traces(run_id=run_id, type="step:start", limit=1)[0]
    end = c.engine.traces(run_id=run_id, type=outcome, limit=1)[0]
    return (end.ts - start.ts).total_seconds()


def _sleeping_queries(c: Cluster) -> int:
    """Backends running ``db_nap``'s query now."""
    with c.storage.engine.connect() as conn:
        q = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE 'SELECT clock_timestamp() AS a, pg_sleep%'"
        )
        return int(conn.execute(q).scalar() or 0)


def test_postgres_waits_side_by_side(pool: Pool) -> None:
    """Items waiting in ``pg_sleep`` at once, as many as the worker's concurrency: on
    gevent, psycopg (3.1.14+, imported after Celery's monkey-patching) waits through the
    hub, so one greenlet's query does not block the others. (Before the terminate test: on
    prefork that one stops a process, and its replacement may still be starting.)"""
    import it_workflows as w

    width = CONCURRENCY[pool.name]
    if width < 2:
        pytest.skip("solo runs one task at a time")
    handle = pool.cluster.engine.start(w.pool_db_naps, {"items": list(range(width)), "nap": 1})
    result = handle.get(timeout=60)
    assert result.status == RunStatus.COMPLETED, (result.error, _log_tail(pool))
    spans = result.results["naps"]
    assert len(spans) == width
    latest_start = max(a for a, _ in spans)
    earliest_end = min(b for _, b in spans)
    assert latest_start < earliest_end, spans  # every item was in pg_sleep at one instant


def test_cancel_terminate(pool: Pool, tmp_path: Path) -> None:
    """``hotel`` sleeps 3 s; the run is cancelled with ``terminate`` while it does. The run
    is cancelled at once and the hotel's write never lands; on prefork the handler is
    stopped, elsewhere it runs to its end (its file appears)."""
    import it_workflows as w

    c = pool.cluster
    mark = tmp_path / "mark"
    handle = c.engine.start(w.pool_cancel, {"sleep": 3, "mark": str(mark)})

    def hotel_running() -> Any:
        state = c.engine.get(handle.id)
        hotel = state.step("hotel") if state else None
        return hotel if hotel and hotel.status == StepStatus.RUNNING else None

    wait_until(hotel_running, timeout=20, what="hotel running")
    began = time.monotonic()
    state = c.engine.cancel(handle.id, "stop now", terminate=True)
    assert state.status == RunStatus.CANCELLED
    if pool.name in STOPPED_BY_TERMINATE:
        time.sleep(max(0.0, began + 4 - time.monotonic()))
        assert not mark.exists()  # the handler was stopped mid-sleep
    else:
        wait_until(mark.exists, timeout=10, what="the attempt to run to its end")
        time.sleep(0.5)
    final = c.engine.get(handle.id)
    assert final is not None and final.status == RunStatus.CANCELLED
    assert final.step("hotel").status == StepStatus.FAILED
    assert final.step("hotel").error == "Cancelled: stop now (attempt terminated)"
    assert final.step("car").status == StepStatus.PENDING
    assert _effects(c, handle.id) == [("flight", "booked")]  # the hotel's write discarded
    if pool.name == "threads":  # Celery's revoke says so at ERROR
        assert "does not implement kill_job" in pool.worker.log()
    # The worker is still serving: the next run completes on it.
    again = c.engine.start(w.four, {}).get(timeout=30)
    assert again.status == RunStatus.COMPLETED, (again.error, _log_tail(pool))


def test_start_warning(pool: Pool) -> None:
    log = pool.worker.log()
    if POOLS[pool.name].celery_limits:
        assert "does not enforce Celery's time limits" not in log
        return
    [line] = [x for x in log.splitlines() if "does not enforce Celery's time limits" in x]
    assert "WARNING" in line
    assert f"the {pool.name} pool does not enforce Celery's time limits" in line
    # the step tasks by timeout, the smallest first: three named, the others counted
    assert re.search(r"\(1s: (flux\.it-[\w.-]+, ){2}flux\.it-[\w.-]+ and \d+ more; 30s: ", line)
    assert f"a sync handler is {POOLS[pool.name].at_timeout}" in line
    assert f"cancel --terminate {POOLS[pool.name].terminate}" in line
    assert log.index(line) < log.index(" ready.")  # logged at start
