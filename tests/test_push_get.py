"""``RunHandle.get`` is woken by the write that settles the run on PostgreSQL (LISTEN /
NOTIFY, one listening connection per process) and polls elsewhere."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import fluxcelery.handle as handle_module
from fluxcelery import FluxEngine, RunHandle, RunStatus, wait_for, workflow
from fluxcelery.storage import pglisten
from fluxcelery.storage.pgdirect import conninfo
from fluxcelery.storage.pglisten import APPLICATION_NAME
from fluxcelery.storage.postgres import PAYLOAD_STEPS, settled_from_payload


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


def _started(engine: FluxEngine, name: str) -> tuple[threading.Event, threading.Thread]:
    """A gated run ``<name>-1`` started in the background and stored; set the gate to end it."""
    wf, gate = _gated(name)
    thread = _run_in_background(engine, wf, f"{name}-1")
    while engine.get(f"{name}-1") is None:
        time.sleep(0.01)
    return gate, thread


def _get_in_thread(
    engine: FluxEngine, run_id: str, name: str | None = None
) -> tuple[threading.Thread, dict[str, Any]]:
    """``RunHandle.get`` on a thread of its own; its result lands in the dict under "r"."""
    got: dict[str, Any] = {}
    waiting = threading.Thread(
        target=lambda: got.update(r=RunHandle(engine, run_id).get(timeout=30)), name=name
    )
    waiting.start()
    return waiting, got


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
    gate, thread = _started(engine, "push-get")
    waiting, got = _get_in_thread(engine, "push-get-1")
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


def _payloads(storage: Any, start: Any) -> list[str]:
    """The settle notifications sent while ``start()`` runs."""
    with psycopg.connect(conninfo(storage.url), autocommit=True) as conn:
        conn.execute("LISTEN flux_settled")
        start()
        return [n.payload for n in conn.notifies(timeout=0.5)]


def _failing(ctx: Any) -> None:
    raise ValueError("card declined: ünïcode")


def test_the_notification_carries_a_small_run_as_stored(pg_storage: Any) -> None:
    engine = FluxEngine(storage=pg_storage)
    completed = (
        workflow("carry-ok")
        .step("a", lambda ctx: {"é": "😀", "n": 1.5})
        .step("b", lambda ctx: [1, None, "s"])
        .commit("c", lambda ctx: "landed")  # settles inside the commit step's transaction
    )
    failed = (
        workflow("carry-fail")
        .step("a", lambda ctx: 1, compensate=lambda ctx: None)
        .step("b", _failing, retries=0)
    )
    suspended = (
        workflow("carry-wait")
        .step("a", lambda ctx: 1)
        .step("ask", lambda ctx: wait_for("go", timeout=60))
    )
    items = workflow("carry-items").for_each(
        "each", lambda ctx: ctx.item * 2, items=lambda ctx: [1, 2, 3]
    )
    ids: list[str] = []

    def start() -> None:
        for wf in (completed, failed, suspended, items):
            ids.append(engine.execute(wf, {"who": "ann"}).id)

    payloads = _payloads(pg_storage, start)
    carried = dict(settled_from_payload(p) for p in payloads)
    assert set(carried) == set(ids)
    for run_id, state in carried.items():
        assert state is not None, run_id
        assert state == pg_storage.load_run(run_id)  # every field, every step row
    statuses = [carried[i].status for i in ids]  # type: ignore[union-attr]
    assert statuses == [
        RunStatus.COMPLETED,
        RunStatus.ROLLED_BACK,
        RunStatus.SUSPENDED,
        RunStatus.COMPLETED,
    ]


def test_a_run_too_big_for_a_notification_sends_its_id(pg_storage: Any) -> None:
    engine = FluxEngine(storage=pg_storage)
    big_output = workflow("carry-big").step("a", lambda ctx: "x" * 20_000)
    many_steps = workflow("carry-many")
    for i in range(PAYLOAD_STEPS + 1):
        many_steps = many_steps.step(f"s{i}", lambda ctx: None)
    ids: list[str] = []

    def start() -> None:
        for wf, run_id in ((big_output, '{"id": "odd"}'), (many_steps, None)):
            result = engine.execute(wf, {}, run_id=run_id)
            assert result.status == RunStatus.COMPLETED  # the settling write landed
            ids.append(result.id)

    payloads = _payloads(pg_storage, start)
    assert payloads == ids  # the id alone, even one that looks like JSON
    assert [settled_from_payload(p) for p in payloads] == [(i, None) for i in ids]


def test_get_returns_the_carried_run_without_reading_it(
    pg_storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handle_module, "PUSH_RECHECK", 60.0)
    engine = FluxEngine(storage=pg_storage)
    gate, thread = _started(engine, "push-carried")
    reads: list[str] = []
    real_load = pg_storage.load_run

    def load_run(run_id: str) -> Any:
        reads.append(threading.current_thread().name)
        return real_load(run_id)

    monkeypatch.setattr(pg_storage, "load_run", load_run)
    waiting, got = _get_in_thread(engine, "push-carried-1", name="producer")
    time.sleep(0.3)
    gate.set()
    waiting.join(30)
    thread.join(30)
    assert got["r"].status == RunStatus.COMPLETED and got["r"].results["after"] == 1
    assert reads.count("producer") == 1  # the read before the wait; none after the wake


def test_the_listener_closes_when_nobody_waits_and_opens_again(
    pg_storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pglisten, "IDLE_CLOSE", 0.3)
    engine = FluxEngine(storage=pg_storage)
    wf, gate = _gated("push-idle")
    gate.set()
    engine.execute(wf, {}, run_id="push-idle-1")
    assert RunHandle(engine, "push-idle-1").get(timeout=10).status == RunStatus.COMPLETED
    deadline = time.monotonic() + 10
    while _listeners(pg_storage) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _listeners(pg_storage) == 0  # closed: nobody waits in this process
    monkeypatch.setattr(handle_module, "PUSH_RECHECK", 60.0)
    gate2, thread = _started(engine, "push-idle-again")
    waiting, got = _get_in_thread(engine, "push-idle-again-1")
    time.sleep(0.3)
    assert _listeners(pg_storage) == 1  # a waiter again: listening again
    gate2.set()
    waiting.join(10)  # woken by the notification (the re-read interval is 60 s)
    thread.join(30)
    assert got["r"].status == RunStatus.COMPLETED
