"""Optimistic concurrency, proven with real threads and processes on SQLite and PostgreSQL.

Every state change is ``UPDATE ... WHERE version = :read``; of several callers that read the
same version exactly one lands, the others get ``ConcurrentUpdate`` (they read before the
winner wrote) or ``InvalidTransition`` (they read after). The step after the contested change
must run exactly once, and a commit step's ``ctx.session`` writes must commit only with the
step's recorded completion.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from concurrency_workflows import collect_results, define_signal_workflow, signal_from_process
from helpers import event_types

from fluxcelery import (
    ConcurrentUpdate,
    FluxEngine,
    FluxError,
    InvalidTransition,
    RunStatus,
    SqlStorage,
    StepStatus,
    wait_for,
    workflow,
)

N_THREADS = 8
N_PROCESSES = 4
LOSER_ERRORS = (ConcurrentUpdate, InvalidTransition)


@pytest.fixture(params=["sqlite", "postgres"])
def sql_storage(request: pytest.FixtureRequest) -> Any:
    """Each SQL backend in turn. Overrides conftest's ``sql_storage``, which looks up a
    ``postgres_storage`` fixture that does not exist (the PostgreSQL one is ``pg_storage``)."""
    return request.getfixturevalue(
        {"sqlite": "sqlite_storage", "postgres": "pg_storage"}[request.param]
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Calls:
    """Thread-safe call counter for step handlers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def hit(self, name: str) -> int:
        with self._lock:
            self.counts[name] += 1
            return self.counts[name]


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(i)`` in ``n`` threads released together; "ok" or the exception, per thread."""
    barrier = threading.Barrier(n)
    outcomes: list[Any] = [None] * n

    def worker(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            fn(i)
        except BaseException as exc:  # collected and asserted on by the test
            outcomes[i] = exc
        else:
            outcomes[i] = "ok"

    threads = [threading.Thread(target=worker, args=(i,), name=f"racer-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    return outcomes


def single_winner(outcomes: list[Any]) -> int:
    """Exactly one "ok"; every other outcome is ConcurrentUpdate or InvalidTransition."""
    winners = [i for i, o in enumerate(outcomes) if o == "ok"]
    assert len(winners) == 1, f"expected exactly one winner: {outcomes!r}"
    for i, o in enumerate(outcomes):
        if i != winners[0]:
            assert isinstance(o, LOSER_ERRORS), f"racer {i}: unexpected outcome {o!r}"
            assert isinstance(o, FluxError)
    return winners[0]


SIGNAL_TRACE = [
    "workflow:start",
    "step:start",
    "step:complete",  # prepare
    "step:start",
    "step:suspend",  # approve
    "signal:received",
    "step:start",
    "step:complete",  # after
    "workflow:complete",
]


def signal_workflow(calls: Calls) -> Any:
    def prepare(ctx: Any) -> str:
        calls.hit("prepare")
        return "prepared"

    def approve(ctx: Any) -> Any:
        calls.hit("approve")
        return wait_for("go")

    def after(ctx: Any) -> dict[str, Any]:
        calls.hit("after")
        return {"signal": ctx.results["approve"]}

    return (
        workflow(unique("sig"))
        .step("prepare", prepare)
        .step("approve", approve)
        .step("after", after)
    )


def assert_signalled_once(engine: FluxEngine, run_id: str, payload: Any) -> None:
    final = engine.get(run_id)
    assert final is not None
    assert final.status is RunStatus.COMPLETED
    assert final.results["approve"] == payload
    assert final.results["after"] == {"signal": payload}
    assert [s.status for s in final.steps] == [StepStatus.COMPLETED] * 3
    assert event_types(engine, run_id) == SIGNAL_TRACE
    received = engine.traces(run_id=run_id, type="signal:received")
    assert len(received) == 1
    assert received[0].meta == {"signal": "go", "payload": payload}


# -- (a) many threads, one engine: signal ---------------------------------------------------------
def test_concurrent_signals_continue_the_run_exactly_once(
    sql_storage: SqlStorage, make_engine: Callable[..., FluxEngine]
) -> None:
    calls = Calls()
    wf = signal_workflow(calls)
    engine = make_engine(storage=sql_storage)
    suspended = engine.execute(wf, {"order": 1})
    assert suspended.status is RunStatus.SUSPENDED
    assert calls.counts == {"prepare": 1, "approve": 1}

    outcomes = race(N_THREADS, lambda i: engine.signal(suspended.id, "go", {"by": i}))
    winner = single_winner(outcomes)

    assert calls.counts == {"prepare": 1, "approve": 1, "after": 1}
    assert_signalled_once(engine, suspended.id, {"by": winner})


def test_signal_that_loses_the_race_raises_concurrent_update(
    sql_storage: SqlStorage,
    make_engine: Callable[..., FluxEngine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deterministic interleaving: A reads the suspended run, B signals and finishes the run,
    then A writes with the version it read."""
    calls = Calls()
    wf = signal_workflow(calls)
    engine = make_engine(storage=sql_storage)
    run_id = engine.execute(wf).id

    a_loaded = threading.Event()
    b_done = threading.Event()
    real_load = sql_storage.load_run
    a_thread: list[threading.Thread] = []

    def load_run(rid: str) -> Any:
        state = real_load(rid)
        if a_thread and threading.current_thread() is a_thread[0] and not a_loaded.is_set():
            a_loaded.set()
            assert b_done.wait(timeout=30)
        return state

    monkeypatch.setattr(sql_storage, "load_run", load_run)
    outcome: list[Any] = []

    def signal_a() -> None:
        try:
            engine.signal(run_id, "go", "from A")
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append("ok")

    a_thread.append(threading.Thread(target=signal_a))
    a_thread[0].start()
    assert a_loaded.wait(timeout=30)
    engine.signal(run_id, "go", "from B")
    b_done.set()
    a_thread[0].join(timeout=30)

    assert len(outcome) == 1
    assert isinstance(outcome[0], ConcurrentUpdate)
    assert calls.counts["after"] == 1
    assert_signalled_once(engine, run_id, "from B")


# -- (b) many threads, one engine: retry ----------------------------------------------------------
RETRY_TRACE = [
    "workflow:start",
    "step:start",
    "step:complete",  # first
    "step:start",
    "step:error",  # flaky, no retries left
    "workflow:error",
    "workflow:start",  # the retry
    "step:start",
    "step:complete",  # flaky again
    "step:start",
    "step:complete",  # last
    "workflow:complete",
]


def flaky_workflow(calls: Calls, failing: threading.Event) -> Any:
    def first(ctx: Any) -> int:
        calls.hit("first")
        return 1

    def flaky(ctx: Any) -> str:
        calls.hit("flaky")
        if failing.is_set():
            raise RuntimeError("flaky is down")
        return "up"

    def last(ctx: Any) -> str:
        calls.hit("last")
        return "done"

    return (
        workflow(unique("retry"))
        .step("first", first)
        .step("flaky", flaky, retries=0)
        .step("last", last)
    )


def test_concurrent_retries_rerun_the_failed_step_exactly_once(
    sql_storage: SqlStorage, make_engine: Callable[..., FluxEngine]
) -> None:
    calls = Calls()
    failing = threading.Event()
    failing.set()
    wf = flaky_workflow(calls, failing)
    engine = make_engine(storage=sql_storage)
    failed = engine.execute(wf)
    assert failed.status is RunStatus.FAILED
    assert failed.error == "RuntimeError: flaky is down"
    assert calls.counts == {"first": 1, "flaky": 1}

    failing.clear()
    outcomes = race(N_THREADS, lambda i: engine.retry(failed.id))
    single_winner(outcomes)

    assert calls.counts == {"first": 1, "flaky": 2, "last": 1}
    final = engine.get(failed.id)
    assert final is not None
    assert final.status is RunStatus.COMPLETED
    assert final.error is None
    assert final.results == {"first": 1, "flaky": "up", "last": "done"}
    assert final.step("flaky").attempts == 1
    assert event_types(engine, failed.id) == RETRY_TRACE
    starts = engine.traces(run_id=failed.id, type="workflow:start")
    assert [e.meta.get("retry") if e.meta else None for e in starts] == [None, True]


def test_retry_that_loses_the_race_raises_concurrent_update(
    sql_storage: SqlStorage,
    make_engine: Callable[..., FluxEngine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = Calls()
    failing = threading.Event()
    failing.set()
    wf = flaky_workflow(calls, failing)
    engine = make_engine(storage=sql_storage)
    run_id = engine.execute(wf).id
    failing.clear()

    a_loaded = threading.Event()
    b_done = threading.Event()
    real_load = sql_storage.load_run
    a_thread: list[threading.Thread] = []

    def load_run(rid: str) -> Any:
        state = real_load(rid)
        if a_thread and threading.current_thread() is a_thread[0] and not a_loaded.is_set():
            a_loaded.set()
            assert b_done.wait(timeout=30)
        return state

    monkeypatch.setattr(sql_storage, "load_run", load_run)
    outcome: list[Any] = []

    def retry_a() -> None:
        try:
            engine.retry(run_id)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append("ok")

    a_thread.append(threading.Thread(target=retry_a))
    a_thread[0].start()
    assert a_loaded.wait(timeout=30)
    engine.retry(run_id)
    b_done.set()
    a_thread[0].join(timeout=30)

    assert len(outcome) == 1
    assert isinstance(outcome[0], ConcurrentUpdate)
    assert calls.counts == {"first": 1, "flaky": 2, "last": 1}
    assert engine.get(run_id).status is RunStatus.COMPLETED  # type: ignore[union-attr]
    assert event_types(engine, run_id) == RETRY_TRACE


# -- (c) two engines on the same database (like two processes) ------------------------------------
def test_two_engines_racing_a_signal_continue_once(
    sql_storage: SqlStorage, make_engine: Callable[..., FluxEngine]
) -> None:
    calls = Calls()
    wf = signal_workflow(calls)
    first = make_engine(storage=sql_storage)
    second = make_engine(storage=SqlStorage(sql_storage.url))
    assert second.storage is not first.storage
    run_id = first.execute(wf).id
    assert second.get(run_id).status is RunStatus.SUSPENDED  # type: ignore[union-attr]

    engines = [first, second]
    outcomes = race(N_THREADS, lambda i: engines[i % 2].signal(run_id, "go", {"by": i}))
    winner = single_winner(outcomes)

    assert calls.counts == {"prepare": 1, "approve": 1, "after": 1}
    assert_signalled_once(first, run_id, {"by": winner})
    assert second.get(run_id) == first.get(run_id)


def test_two_engines_racing_a_retry_rerun_once(
    sql_storage: SqlStorage, make_engine: Callable[..., FluxEngine]
) -> None:
    calls = Calls()
    failing = threading.Event()
    failing.set()
    wf = flaky_workflow(calls, failing)
    first = make_engine(storage=sql_storage)
    second = make_engine(storage=SqlStorage(sql_storage.url))
    run_id = first.execute(wf).id
    failing.clear()

    engines = [first, second]
    outcomes = race(N_THREADS, lambda i: engines[i % 2].retry(run_id))
    single_winner(outcomes)

    assert calls.counts == {"first": 1, "flaky": 2, "last": 1}
    assert second.get(run_id).status is RunStatus.COMPLETED  # type: ignore[union-attr]
    assert event_types(first, run_id) == RETRY_TRACE


# -- (d) separate processes -----------------------------------------------------------------------
def test_processes_racing_a_signal_continue_once(
    sql_storage: SqlStorage, make_engine: Callable[..., FluxEngine], tmp_path: Path
) -> None:
    name = unique("proc-sig")
    wf = define_signal_workflow(name)
    counter = tmp_path / "after-calls.txt"
    engine = make_engine(storage=sql_storage)
    suspended = engine.execute(wf, {"counter": str(counter)})
    assert suspended.status is RunStatus.SUSPENDED
    assert not counter.exists()

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(N_PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=signal_from_process, args=(sql_storage.url, suspended.id, name, barrier, results)
        )
        for _ in range(N_PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = dict(collect_results(results, procs, timeout=90))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():  # only our own children
                p.kill()
    assert [p.exitcode for p in procs] == [0] * N_PROCESSES
    assert sorted(outcomes) == sorted(p.pid for p in procs)

    winners = [pid for pid, o in outcomes.items() if o == "ok"]
    assert len(winners) == 1, outcomes
    losers = [o for pid, o in outcomes.items() if pid != winners[0]]
    assert all(o in ("ConcurrentUpdate", "InvalidTransition") for o in losers), outcomes

    assert counter.read_text().splitlines() == [str(winners[0])]
    final = engine.get(suspended.id)
    assert final is not None
    assert final.status is RunStatus.COMPLETED
    assert final.results["after"] == {"by": winners[0]}
    assert final.results["approve"] == {"by": winners[0]}
    assert event_types(engine, suspended.id) == SIGNAL_TRACE


# -- (e) commit steps: ctx.session writes commit exactly once -------------------------------------
@pytest.fixture
def effects(sql_storage: SqlStorage) -> Iterator[sa.Table]:
    """A table of the test's own that commit steps write to through ``ctx.session``."""
    md = sa.MetaData()
    table = sa.Table(
        f"effects_{uuid.uuid4().hex[:8]}",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
    )
    md.create_all(sql_storage.engine)
    yield table
    md.drop_all(sql_storage.engine)


def effect_rows(storage: SqlStorage, table: sa.Table, run_id: str) -> list[tuple[str, int]]:
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.run_id, table.c.attempt)
            .where(table.c.run_id == run_id)
            .order_by(table.c.id)
        )
        return [(r.run_id, r.attempt) for r in rows]


def commit_workflow(
    calls: Calls, table: sa.Table, before_write: Callable[[Any], None] | None = None
) -> Any:
    def reserve(ctx: Any) -> str:
        calls.hit("reserve")
        return "reserved"

    def write(ctx: Any) -> dict[str, int]:
        calls.hit("write")
        if before_write is not None:
            before_write(ctx)
        ctx.session.execute(table.insert().values(run_id=ctx.run_id, attempt=ctx.attempt))
        return {"attempt": ctx.attempt}

    def done(ctx: Any) -> str:
        calls.hit("done")
        return "done"

    return (
        workflow(unique("commit"))
        .step("reserve", reserve)
        .commit("write", write)
        .step("done", done)
    )


def test_commit_step_writes_its_row_exactly_once(
    sql_storage: SqlStorage, effects: sa.Table, make_engine: Callable[..., FluxEngine]
) -> None:
    calls = Calls()
    engine = make_engine(storage=sql_storage)
    result = engine.execute(commit_workflow(calls, effects))
    assert result.status is RunStatus.COMPLETED
    assert result.results == {"reserve": "reserved", "write": {"attempt": 1}, "done": "done"}
    assert effect_rows(sql_storage, effects, result.id) == [(result.id, 1)]
    assert calls.counts == {"reserve": 1, "write": 1, "done": 1}


def test_commit_step_that_loses_the_race_rolls_back_its_session_writes(
    sql_storage: SqlStorage, effects: sa.Table, make_engine: Callable[..., FluxEngine]
) -> None:
    """While the handler runs, another process bumps the run's version: the step's completion
    does not land, so the row the handler wrote through ctx.session is rolled back."""
    calls = Calls()
    bumped: list[int] = []

    def bump_version_elsewhere(ctx: Any) -> None:
        if ctx.attempt != 1:
            return
        other = SqlStorage(sql_storage.url)
        try:
            state = other.load_run(ctx.run_id)
            assert state is not None
            assert other.save_run(state, state.version, [], []) is True
            bumped.append(state.version)
        finally:
            other.close()

    engine = make_engine(storage=sql_storage)
    wf = commit_workflow(calls, effects, before_write=bump_version_elsewhere)
    lost = engine.execute(wf, run_id=unique("lost"))

    assert len(bumped) == 1
    assert effect_rows(sql_storage, effects, lost.id) == []
    assert lost.status is RunStatus.RUNNING  # the attempt was discarded, nothing recorded
    write = lost.step("write")
    assert write.status is StepStatus.RUNNING
    assert write.attempts == 1
    assert write.output is None
    assert calls.counts == {"reserve": 1, "write": 1}
    assert event_types(engine, lost.id) == [
        "workflow:start",
        "step:start",
        "step:complete",
        "step:start",
    ]

    # Resuming (what a redelivered task does) runs the commit again; now it lands, once.
    engine.resume(lost.id)
    final = engine.get(lost.id)
    assert final is not None
    assert final.status is RunStatus.COMPLETED
    assert effect_rows(sql_storage, effects, lost.id) == [(lost.id, 2)]
    assert final.results["write"] == {"attempt": 2}
    assert calls.counts == {"reserve": 1, "write": 2, "done": 1}
    assert len(engine.traces(run_id=lost.id, type="step:complete")) == 3


def test_two_concurrent_attempts_of_a_commit_step_write_one_row(
    sql_storage: SqlStorage, effects: sa.Table, make_engine: Callable[..., FluxEngine]
) -> None:
    """Attempt 1 is still inside its handler when a second worker (a redelivery) starts
    attempt 2 and completes the step. Attempt 1 then writes and tries to complete: it loses,
    and its row is rolled back. Exactly one row, from attempt 2."""
    calls = Calls()
    in_handler = threading.Event()
    second_done = threading.Event()

    def hold_first_attempt(ctx: Any) -> None:
        if ctx.attempt == 1:
            in_handler.set()
            assert second_done.wait(timeout=30)

    engine = make_engine(storage=sql_storage)
    wf = commit_workflow(calls, effects, before_write=hold_first_attempt)
    run_id = unique("redeliver")
    first_result: list[Any] = []
    first = threading.Thread(target=lambda: first_result.append(engine.execute(wf, run_id=run_id)))
    first.start()
    try:
        assert in_handler.wait(timeout=30)
        engine.resume(run_id)  # the second worker: attempt 2 runs and lands
        assert effect_rows(sql_storage, effects, run_id) == [(run_id, 2)]
    finally:
        second_done.set()
        first.join(timeout=30)
    assert not first.is_alive()

    assert effect_rows(sql_storage, effects, run_id) == [(run_id, 2)]
    final = engine.get(run_id)
    assert final is not None
    assert final.status is RunStatus.COMPLETED
    assert final.step("write").attempts == 2
    assert final.results["write"] == {"attempt": 2}
    assert calls.counts == {"reserve": 1, "write": 2, "done": 1}
    assert first_result[0].status is RunStatus.COMPLETED
    completes = engine.traces(run_id=run_id, type="step:complete")
    assert [e.step for e in completes] == ["reserve", "write", "done"]
    starts = engine.traces(
        run_id=run_id,
        type="step:start",
    )
    assert [(e.step, e.attempt) for e in starts] == [
        ("reserve", 1),
        ("write", 1),
        ("write", 2),
        ("done", 1),
    ]
