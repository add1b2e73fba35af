"""Cancellation (SPEC section 12), in process: no step starts after a cancel; a running
attempt finishes and its outcome is recorded, or with ``terminate`` is interrupted and its
writes are discarded; ``compensate`` undoes the completed steps in reverse order (after the
running attempt settled) and the run ends ``cancelled``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from fluxcelery import (
    FluxEngine,
    InvalidTransition,
    RunStatus,
    SqlStorage,
    StepStatus,
    wait_for,
    workflow,
)

S = StepStatus


class Gate:
    """A step that says it started and waits to be released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def wait(self) -> None:
        self.started.set()
        assert self.release.wait(30), "never released"


@pytest.fixture
def background() -> Iterator[Any]:
    """Run ``engine.execute`` on a thread (as a web request or a script would); joined."""
    threads: list[threading.Thread] = []
    results: dict[str, Any] = {}

    def start(engine: FluxEngine, wf: Any, run_id: str, data: Any = None) -> threading.Thread:
        def go() -> None:
            try:
                results[run_id] = engine.execute(wf, data or {}, run_id=run_id)
            except BaseException as exc:  # shown by the test that reads it
                results[run_id] = exc

        thread = threading.Thread(target=go, name=f"run-{run_id}")
        thread.start()
        threads.append(thread)
        return thread

    start.results = results  # type: ignore[attr-defined]
    yield start
    for thread in threads:
        thread.join(30)


def _types(engine: FluxEngine, run_id: str) -> list[str]:
    return [e.type for e in engine.traces(run_id=run_id)]


# -- no option: the running attempt finishes and is recorded ---------------------------------
@pytest.mark.parametrize("fails", [False, True], ids=["completes", "fails"])
def test_a_running_attempt_finishes_and_is_recorded_and_nothing_follows(
    any_storage: Any, background: Any, fails: bool
) -> None:
    engine = FluxEngine(storage=any_storage)
    gate, after = Gate(), []

    def work(ctx: Any) -> str:
        gate.wait()
        if fails:
            raise RuntimeError("the attempt failed on its own")
        return "worked"

    wf = workflow("cancel-finish").step("work", work, retries=0).step("after", after.append)
    thread = background(engine, wf, "cf-1")
    assert gate.started.wait(10)
    state = engine.cancel("cf-1", "customer asked")
    assert state.status == RunStatus.CANCELLED and state.cancel_reason == "customer asked"
    assert state.steps[0].status == S.RUNNING  # still running: its outcome will be recorded
    gate.release.set()
    thread.join(10)
    final = engine.get("cf-1")
    assert final is not None and final.status == RunStatus.CANCELLED
    work_step = final.step("work")
    if fails:
        assert work_step.status == S.FAILED and "failed on its own" in (work_step.error or "")
    else:
        assert (work_step.status, work_step.output) == (S.COMPLETED, "worked")
    assert final.step("after").status == S.PENDING and after == []  # nothing followed
    outcome = [e for e in engine.traces(run_id="cf-1") if e.step == "work"][-1]
    assert outcome.type == ("step:error" if fails else "step:complete")
    assert outcome.meta == {"after_cancel": True}


def test_a_suspended_run_is_cancelled_and_its_wait_fails(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage)
    wf = workflow("cancel-wait").step("ask", lambda ctx: wait_for("ok")).step("after", len)
    run = engine.execute(wf, {})
    state = engine.cancel(run.id, "not needed")
    assert state.status == RunStatus.CANCELLED and state.error == "Cancelled: not needed"
    assert state.steps[0].status == S.FAILED
    cancel = [e for e in engine.traces(run_id=run.id) if e.type == "workflow:cancel"]
    assert [e.meta for e in cancel] == [{"reason": "not needed"}]
    with pytest.raises(InvalidTransition):
        engine.cancel(run.id)  # a finished run


# -- terminate: interrupted, writes discarded -------------------------------------------------
@pytest.mark.parametrize("kind", ["thread", "async"])
def test_terminate_interrupts_the_attempt_in_this_process(
    any_storage: Any, background: Any, kind: str
) -> None:
    engine = FluxEngine(storage=any_storage)
    started, after = threading.Event(), []

    def slow(ctx: Any) -> str:
        ctx.data["written"] = True  # discarded: the attempt never succeeds
        started.set()
        time.sleep(30)
        return "too late"

    async def slow_async(ctx: Any) -> str:
        ctx.data["written"] = True
        started.set()
        await asyncio.sleep(30)
        return "too late"

    handler = slow if kind == "thread" else slow_async
    # A timeout routes a plain function through a helper thread off the main thread.
    wf = (
        workflow(f"cancel-term-{kind}")
        .step("slow", handler, timeout=60)
        .step("after", after.append)
    )
    thread = background(engine, wf, f"ct-{kind}")
    assert started.wait(10)
    began = time.monotonic()
    state = engine.cancel(f"ct-{kind}", "stop now", terminate=True)
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - began < 5
    final = engine.get(f"ct-{kind}")
    assert final is not None and final.status == RunStatus.CANCELLED
    assert state.steps[0].status == final.steps[0].status == S.FAILED
    assert final.steps[0].error == "Cancelled: stop now (attempt terminated)"
    assert final.data == {} and after == []
    assert _types(engine, f"ct-{kind}").count("step:complete") == 0


def test_a_commit_steps_effect_lands_with_its_outcome_or_not_at_all(
    pg_storage: SqlStorage, background: Any
) -> None:
    """On PostgreSQL (on SQLite the commit's transaction holds the database's one write lock,
    so a cancel waits for the step to end)."""
    storage = pg_storage
    effects = sa.Table("cancel_effects", sa.MetaData(), sa.Column("run_id", sa.String(64)))
    effects.create(storage.engine, checkfirst=True)
    engine = FluxEngine(storage=storage)
    gate = Gate()

    def record(ctx: Any) -> None:
        ctx.session.execute(effects.insert().values(run_id=ctx.run_id))
        ctx.session.flush()
        gate.wait()

    def count(run_id: str) -> int:
        with storage.engine.connect() as conn:
            q = sa.select(sa.func.count()).select_from(effects).where(effects.c.run_id == run_id)
            return int(conn.execute(q).scalar() or 0)

    wf = workflow("cancel-commit").commit("record", record)
    for run_id, terminate in (("cc-keep", False), ("cc-drop", True)):
        gate.started.clear()
        gate.release.clear()
        thread = background(engine, wf, run_id)
        assert gate.started.wait(10)
        engine.cancel(run_id, "enough", terminate=terminate)
        gate.release.set()  # a plain function called directly cannot be interrupted
        thread.join(10)
        step = engine.get(run_id).step("record")  # type: ignore[union-attr]
        if terminate:  # its outcome is discarded with its transaction
            assert (step.status, count(run_id)) == (S.FAILED, 0)
        else:  # recorded with its effect, in one transaction
            assert (step.status, count(run_id)) == (S.COMPLETED, 1)


# -- compensate ---------------------------------------------------------------------------
def _saga(undone: list[str], gate: Gate | None = None) -> Any:
    def book(name: str) -> Any:
        def run(ctx: Any) -> str:
            if gate is not None and name == "hotel":
                gate.wait()
            return f"{name}-booked"

        return run

    def undo(name: str) -> Any:
        return lambda ctx: undone.append(name)

    return (
        workflow(f"cancel-saga-{'running' if gate else 'waiting'}")
        .step("flight", book("flight"), compensate=undo("flight"))
        .step("hotel", book("hotel"), compensate=undo("hotel"))
        .step("confirm", lambda ctx: wait_for("confirmed"))
        .step("ship", lambda ctx: "shipped")
    )


def test_compensate_undoes_completed_steps_in_reverse_and_ends_cancelled(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage)
    undone: list[str] = []
    run = engine.execute(_saga(undone), {})
    assert run.status == RunStatus.SUSPENDED
    state = engine.cancel(run.id, "trip called off", compensate=True)
    assert state.status == RunStatus.CANCELLED and state.error == "Cancelled: trip called off"
    assert undone == ["hotel", "flight"]
    assert [s.status for s in state.steps] == [S.COMPENSATED, S.COMPENSATED, S.FAILED, S.PENDING]
    types = _types(engine, run.id)
    assert types[-5:] == [
        "workflow:cancel",
        "workflow:rollback_start",
        "step:compensate",
        "step:compensate",
        "workflow:rollback_complete",
    ]
    last = engine.traces(run_id=run.id)[-1]
    assert (last.status, last.meta) == ("cancelled", {"reason": "trip called off"})


def test_compensate_waits_for_the_running_attempt_then_undoes_it_first(
    any_storage: Any, background: Any
) -> None:
    engine = FluxEngine(storage=any_storage)
    undone: list[str] = []
    gate = Gate()
    thread = background(engine, _saga(undone, gate), "cs-run")
    assert gate.started.wait(10)
    state = engine.cancel("cs-run", "trip called off", compensate=True)
    assert state.status == RunStatus.ROLLING_BACK and undone == []  # waits for "hotel"
    gate.release.set()
    thread.join(10)
    final = engine.get("cs-run")
    assert final is not None and final.status == RunStatus.CANCELLED
    assert undone == ["hotel", "flight"]  # the attempt that finished is undone first
    assert final.step("confirm").status == S.PENDING  # nothing started after the cancel


def test_compensate_with_nothing_to_undo_just_cancels(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage)
    wf = workflow("cancel-nothing").step("ask", lambda ctx: wait_for("ok"))
    run = engine.execute(wf, {})
    state = engine.cancel(run.id, compensate=True)
    assert state.status == RunStatus.CANCELLED
    assert "workflow:rollback_start" not in _types(engine, run.id)


def test_a_redelivered_task_settles_a_lost_attempt_and_the_rollback_goes_on(
    any_storage: Any, background: Any
) -> None:
    """The worker running 'hotel' dies after a cancel that compensates: its task comes back
    (redelivered). The lost attempt fails, the waiting rollback starts, and the original
    attempt, should it end after all, changes nothing."""
    engine = FluxEngine(storage=any_storage)
    undone: list[str] = []
    gate = Gate()
    thread = background(engine, _saga(undone, gate), "cl-1")
    assert gate.started.wait(10)
    assert engine.cancel("cl-1", "off", compensate=True).status == RunStatus.ROLLING_BACK
    nxt = engine.runner.run_step("cl-1", 1, task_id="redelivered")  # as on a worker
    state = engine.get("cl-1")
    assert state is not None and state.step("hotel").status == S.FAILED
    assert (state.step("hotel").error or "").startswith("WorkerLost: step 'hotel'")
    engine.continue_run(state, nxt)  # what the task does with the next action
    gate.release.set()
    thread.join(10)
    final = engine.get("cl-1")
    assert final is not None and final.status == RunStatus.CANCELLED
    assert undone == ["flight"] and final.step("hotel").status == S.FAILED
