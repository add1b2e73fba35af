"""``RunHandle.get`` is woken by the write that settles the run on PostgreSQL (LISTEN /
NOTIFY, one listening connection per process) and polls elsewhere."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

import fluxcelery.handle as handle_module
from fluxcelery import FluxEngine, RunHandle, RunStatus, workflow
from fluxcelery.storage.pglisten import APPLICATION_NAME


def _gated(name: str) -> tuple[Any, threading.Event]:
    gate = threading.Event()

    def held(ctx: Any) -> str:
        assert gate.wait(30), "never released"
        return "done"

    return workflow(name).step("held", held).step("after", lambda ctx: 1), gate


def _run_in_background(engine: FluxEngine, wf: Any, run_id: str) -> threading.Thread:
    thread = threading.Thread(target=engine.execute, args=(wf, {}), kwargs={"run_id": run_id})
    thread.start()
    return thread


def _listeners(storage: Any) -> int:
    with storage.engine.connect() as conn:
        q = sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a")
        return int(conn.execute(q, {"a": APPLICATION_NAME}).scalar_one())


def test_a_settling_write_wakes_get_on_postgres(
    pg_storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the notification, get would re-read only every 60 s: it must return sooner.
    monkeypatch.setattr(handle_module, "PUSH_RECHECK", 60.0)
    engine = FluxEngine(storage=pg_storage)
    wf, gate = _gated("push-get")
    thread = _run_in_background(engine, wf, "push-get-1")
    handle = RunHandle(engine, "push-get-1")
    while engine.get("push-get-1") is None:
        time.sleep(0.01)
    got: dict[str, Any] = {}
    waiting = threading.Thread(target=lambda: got.update(r=handle.get(timeout=30)))
    waiting.start()
    time.sleep(0.3)  # get is parked in its wait now
    released = time.monotonic()
    gate.set()
    waiting.join(30)
    thread.join(30)
    assert got["r"].status == RunStatus.COMPLETED
    assert time.monotonic() - released < 10


def test_many_waiting_threads_share_one_listening_connection(pg_storage: Any) -> None:
    engine = FluxEngine(storage=pg_storage)
    wf, gate = _gated("push-many")
    ids = [f"push-many-{i}" for i in range(20)]
    threads = [_run_in_background(engine, wf, i) for i in ids]
    for run_id in ids:
        while engine.get(run_id) is None:
            time.sleep(0.01)
    before = _listeners(pg_storage)
    results: list[Any] = []
    waiters = [
        threading.Thread(target=lambda r=r: results.append(RunHandle(engine, r).get(timeout=30)))
        for r in ids
    ]
    for w in waiters:
        w.start()
    time.sleep(0.5)
    during = _listeners(pg_storage)
    gate.set()
    for t in waiters + threads:
        t.join(30)
    assert len(results) == 20 and all(r.status == RunStatus.COMPLETED for r in results)
    assert 1 <= during <= max(before, 1)  # this process: one listener, however many wait


def test_get_polls_where_nothing_pushes(sqlite_storage: Any) -> None:
    engine = FluxEngine(storage=sqlite_storage)
    assert sqlite_storage.settle_waiter("x") is None
    wf, gate = _gated("poll-get")
    thread = _run_in_background(engine, wf, "poll-get-1")
    while engine.get("poll-get-1") is None:
        time.sleep(0.01)
    threading.Timer(0.2, gate.set).start()
    assert RunHandle(engine, "poll-get-1").get(timeout=30).status == RunStatus.COMPLETED
    thread.join(30)


def test_push_can_be_turned_off(pg_storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX_PUSH_GET", "0")
    engine = FluxEngine(storage=pg_storage)
    assert engine.push_get is False
    done = engine.execute(workflow("push-off").step("a", lambda ctx: 1), {})
    assert RunHandle(engine, done.id).get(timeout=5).status == RunStatus.COMPLETED
