"""What a worker says at start about its pool and step timeouts (celery/pools.py), and which
pool lets Celery's soft time limit stop handlers: prefork only (the solo pool also sends
``worker_process_init``, from the worker's own process, where no Celery limit is enforced).
The behaviour itself is checked on real workers by tests/integration/test_pools.py."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from celery import signals
from celery.concurrency import get_implementation
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.dispatch import Signal
from helpers import wait_until

from fluxcelery import RunStatus, SqlStorage, StepTimeout, workflow
from fluxcelery.celery.app import build_app, connect_worker_signals, step_timeouts
from fluxcelery.celery.pools import POOLS, pool_name, psycopg_blocks_gevent, timeout_warning
from fluxcelery.celery.tasks import register_workflow
from fluxcelery.runner import invoke
from fluxcelery.settings import Settings


def noop(ctx):
    return None


@pytest.mark.parametrize(
    ("alias", "name"),
    [("prefork", "prefork"), ("threads", "threads"), ("solo", "solo"), ("gevent", "gevent")],
)
def test_pool_names_are_the_worker_options(alias: str, name: str) -> None:
    if alias == "gevent":
        pytest.importorskip("gevent")
    assert pool_name(get_implementation(alias)) == name


def test_prefork_and_steps_without_a_timeout_get_no_warning() -> None:
    assert timeout_warning("prefork", {"flux.a.x": 1.0}) is None
    assert timeout_warning("threads", {}) is None


@pytest.mark.parametrize("pool", ["threads", "solo", "gevent"])
def test_the_warning_names_the_pool_the_steps_and_what_happens_instead(pool: str) -> None:
    timeouts = {"flux.a.hang": 1.0, **{f"flux.b.s{i}": 30.0 for i in range(5)}}
    warning = timeout_warning(pool, timeouts)
    assert warning is not None
    assert f"the {pool} pool does not enforce Celery's time limits" in warning
    assert "timeouts of 6 step tasks (1s: flux.a.hang; 30s: flux.b.s0, flux.b.s1, " in warning
    assert "flux.b.s2 and 2 more)" in warning
    assert f"a sync handler is {POOLS[pool].at_timeout}" in warning
    assert "An async handler is cancelled." in warning
    assert f"cancel --terminate {POOLS[pool].terminate}." in warning


def test_an_unknown_pool_is_warned_of_too() -> None:
    warning = timeout_warning("mypool", {"flux.a.x": 5.0})
    assert warning is not None and "the mypool pool" in warning and "5s: flux.a.x" in warning


def test_step_timeouts_lists_the_step_and_compensation_tasks_with_a_timeout() -> None:
    app = build_app(Settings(broker_url="memory://"))
    wf = (
        workflow("pool-limits")
        .step("quick", noop, timeout=2, compensate=noop)
        .step("free", noop, timeout=None)
        .step("plain", noop)
        .freeze()
    )
    register_workflow(app, wf, 30.0)
    assert step_timeouts(app) == {
        "flux.pool-limits.quick": 2.0,
        "flux.pool-limits.quick.compensate": 2.0,
        "flux.pool-limits.plain": 30.0,
    }


class _Worker:
    def __init__(self, app: object, pool_cls: str) -> None:
        self.app = app
        self.pool_cls = pool_cls


@pytest.mark.parametrize(("alias", "native"), [("prefork", True), ("solo", False)])
def test_only_prefork_children_leave_timeouts_to_celery(
    monkeypatch: pytest.MonkeyPatch, alias: str, native: bool
) -> None:
    for name in ("import_modules", "worker_init", "worker_process_init", "worker_ready"):
        monkeypatch.setattr(signals, name, Signal(name=name))  # no receiver outlives the test
    app = build_app(Settings(broker_url="memory://"))
    connect_worker_signals(app)
    invoke.use_native_time_limits(False)
    try:
        signals.worker_init.send(sender=_Worker(app, alias))
        signals.worker_process_init.send(sender="host")
        assert invoke._native_time_limits is native
    finally:
        invoke.use_native_time_limits(False)


@pytest.mark.parametrize(("wait", "blocks"), [("wait_c", True), ("wait_poll", False)])
def test_psycopg_imported_before_gevent_patching_is_found_out(
    monkeypatch: pytest.MonkeyPatch, wait: str, blocks: bool
) -> None:
    def wait_c() -> None: ...

    def wait_poll() -> None: ...

    fake = SimpleNamespace(wait_c=wait_c, wait_poll=wait_poll, wait=locals()[wait])
    monkeypatch.setitem(sys.modules, "psycopg.waiting", fake)
    assert psycopg_blocks_gevent() is blocks


def test_no_psycopg_imported_yet_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "psycopg.waiting", raising=False)
    assert psycopg_blocks_gevent() is False


def test_celerys_soft_limit_arriving_first_cancels_an_async_handler() -> None:
    """On prefork, Celery's soft time limit (a signal in the main thread) may come before
    fluxcelery's own timer: the coroutine is cancelled then too, not left running."""
    cancelled = threading.Event()

    async def handler() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def soft_limit(signum: int, frame: object) -> None:
        raise SoftTimeLimitExceeded()

    invoker = invoke.Invoker()
    previous = signal.signal(signal.SIGALRM, soft_limit)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(StepTimeout, match="soft time limit"):
            invoker.call(handler, timeout=5)
        assert cancelled.wait(2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        invoker.close()


def _slow_query(ctx) -> str:
    ctx.session.execute(sa.text("SELECT pg_sleep(3) /* flux-pool-limits */"))
    return "done"


def _queries_running(storage: SqlStorage) -> int:
    with storage.engine.connect() as conn:
        q = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
        return int(
            conn.exec_driver_sql(q, ("SELECT pg_sleep(3) /* flux-pool-limits */%",)).scalar() or 0
        )


@pytest.mark.postgres
@pytest.mark.parametrize("path", ["soft_limit", "alarm", "helper_thread"])
def test_a_commit_step_stopped_mid_query_fails_at_its_timeout_and_cancels_the_query(
    make_engine, pg_storage: SqlStorage, path: str
) -> None:
    """The three ways a timeout stops a sync handler (celery/pools.py), 3 s into a query
    under a 1 s timeout: Celery's soft limit raised in the main thread (prefork; the
    connection cannot take a ROLLBACK and is dropped), fluxcelery's SIGALRM (solo), a
    helper thread (threads, gevent; the ROLLBACK waits for the cancelled query). Each fails
    the step at 1 s, and PostgreSQL stops the query."""
    engine = make_engine(pg_storage)
    wf = workflow(f"pool-limits-query-{path}").commit("q", _slow_query, timeout=1, retries=0)
    out: dict[str, Any] = {}
    timer: threading.Timer | None = None

    def run() -> None:
        began = time.monotonic()
        out["state"] = engine.execute(wf)
        out["took"] = time.monotonic() - began

    previous = signal.getsignal(signal.SIGUSR1)
    try:
        if path == "soft_limit":  # as billiard does in a prefork child: SIGUSR1 raises
            signal.signal(signal.SIGUSR1, _raise_soft_limit)
            invoke.use_native_time_limits()
            timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGUSR1))
            timer.start()
            run()
        elif path == "alarm":
            run()
        else:
            thread = threading.Thread(target=run)
            thread.start()
            thread.join(10)
    finally:
        invoke.use_native_time_limits(False)
        if timer is not None:
            timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    state = out["state"]
    assert state.status == RunStatus.FAILED
    assert (state.error or "").startswith("StepTimeout: step 'q'"), state.error
    assert out["took"] < 2.5
    # stopped, not left to end at 3 s
    wait_until(lambda: _queries_running(pg_storage) == 0, timeout=1, what="the query to stop")


def _raise_soft_limit(signum: int, frame: object) -> None:
    raise SoftTimeLimitExceeded()
