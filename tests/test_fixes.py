"""SPEC section 10: the Gravito Flux gaps fluxcelery closes, one test (or a few) per fix."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from helpers import event_types

from fluxcelery import (
    Backoff,
    DefinitionChanged,
    FluxEngine,
    FluxError,
    IdempotencyConflict,
    InvalidTransition,
    MemoryStorage,
    NonRetryableError,
    RunStatus,
    StepStatus,
    wait_for,
    workflow,
)
from fluxcelery.core.records import utcnow
from fluxcelery.runner import invoke
from fluxcelery.testing import FluxClock

R = RunStatus
S = StepStatus
HOOKS = ("step_start", "step_complete", "step_error", "workflow_complete", "workflow_error")


def noop(ctx: Any) -> None:
    return None


def fail_with(message: str, exc: type[BaseException] = RuntimeError) -> Callable[[Any], Any]:
    def handler(ctx: Any) -> Any:
        raise exc(message)

    return handler


def seed(ctx: Any) -> None:
    ctx.data["seed"] = 1


# ---------------------------------------------------------------------------------------
# Timeouts cancel and discard late writes
# ---------------------------------------------------------------------------------------


@pytest.fixture(params=["alarm", "thread"])
def sync_timeout_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a sync handler is timed out on the calling thread.

    pytest-timeout owns SIGALRM, so by default the invoker abandons the handler on a helper
    thread; "alarm" lets the invoker take SIGALRM (real interruption) for this test.
    """
    if request.param == "alarm":
        monkeypatch.setattr(invoke, "_alarm_usable", lambda: True)
    else:
        monkeypatch.setattr(invoke, "_alarm_usable", lambda: False)
    return str(request.param)


def test_timeout_sync_handler_late_write_discarded(
    engine: FluxEngine, sync_timeout_path: str
) -> None:
    seen: list[dict[str, Any]] = []
    late_written = threading.Event()

    def slow(ctx: Any) -> None:
        seen.append(dict(ctx.data))
        if ctx.attempt == 1:
            ctx.data["early"] = True
            try:
                time.sleep(0.2)
            finally:
                ctx.data["late"] = True  # written after the timeout fired
                late_written.set()
        ctx.data["done_on"] = ctx.attempt

    wf = (
        workflow(f"fix-timeout-sync-{sync_timeout_path}")
        .step("seed", seed)
        .step("slow", slow, timeout=0.05, retries=1)
    )
    started = time.monotonic()
    result = engine.execute(wf)
    assert time.monotonic() - started < 0.18  # the step did not wait for the handler
    assert result.status == R.COMPLETED
    assert late_written.wait(1)
    time.sleep(0.02)
    assert seen == [{"seed": 1}, {"seed": 1}]  # attempt 2 does not see attempt 1's writes
    assert result.data == {"seed": 1, "done_on": 2}
    assert engine.get(result.id).data == {"seed": 1, "done_on": 2}  # type: ignore[union-attr]
    retry = engine.traces(run_id=result.id, type="step:retry")
    assert [(e.step, e.attempt) for e in retry] == [("slow", 1)]
    assert retry[0].error is not None
    assert retry[0].error.startswith("StepTimeout: step 'slow' timed out after 0.05s")
    if sync_timeout_path == "alarm":
        assert retry[0].error == "StepTimeout: step 'slow' timed out after 0.05s"


def test_timeout_sync_handler_failed_run_keeps_previous_data(
    engine: FluxEngine, sync_timeout_path: str
) -> None:
    late_written = threading.Event()

    def slow(ctx: Any) -> None:
        ctx.data["seed"] = "overwritten"
        try:
            time.sleep(0.2)
        finally:
            ctx.data["late"] = True
            late_written.set()

    wf = (
        workflow(f"fix-timeout-fail-{sync_timeout_path}")
        .step("seed", seed)
        .step("slow", slow, timeout=0.05, retries=0)
    )
    result = engine.execute(wf)
    assert result.status == R.FAILED
    assert result.error is not None
    assert result.error.startswith("StepTimeout: step 'slow' timed out after 0.05s")
    assert late_written.wait(1)
    time.sleep(0.02)
    assert engine.get(result.id).data == {"seed": 1}  # type: ignore[union-attr]


def test_timeout_async_handler_cancelled_and_late_write_discarded(engine: FluxEngine) -> None:
    seen: list[dict[str, Any]] = []
    cancelled: list[bool] = []

    async def slow(ctx: Any) -> None:
        seen.append(dict(ctx.data))
        if ctx.attempt == 1:
            ctx.data["early"] = True
            try:
                await asyncio.sleep(0.3)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            finally:
                ctx.data["late"] = True
        ctx.data["done_on"] = ctx.attempt

    wf = (
        workflow("fix-timeout-async").step("seed", seed).step("slow", slow, timeout=0.05, retries=1)
    )
    started = time.monotonic()
    result = engine.execute(wf)
    assert time.monotonic() - started < 0.25
    assert result.status == R.COMPLETED
    assert cancelled == [True]  # the coroutine was really cancelled
    assert seen == [{"seed": 1}, {"seed": 1}]
    assert result.data == {"seed": 1, "done_on": 2}
    retry = engine.traces(run_id=result.id, type="step:retry")
    assert retry[0].error is not None
    assert retry[0].error.startswith("StepTimeout: step 'slow' timed out after 0.05s")


def test_timeout_abandoned_thread_late_write_discarded(engine: FluxEngine) -> None:
    # Off the main thread a sync handler cannot be interrupted: it is abandoned. Its late
    # writes still never reach the stored data or the next attempt.
    late_written = threading.Event()
    seen: list[dict[str, Any]] = []

    def slow(ctx: Any) -> None:
        seen.append(dict(ctx.data))
        if ctx.attempt == 1:
            time.sleep(0.15)
            ctx.data["late"] = True
            late_written.set()
            return
        ctx.data["done_on"] = ctx.attempt

    wf = (
        workflow("fix-timeout-thread")
        .step("seed", seed)
        .step("slow", slow, timeout=0.05, retries=1)
    )
    out: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: out.setdefault("result", engine.execute(wf)))
    runner.start()
    runner.join(2)
    result = out["result"]
    assert result.status == R.COMPLETED
    assert late_written.wait(1)
    time.sleep(0.02)
    assert seen == [{"seed": 1}, {"seed": 1}]
    assert engine.get(result.id).data == {"seed": 1, "done_on": 2}  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------
# Commit steps: once-only
# ---------------------------------------------------------------------------------------


def _commit_workflow(name: str, counts: dict[str, int]) -> Any:
    def charge(ctx: Any) -> str:
        counts["charge"] += 1
        ctx.data["charged"] = True
        return f"receipt:{ctx.idempotency_key}"

    def ship(ctx: Any) -> str:
        counts["ship"] += 1
        if counts["ship"] == 1:
            raise NonRetryableError("carrier down")
        return "shipped"

    return workflow(name).step("prepare", noop).commit("charge", charge).step("ship", ship)


@pytest.mark.parametrize("from_step", [None, "prepare", "charge", "ship"])
def test_commit_step_not_rerun_by_retry(engine: FluxEngine, from_step: str | None) -> None:
    counts = {"charge": 0, "ship": 0}
    wf = _commit_workflow(f"fix-commit-{from_step}", counts)
    first = engine.execute(wf)
    assert first.status == R.FAILED
    assert counts == {"charge": 1, "ship": 1}
    n = len(event_types(engine, first.id))

    result = engine.retry(first.id, from_step=from_step).get(timeout=5)
    assert result.status == R.COMPLETED
    assert counts == {"charge": 1, "ship": 2}
    assert result.results["charge"] == f"receipt:{first.id}:charge"
    assert result.step("charge").attempts == 1
    later = engine.traces(run_id=first.id)[n:]
    skipped = [e for e in later if e.type == "step:skipped"]
    if from_step in ("prepare", "charge"):
        assert [(e.step, e.kind) for e in skipped] == [("charge", "commit")]
        assert skipped[0].meta is not None
        assert skipped[0].meta["reason"] == "already completed"
    else:
        assert skipped == []  # retry started after the commit step
    assert not any(e.type == "step:start" and e.step == "charge" for e in later)


# ---------------------------------------------------------------------------------------
# Compensation: retried, continues past a failing compensator, retry re-attempts it
# ---------------------------------------------------------------------------------------


def _saga(name: str, order: list[str], broken: dict[str, bool]) -> Any:
    def comp(step: str) -> Callable[[Any], None]:
        def undo(ctx: Any) -> None:
            order.append(step)
            if broken.get(step):
                raise RuntimeError(f"cannot undo {step}")

        return undo

    return (
        workflow(name)
        .step("s1", noop, compensate=comp("s1"), retries=0)
        .step("s2", noop, compensate=comp("s2"), retries=0)
        .step("s3", noop, compensate=comp("s3"), retries=0)
        .step("s4", fail_with("Original error"), retries=0)
    )


def test_compensation_continues_past_failure_then_retry_rolls_back(engine: FluxEngine) -> None:
    order: list[str] = []
    broken = {"s2": True}
    first = engine.execute(_saga("fix-comp-continue", order, broken))
    assert first.status == R.FAILED
    assert order == ["s3", "s2", "s1"]  # s1 still compensated after s2's failure
    assert [s.status.value for s in first.steps] == [
        "compensated",
        "compensation_failed",
        "compensated",
        "failed",
    ]
    assert first.error is not None
    assert "'s2'" in first.error
    assert "Original error" in first.error
    assert event_types(engine, first.id)[-1] == "workflow:error"

    broken["s2"] = False
    n = len(event_types(engine, first.id))
    result = engine.retry(first.id).get(timeout=5)
    assert result.status == R.ROLLED_BACK
    assert order == ["s3", "s2", "s1", "s2"]  # only the failed compensation re-attempted
    assert [s.status.value for s in result.steps] == [
        "compensated",
        "compensated",
        "compensated",
        "failed",
    ]
    later = engine.traces(run_id=first.id)[n:]
    assert [e.type for e in later] == [
        "workflow:rollback_start",
        "step:compensate",
        "workflow:rollback_complete",
        "workflow:error",
    ]
    assert later[1].step == "s2"
    assert later[-1].status == "rolled_back"


def test_compensation_retry_success_reports_original_error(engine: FluxEngine) -> None:
    # A rolled_back run's error is the step failure that caused the rollback (as on the
    # normal path: test_t37). Once every compensation succeeded, the error must not claim a
    # compensation failed.
    order: list[str] = []
    broken = {"s2": True}
    first = engine.execute(_saga("fix-comp-error-text", order, broken))
    assert first.status == R.FAILED
    broken["s2"] = False
    result = engine.retry(first.id).get(timeout=5)
    assert result.status == R.ROLLED_BACK
    assert result.error == "RuntimeError: Original error"


def test_compensation_is_retried_with_step_policy(engine: FluxEngine) -> None:
    calls = {"n": 0}

    def flaky_undo(ctx: Any) -> None:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError("transient")

    wf = (
        workflow("fix-comp-retried")
        .step("s1", noop, compensate=flaky_undo, retries=2)
        .step("s2", fail_with("boom"), retries=0)
    )
    result = engine.execute(wf)
    assert result.status == R.ROLLED_BACK
    assert calls["n"] == 3
    assert len(engine.traces(run_id=result.id, type="step:compensate_error")) == 2
    assert result.steps[0].compensation_attempts == 3


# ---------------------------------------------------------------------------------------
# Hooks never change outcomes; workflow_error fires for every failed/rolled_back run
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_raising_hook_does_not_change_outcome(
    make_engine: Callable[..., FluxEngine], hook: str, is_async: bool
) -> None:
    called: list[str] = []

    def bad(*args: Any) -> None:
        called.append(hook)
        raise RuntimeError(f"hook {hook} broke")

    async def bad_async(*args: Any) -> None:
        bad(*args)

    engine = make_engine(on={hook: bad_async if is_async else bad})
    failing = hook in ("step_error", "workflow_error")
    name = f"fix-hook-{hook}-{is_async}"
    wf = workflow(name).step("a", lambda ctx: "A")
    if failing:
        wf.step("b", fail_with("step broke"), retries=0)
    result = engine.execute(wf)

    assert called == [hook]
    if failing:
        assert result.status == R.FAILED
        assert result.error == "RuntimeError: step broke"
    else:
        assert result.status == R.COMPLETED
        assert result.results == {"a": "A"}
    errors = engine.traces(run_id=result.id, type="hook:error")
    assert len(errors) == 1
    assert errors[0].meta == {"hook": hook}
    assert errors[0].error == f"RuntimeError: hook {hook} broke"
    expected_step = {"step_start": "a", "step_complete": "a", "step_error": "b"}.get(hook)
    assert errors[0].step == expected_step
    stored = engine.get(result.id)
    assert stored is not None
    assert stored.status == result.status


def test_workflow_error_hook_for_failed_and_rolled_back(
    make_engine: Callable[..., FluxEngine],
) -> None:
    seen: list[tuple[str, str, str]] = []
    engine = make_engine(
        default_retries=0,
        on={"workflow_error": lambda ctx, err: seen.append((ctx.workflow, ctx.run_id, str(err)))},
    )
    failed = engine.execute(workflow("fix-wferr-failed").step("a", fail_with("plain")))
    rolled = engine.execute(
        workflow("fix-wferr-rolled").step("a", noop, compensate=noop).step("b", fail_with("rb"))
    )
    comp_failed = engine.execute(
        workflow("fix-wferr-compfail")
        .step("a", noop, compensate=fail_with("undo"))
        .step("b", fail_with("cf"))
    )
    ok = engine.execute(workflow("fix-wferr-ok").step("a", noop))
    assert (failed.status, rolled.status, comp_failed.status, ok.status) == (
        R.FAILED,
        R.ROLLED_BACK,
        R.FAILED,
        R.COMPLETED,
    )
    assert [(w, r) for w, r, _ in seen] == [
        ("fix-wferr-failed", failed.id),
        ("fix-wferr-rolled", rolled.id),
        ("fix-wferr-compfail", comp_failed.id),
    ]
    assert "plain" in seen[0][2]
    assert "rb" in seen[1][2]
    assert "'a'" in seen[2][2]


# ---------------------------------------------------------------------------------------
# created_at is written once
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_created_at_survives_updates(
    request: pytest.FixtureRequest, make_engine: Callable[..., FluxEngine], backend: str
) -> None:
    storage = MemoryStorage() if backend == "memory" else request.getfixturevalue("sqlite_storage")
    engine = make_engine(storage=storage)
    first = engine.execute(workflow(f"fix-created-{backend}").step("a", fail_with("x"), retries=0))
    before = engine.get(first.id)
    assert before is not None
    time.sleep(0.02)
    engine.retry(first.id).get(timeout=5)
    after = engine.get(first.id)
    assert after is not None
    assert after.created_at == before.created_at
    assert after.updated_at > before.updated_at
    assert after.version > before.version
    assert engine.list()[0].created_at == before.created_at


def test_execute_with_a_stored_run_id_returns_that_run(
    make_engine: Callable[..., FluxEngine], any_storage: Any
) -> None:
    """``execute`` stores a run with its first step's start; a second ``execute`` with the
    same run id must find that insert refused and hand back the stored run, not run again."""
    calls: list[int] = []

    def count(ctx: Any) -> int:
        calls.append(ctx.attempt)
        return len(calls)

    engine = make_engine(storage=any_storage)
    wf = workflow("fix-execute-twice").step("a", count).step("b", noop)
    first = engine.execute(wf, {"n": 1}, run_id="execute-twice")
    again = engine.execute(wf, {"n": 1}, run_id="execute-twice")
    with pytest.raises(IdempotencyConflict):  # the same id for other input (issue #16)
        engine.execute(wf, {"n": 2}, run_id="execute-twice")
    assert first.ok and again.ok
    assert calls == [1]
    assert again.input == {"n": 1}
    assert again.results == {"a": 1, "b": None}
    assert event_types(engine, "execute-twice") == [
        "workflow:start",
        "step:start",
        "step:complete",
        "step:start",
        "step:complete",
        "workflow:complete",
    ]


# ---------------------------------------------------------------------------------------
# Backoff and retry classification
# ---------------------------------------------------------------------------------------


def test_backoff_is_configurable_per_engine_and_step(
    make_engine: Callable[..., FluxEngine], flux_clock: FluxClock
) -> None:
    engine = make_engine(
        backoff=Backoff(base=0.5, factor=2.0, max=1.5, jitter=False),
        sleep=flux_clock.sleep,
        clock=flux_clock,
    )
    result = engine.execute(workflow("fix-backoff-engine").step("a", fail_with("x"), retries=3))
    assert result.status == R.FAILED
    assert result.step("a").attempts == 4
    assert flux_clock.sleeps == [0.5, 1.0, 1.5]
    delays = [e.meta["delay_s"] for e in engine.traces(run_id=result.id, type="step:retry")]  # type: ignore[index]
    assert delays == [0.5, 1.0, 1.5]
    # Each attempt starts after its backoff, on the engine's clock.
    starts = [e.ts for e in engine.traces(run_id=result.id, type="step:start")]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(starts)] == [0.5, 1.0, 1.5]

    flux_clock.sleeps.clear()
    step_backoff = Backoff(base=0.1, factor=3.0, max=10.0, jitter=False)
    result = engine.execute(
        workflow("fix-backoff-step").step("a", fail_with("x"), retries=2, backoff=step_backoff)
    )
    assert flux_clock.sleeps == pytest.approx([0.1, 0.3])


def test_backoff_jitter_stays_in_range() -> None:
    import random

    backoff = Backoff(base=1.0, factor=2.0, max=5.0, jitter=True)
    rng = random.Random(7)
    for failures, raw in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        for _ in range(20):
            assert raw / 2 <= backoff.delay(failures, rng) <= raw
    assert Backoff(jitter=False).delay(0) == 0.0


def test_non_retryable_error_fails_at_once(
    make_engine: Callable[..., FluxEngine], flux_clock: FluxClock
) -> None:
    engine = make_engine(sleep=flux_clock.sleep)
    calls = {"n": 0}

    def handler(ctx: Any) -> None:
        calls["n"] += 1
        raise NonRetryableError("card declined")

    result = engine.execute(workflow("fix-nonretryable").step("charge", handler, retries=5))
    assert result.status == R.FAILED
    assert calls["n"] == 1
    assert result.step("charge").attempts == 1
    assert result.error == "NonRetryableError: card declined"
    assert flux_clock.sleeps == []
    assert event_types(engine, result.id) == [
        "workflow:start",
        "step:start",
        "step:error",
        "workflow:error",
    ]


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


@pytest.mark.parametrize(
    ("options", "raised", "attempts"),
    [
        ({"retry_on": Transient}, Transient, 3),
        ({"retry_on": Transient}, Permanent, 1),
        ({"retry_on": (Transient, KeyError)}, KeyError, 3),
        ({"no_retry_on": Permanent}, Permanent, 1),
        ({"no_retry_on": Permanent}, Transient, 3),
        ({"retry_on": Exception, "no_retry_on": Permanent}, Permanent, 1),
    ],
    ids=[
        "retry_on-match",
        "retry_on-other",
        "retry_on-tuple",
        "no_retry_on-match",
        "no_retry_on-other",
        "both",
    ],
)
def test_retry_on_and_no_retry_on(
    engine: FluxEngine, options: dict[str, Any], raised: type[Exception], attempts: int
) -> None:
    calls = {"n": 0}

    def handler(ctx: Any) -> None:
        calls["n"] += 1
        raise raised("nope")

    name = f"fix-retry-on-{raised.__name__}-{sorted(options)}-{attempts}"
    result = engine.execute(workflow(name).step("a", handler, retries=2, **options))
    assert result.status == R.FAILED
    assert calls["n"] == attempts
    assert result.step("a").attempts == attempts


# ---------------------------------------------------------------------------------------
# when
# ---------------------------------------------------------------------------------------


def test_when_false_skips_step(engine: FluxEngine) -> None:
    ran: list[str] = []

    def mark(name: str) -> Callable[[Any], str]:
        def handler(ctx: Any) -> str:
            ran.append(name)
            return name

        return handler

    wf = (
        workflow("fix-when")
        .step("a", mark("a"))
        .step("b", mark("b"), when=lambda ctx: ctx.input["notify"])
        .step("c", mark("c"), when=lambda ctx: ctx.results["a"] == "a")
    )
    result = engine.execute(wf, {"notify": False})
    assert result.status == R.COMPLETED
    assert ran == ["a", "c"]
    assert [s.status.value for s in result.steps] == ["completed", "skipped", "completed"]
    assert result.step("b").attempts == 0
    assert result.step("b").output is None
    assert result.results == {"a": "a", "b": None, "c": "c"}
    ran.clear()
    assert engine.execute(wf, {"notify": True}).status == R.COMPLETED
    assert ran == ["a", "b", "c"]


# ---------------------------------------------------------------------------------------
# wait_for timeouts
# ---------------------------------------------------------------------------------------


def test_wait_timeout_expires_via_expire_wait(engine: FluxEngine) -> None:
    undone: list[str] = []
    wf = (
        workflow("fix-wait-expire")
        .step("reserve", noop, compensate=lambda ctx: undone.append("reserve"))
        .step("approve", lambda ctx: wait_for("approval", timeout=60), retries=0)
        .step("after", noop)
    )
    first = engine.execute(wf)
    assert first.status == R.SUSPENDED
    assert engine.expire_wait(first.id, 1) is False  # deadline not reached yet
    assert engine.get(first.id).status == R.SUSPENDED  # type: ignore[union-attr]

    later = utcnow() + timedelta(seconds=61)
    assert engine.expire_wait(first.id, 1, now=later) is True
    state = engine.get(first.id)
    assert state is not None
    assert state.status == R.ROLLED_BACK  # the failure path ran: compensation
    assert undone == ["reserve"]
    assert state.steps[1].status == S.FAILED
    assert (
        state.error == "StepTimeout: no signal 'approval' within the wait timeout of step 'approve'"
    )
    with pytest.raises(InvalidTransition):
        engine.signal(first.id, "approval", {"ok": True})
    assert engine.expire_wait(first.id, 1, now=later) is False  # only once


def test_wait_timeout_fires_in_process(engine: FluxEngine) -> None:
    wf = workflow("fix-wait-timer").step(
        "wait", lambda ctx: wait_for("go", timeout=0.05), retries=0
    )
    first = engine.execute(wf)
    assert first.status == R.SUSPENDED
    deadline = time.monotonic() + 1.0
    while engine.get(first.id).status == R.SUSPENDED and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    state = engine.get(first.id)
    assert state is not None
    assert state.status == R.FAILED
    assert event_types(engine, first.id)[-2:] == ["step:error", "workflow:error"]


def test_wait_timeout_expired_by_recover(
    make_engine: Callable[..., FluxEngine], flux_clock: FluxClock
) -> None:
    # The process that started the wait died (its in-process timer never fires): recover()
    # expires it once the deadline has passed.
    engine = make_engine(clock=flux_clock, timer=lambda seconds, callback: None)
    wf = workflow("fix-wait-recover").step(
        "wait", lambda ctx: wait_for("go", timeout=0.05), retries=0
    )
    first = engine.execute(wf)
    assert first.status == R.SUSPENDED
    assert engine.recover() == []
    flux_clock.sleep(0.1)  # time passes; nothing fires
    assert engine.recover() == [first.id]
    state = engine.get(first.id)
    assert state is not None
    assert state.status == R.FAILED
    assert state.error is not None
    assert state.error.startswith("StepTimeout: no signal 'go'")


# ---------------------------------------------------------------------------------------
# Definition changes are detected by hash
# ---------------------------------------------------------------------------------------


def test_retry_refuses_changed_steps(engine: FluxEngine) -> None:
    name = "fix-defchange-retry-steps"
    first = engine.execute(workflow(name).step("a", noop).step("b", fail_with("x"), retries=0))
    assert first.status == R.FAILED
    changed = workflow(name).step("a", noop).step("b2", noop)
    engine.register(changed)
    with pytest.raises(DefinitionChanged, match="definition"):
        engine.retry(first.id)
    with pytest.raises(DefinitionChanged):
        engine.retry(first.id, force=True)  # force cannot bridge a change of steps
    assert engine.get(first.id).status == R.FAILED  # type: ignore[union-attr]


def test_signal_refuses_changed_definition(engine: FluxEngine) -> None:
    name = "fix-defchange-signal"
    first = engine.execute(workflow(name).step("wait", lambda ctx: wait_for("go")))
    assert first.status == R.SUSPENDED
    engine.register(workflow(name).step("wait", lambda ctx: wait_for("go")).commit("more", noop))
    with pytest.raises(DefinitionChanged):
        engine.signal(first.id, "go")
    with pytest.raises(DefinitionChanged):
        engine.signal(first.id, "go", force=True)
    state = engine.get(first.id)
    assert state is not None
    assert state.status == R.SUSPENDED


def test_force_bridges_a_version_change(engine: FluxEngine) -> None:
    name = "fix-defchange-version"
    v1 = workflow(name, version="1").step("a", noop).step("b", fail_with("x"), retries=0)
    first = engine.execute(v1)
    assert first.status == R.FAILED
    v2 = workflow(name, version="2").step("a", noop).step("b", lambda ctx: "fixed")
    engine.register(v2)
    assert v2.definition_hash != v1.definition_hash
    with pytest.raises(DefinitionChanged):
        engine.retry(first.id)
    result = engine.retry(first.id, force=True).get(timeout=5)
    assert result.status == R.COMPLETED
    assert result.results == {"a": None, "b": "fixed"}
    state = engine.get(first.id)
    assert state is not None
    assert state.definition_hash == v2.definition_hash
    assert state.workflow_version == "2"


def test_force_signal_bridges_a_version_change(engine: FluxEngine) -> None:
    name = "fix-defchange-signal-version"
    first = engine.execute(workflow(name, version="1").step("wait", lambda ctx: wait_for("go")))
    engine.register(workflow(name, version="2").step("wait", lambda ctx: wait_for("go")))
    with pytest.raises(DefinitionChanged):
        engine.signal(first.id, "go")
    assert engine.signal(first.id, "go", 7, force=True).get(timeout=5).results == {"wait": 7}


class Crash(BaseException):
    """Simulates the process dying mid-step (escapes the engine like a killed worker)."""


def test_resume_refuses_changed_definition(engine: FluxEngine) -> None:
    name = "fix-defchange-resume"
    calls = {"n": 0}

    def crashy(ctx: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise Crash()

    with pytest.raises(Crash):
        engine.execute(workflow(name).step("a", crashy))
    (stuck,) = engine.list(workflow=name)
    assert stuck.status == R.RUNNING
    engine.register(workflow(name).step("a2", crashy))
    with pytest.raises(DefinitionChanged):
        engine.resume(stuck.id)
    assert calls["n"] == 1
    assert engine.get(stuck.id).status == R.RUNNING  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------
# resume / retry check status; compensated effects are redone
# ---------------------------------------------------------------------------------------


def test_resume_and_retry_check_status(engine: FluxEngine) -> None:
    suspended = engine.execute(workflow("fix-status-susp").step("w", lambda c: wait_for("go")))
    with pytest.raises(InvalidTransition, match="suspended -> running"):
        engine.resume(suspended.id)
    with pytest.raises(InvalidTransition, match="suspended -> running"):
        engine.retry(suspended.id)
    failed = engine.execute(workflow("fix-status-failed").step("a", fail_with("x"), retries=0))
    with pytest.raises(InvalidTransition, match="failed -> running"):
        engine.resume(failed.id)
    cancelled = engine.cancel(suspended.id, reason="user")
    assert cancelled.status == R.CANCELLED
    for op in (
        lambda: engine.signal(suspended.id, "go"),
        lambda: engine.retry(suspended.id),
        lambda: engine.resume(suspended.id),
        lambda: engine.cancel(suspended.id),
    ):
        with pytest.raises(InvalidTransition, match="cancelled -> "):
            op()
    assert engine.get(suspended.id).status == R.CANCELLED  # type: ignore[union-attr]


def _booking_saga(name: str, counts: dict[str, int]) -> Any:
    def book(ctx: Any) -> None:
        counts["book"] += 1

    def cancel_booking(ctx: Any) -> None:
        counts["cancel"] += 1

    def pay(ctx: Any) -> None:
        counts["pay"] += 1
        if counts["pay"] == 1:
            raise NonRetryableError("declined")

    return workflow(name).commit("book", book, compensate=cancel_booking).step("pay", pay)


def test_retry_of_rolled_back_run_redoes_compensated_steps(engine: FluxEngine) -> None:
    counts = {"book": 0, "cancel": 0, "pay": 0}
    first = engine.execute(_booking_saga("fix-retry-rolled-back", counts))
    assert first.status == R.ROLLED_BACK
    assert counts == {"book": 1, "cancel": 1, "pay": 1}
    n = len(event_types(engine, first.id))
    result = engine.retry(first.id).get(timeout=5)
    assert result.status == R.COMPLETED
    # The booking was undone, so it is made again before paying.
    assert counts == {"book": 2, "cancel": 1, "pay": 2}
    assert [s.status.value for s in result.steps] == ["completed", "completed"]
    start = engine.traces(run_id=first.id)[n]
    assert start.meta == {"retry": True, "from_step": "book"}


def test_retry_rolled_back_run_from_failed_step_by_name(engine: FluxEngine) -> None:
    # SPEC: retry re-runs a failed/rolled-back run from a step (default: the failed step).
    # Naming the failed step explicitly must behave like the default: compensated steps
    # before it are redone first.
    counts = {"book": 0, "cancel": 0, "pay": 0}
    first = engine.execute(_booking_saga("fix-retry-rolled-back-named", counts))
    assert first.status == R.ROLLED_BACK
    result = engine.retry(first.id, from_step="pay").get(timeout=5)
    assert result.status == R.COMPLETED
    assert counts == {"book": 2, "cancel": 1, "pay": 2}


def test_retry_does_not_rerun_commit_whose_compensation_failed(engine: FluxEngine) -> None:
    # SPEC: a commit step is never re-executed once recorded completed; retry redoes only
    # steps whose effects were compensated. `charge` landed and its refund failed, so its
    # effect still stands: a retry from an earlier step must not charge again (it may
    # refuse with a FluxError, or skip the commit step).
    counts = {"charge": 0, "refund": 0, "ship": 0}

    def charge(ctx: Any) -> None:
        counts["charge"] += 1

    def refund(ctx: Any) -> None:
        counts["refund"] += 1
        raise RuntimeError("refund api down")

    def ship(ctx: Any) -> None:
        counts["ship"] += 1
        if counts["ship"] == 1:
            raise NonRetryableError("carrier down")

    wf = (
        workflow("fix-commit-comp-failed")
        .step("prepare", noop)
        .commit("charge", charge, compensate=refund, retries=0)
        .step("ship", ship)
    )
    first = engine.execute(wf)
    assert first.status == R.FAILED
    assert first.step("charge").status == S.COMPENSATION_FAILED
    assert counts == {"charge": 1, "refund": 1, "ship": 1}
    try:
        engine.retry(first.id, from_step="prepare").get(timeout=5)
    except FluxError:
        pass
    assert counts["charge"] == 1


def test_hook_that_hangs_times_out_without_changing_outcome(
    make_engine: Callable[..., FluxEngine],
) -> None:
    engine = make_engine(
        hook_timeout=0.05, on={"step_complete": lambda step, ctx, out: time.sleep(0.2)}
    )
    started = time.monotonic()
    result = engine.execute(workflow("fix-hook-hang").step("a", lambda ctx: 1))
    assert time.monotonic() - started < 0.18
    assert result.status == R.COMPLETED
    errors = engine.traces(run_id=result.id, type="hook:error")
    assert [(e.step, e.meta) for e in errors] == [("a", {"hook": "step_complete"})]
    assert errors[0].error is not None
    assert errors[0].error.startswith("StepTimeout: hook step_complete timed out after 0.05s")


def test_a_handlers_own_timeout_error_is_not_a_step_timeout(make_engine) -> None:
    """A socket timeout inside a step is the step's error, not fluxcelery's deadline."""
    import threading

    def upload(ctx):
        raise TimeoutError("S3 upload timed out")

    async def aupload(ctx):
        raise TimeoutError("async upload timed out")

    eng = make_engine()
    wf = workflow("own-timeout-sync").step("upload", upload, retries=0, timeout=5)
    awf = workflow("own-timeout-async").step("upload", aupload, retries=0, timeout=5)
    out: list = []
    # Off the main thread the sync handler runs on a helper thread (the path that was wrong).
    t = threading.Thread(target=lambda: out.append(eng.execute(wf)))
    t.start()
    t.join(10)
    assert out[0].error == "TimeoutError: S3 upload timed out"
    assert eng.execute(awf).error == "TimeoutError: async upload timed out"
