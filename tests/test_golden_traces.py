"""Golden trace sequences S1-S10 (reference section 4.3), as fluxcelery emits them.

Adaptations decided for this engine (each test repeats the one it relies on):

- every attempt emits its own ``step:start`` (``attempt=n``); a failed attempt that will be
  retried emits ``step:retry`` (upstream: one ``step:start`` per step);
- every failed or rolled_back run ends with ``workflow:error`` (status ``failed`` or
  ``rolled_back``); upstream emitted no terminal event for a plain failure;
- a plain failure with nothing to compensate emits no ``workflow:rollback_start``;
- compensation continues past a failing compensator (``step:compensate_error`` per failed
  compensation attempt) and the run ends ``failed`` with an error naming the step;
- a ``when`` that is false emits ``step:skipped`` without a ``step:start``;
- hooks that raise are traced as ``hook:error`` and do not change the outcome;
- ``retry`` emits ``workflow:start`` with meta ``{"retry": True, "from_step": name}``;
  ``signal`` emits ``signal:received`` on the waiting step;
- upstream ``resume(fromStep)`` of a finished run is ``retry(from_step=...)``; ``resume``
  continues only interrupted runs and emits no ``workflow:start``;
- the outcome of every attempt (``step:complete``, ``step:retry``, ``step:error``,
  ``step:suspend``) carries what its handler used in ``meta``: ``cpu_ms``, and where the OS
  tells ``run_delay_ms`` (their values vary: pinned as present, ``USAGE``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest.mock import ANY

import pytest
from helpers import event_types

from fluxcelery import FluxEngine, RunStatus, StepStatus, wait_for, workflow
from fluxcelery.runner.usage import CpuMeter, thread_clock
from fluxcelery.trace.event import TraceEvent

R = RunStatus


def _usage() -> dict[str, Any]:
    meter = CpuMeter()
    meter.since(thread_clock())
    return dict.fromkeys(meter.usage or {}, ANY)


#: The keys an attempt's outcome meta gets from its handler's usage, any value.
USAGE = _usage()


def noop(ctx: Any) -> None:
    return None


def fail_with(message: str, exc: type[Exception] = RuntimeError) -> Callable[[Any], Any]:
    def handler(ctx: Any) -> Any:
        raise exc(message)

    return handler


def after(engine: FluxEngine, run_id: str, start: int) -> list[str]:
    return event_types(engine, run_id)[start:]


def pick(events: list[TraceEvent], *fields: str) -> list[tuple[Any, ...]]:
    return [tuple(getattr(e, f) for f in fields) for e in events]


def test_s1_two_steps_success(engine: FluxEngine) -> None:
    wf = workflow("s1-golden").step("a", lambda ctx: "A").commit("b", lambda ctx: "B")
    result = engine.execute(wf)
    assert result.status == R.COMPLETED
    events = engine.traces(run_id=result.id)
    assert [e.type for e in events] == [
        "workflow:start",
        "step:start",
        "step:complete",
        "step:start",
        "step:complete",
        "workflow:complete",
    ]
    # Default retries 3 -> max_attempts 4.
    assert pick(events, "step", "step_index", "kind", "attempt", "max_attempts", "status") == [
        (None, None, None, None, None, "running"),
        ("a", 0, "step", 1, 4, "running"),
        ("a", 0, "step", 1, 4, "completed"),
        ("b", 1, "commit", 1, 4, "running"),
        ("b", 1, "commit", 1, 4, "completed"),
        (None, None, None, None, None, "completed"),
    ]
    assert all(e.error is None for e in events)
    assert all(e.run_id == result.id and e.workflow == "s1-golden" for e in events)
    assert events[-1].duration_ms is not None


def test_s2_plain_failure_ends_with_workflow_error(engine: FluxEngine) -> None:
    # Adapted: no workflow:rollback_start (nothing to compensate); the run ends with a
    # terminal workflow:error (upstream: rollback_start and no terminal event).
    wf = (
        workflow("s2-golden")
        .step("a", noop)
        .step("b", fail_with("boom"), retries=0)
        .step("c", noop, retries=0)
    )
    result = engine.execute(wf)
    assert result.status == R.FAILED
    events = engine.traces(run_id=result.id)
    assert [e.type for e in events] == [
        "workflow:start",
        "step:start",
        "step:complete",
        "step:start",
        "step:error",
        "workflow:error",
    ]
    assert pick(events[-2:], "step", "attempt", "max_attempts", "status", "error") == [
        ("b", 1, 1, "failed", "RuntimeError: boom"),
        (None, None, None, "failed", "RuntimeError: boom"),
    ]
    assert [s.status for s in result.steps] == [
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.PENDING,
    ]
    assert engine.get(result.id).current_step == 1  # type: ignore[union-attr]


def test_s3_retries_then_success(engine: FluxEngine) -> None:
    # Adapted: each attempt has its own step:start (attempt=n); a failed attempt that will
    # be retried emits step:retry with that attempt's number and error.
    calls = {"n": 0}

    def flaky(ctx: Any) -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError(f"t{calls['n']}")
        return "ok"

    result = engine.execute(workflow("s3-golden").step("s", flaky, retries=2))
    assert result.status == R.COMPLETED
    events = engine.traces(run_id=result.id)
    assert [e.type for e in events] == [
        "workflow:start",
        "step:start",
        "step:retry",
        "step:start",
        "step:retry",
        "step:start",
        "step:complete",
        "workflow:complete",
    ]
    assert pick(events[1:7], "type", "step", "attempt", "max_attempts", "status", "error") == [
        ("step:start", "s", 1, 3, "running", None),
        ("step:retry", "s", 1, 3, "pending", "RuntimeError: t1"),
        ("step:start", "s", 2, 3, "running", None),
        ("step:retry", "s", 2, 3, "pending", "RuntimeError: t2"),
        ("step:start", "s", 3, 3, "running", None),
        ("step:complete", "s", 3, 3, "completed", None),
    ]
    assert events[2].meta == {"delay_s": 0.0, "next_attempt": 2, **USAGE}
    assert events[4].meta == {"delay_s": 0.0, "next_attempt": 3, **USAGE}
    assert result.step("s").attempts == 3
    assert calls["n"] == 3


def test_s4_when_false_skips_middle_step(make_engine: Callable[..., FluxEngine]) -> None:
    # Adapted: a skipped step emits step:skipped without a step:start. As upstream, the
    # step_complete hook is called for it (with output None).
    completed: list[tuple[str, Any]] = []
    engine = make_engine(on={"step_complete": lambda step, ctx, out: completed.append((step, out))})
    wf = (
        workflow("s4-golden")
        .step("a", lambda ctx: 1)
        .step("b", lambda ctx: 2, when=lambda ctx: False)
        .step("c", lambda ctx: 3)
    )
    result = engine.execute(wf)
    assert result.status == R.COMPLETED
    events = engine.traces(run_id=result.id)
    assert [e.type for e in events] == [
        "workflow:start",
        "step:start",
        "step:complete",
        "step:skipped",
        "step:start",
        "step:complete",
        "workflow:complete",
    ]
    skipped = events[3]
    assert (skipped.step, skipped.step_index, skipped.status) == ("b", 1, "skipped")
    assert completed == [("a", 1), ("b", None), ("c", 3)]
    assert result.step("b").status == StepStatus.SKIPPED
    assert result.step("b").attempts == 0


def test_s5_saga_rollback(make_engine: Callable[..., FluxEngine]) -> None:
    # Adapted: the rolled_back run ends with workflow:error (status rolled_back).
    engine = make_engine(default_retries=0)
    wf = (
        workflow("s5-golden")
        .step("s1", noop, compensate=noop)
        .step("s2", noop, compensate=noop)
        .step("s2b", noop)
        .step("s3", fail_with("s3 failed"))
    )
    result = engine.execute(wf)
    assert result.status == R.ROLLED_BACK
    events = engine.traces(run_id=result.id)
    assert [e.type for e in events] == [
        "workflow:start",
        "step:start",
        "step:complete",
        "step:start",
        "step:complete",
        "step:start",
        "step:complete",
        "step:start",
        "step:error",
        "workflow:rollback_start",
        "step:compensate",
        "step:compensate",
        "workflow:rollback_complete",
        "workflow:error",
    ]
    tail = events[8:]
    assert pick(tail, "type", "step", "step_index", "status", "error") == [
        ("step:error", "s3", 3, "failed", "RuntimeError: s3 failed"),
        ("workflow:rollback_start", None, None, "rolling_back", "RuntimeError: s3 failed"),
        ("step:compensate", "s2", 1, "compensated", None),
        ("step:compensate", "s1", 0, "compensated", None),
        ("workflow:rollback_complete", None, None, "rolled_back", None),
        ("workflow:error", None, None, "rolled_back", "RuntimeError: s3 failed"),
    ]
    assert tail[1].meta == {"plan": ["s2", "s1"]}
    assert [s.status.value for s in result.steps] == [
        "compensated",
        "compensated",
        "completed",
        "failed",
    ]


def test_s6_compensation_failure_continues(make_engine: Callable[..., FluxEngine]) -> None:
    # Adapted: the failing compensator of s2 gets step:compensate_error, the rollback goes
    # on and compensates s1 (upstream stopped), and the run ends failed with an error naming
    # s2 and the original error.
    engine = make_engine(default_retries=0)
    wf = (
        workflow("s6-golden")
        .step("s1", noop, compensate=noop)
        .step("s2", noop, compensate=fail_with("Compensate failed!"))
        .step("s3", fail_with("Original error"))
    )
    result = engine.execute(wf)
    assert result.status == R.FAILED
    events = engine.traces(run_id=result.id)
    assert [e.type for e in events][6:] == [
        "step:error",
        "workflow:rollback_start",
        "step:compensate_error",
        "step:compensate",
        "workflow:error",
    ]
    comp_error = events[8]
    assert (comp_error.step, comp_error.status, comp_error.error) == (
        "s2",
        "compensation_failed",
        "RuntimeError: Compensate failed!",
    )
    assert events[9].step == "s1"
    final = events[10]
    assert final.status == "failed"
    assert final.error == (
        "CompensationError: compensation failed at step 's2'; "
        "original error: RuntimeError: Original error"
    )
    assert result.error == final.error
    assert [s.status.value for s in result.steps] == [
        "compensated",
        "compensation_failed",
        "failed",
    ]


def test_s6_each_failed_compensation_attempt_is_traced(
    make_engine: Callable[..., FluxEngine],
) -> None:
    # Compensations are retried with the step's retry policy: retries=2 -> 3 attempts, each
    # failed one traced as step:compensate_error.
    engine = make_engine(default_retries=0)
    wf = (
        workflow("s6b-golden")
        .step("s1", noop, compensate=fail_with("nope"), retries=2)
        .step("s2", fail_with("Original error"))
    )
    result = engine.execute(wf)
    assert result.status == R.FAILED
    comp = engine.traces(run_id=result.id, type="step:compensate_error")
    assert pick(comp, "step", "attempt", "max_attempts", "status") == [
        ("s1", 1, 3, "compensating"),
        ("s1", 2, 3, "compensating"),
        ("s1", 3, 3, "compensation_failed"),
    ]
    assert [e.meta["will_retry"] for e in comp] == [True, True, False]  # type: ignore[index]
    assert event_types(engine, result.id)[-1] == "workflow:error"


def test_s7_suspend_then_signal(engine: FluxEngine) -> None:
    # Adapted: signal:received is a step event on the waiting step (status completed, meta
    # with the signal name and payload); no workflow:start after the signal.
    wf = (
        workflow("s7-golden")
        .step("a", noop)
        .step("wait", lambda ctx: wait_for("go"))
        .step("c", lambda ctx: ctx.results["wait"]["k"])
    )
    first = engine.execute(wf)
    assert first.status == R.SUSPENDED
    events = engine.traces(run_id=first.id)
    assert [e.type for e in events] == [
        "workflow:start",
        "step:start",
        "step:complete",
        "step:start",
        "step:suspend",
    ]
    assert (events[-1].step, events[-1].status, events[-1].meta) == (
        "wait",
        "suspended",
        {"signal": "go", "timeout": None, **USAGE},
    )
    n = len(events)
    result = engine.signal(first.id, "go", {"k": 1}).get(timeout=5)
    assert result.status == R.COMPLETED
    later = engine.traces(run_id=first.id)[n:]
    assert [e.type for e in later] == [
        "signal:received",
        "step:start",
        "step:complete",
        "workflow:complete",
    ]
    assert (later[0].step, later[0].status, later[0].meta) == (
        "wait",
        "completed",
        {"signal": "go", "payload": {"k": 1}},
    )
    assert later[1].step == "c"
    assert result.results == {"a": None, "wait": {"k": 1}, "c": 1}


def test_s8_retry_from_step(engine: FluxEngine) -> None:
    # Adapted: retry applies to a failed run; workflow:start carries
    # meta {"retry": True, "from_step": name}.
    calls = {"n": 0}

    def second(ctx: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("first time")

    wf = workflow("s8-golden").step("step-1", noop).step("step-2", second, retries=0)
    first = engine.execute(wf)
    assert first.status == R.FAILED
    n = len(event_types(engine, first.id))
    result = engine.retry(first.id, from_step="step-2").get(timeout=5)
    assert result.status == R.COMPLETED
    later = engine.traces(run_id=first.id)[n:]
    assert [e.type for e in later] == [
        "workflow:start",
        "step:start",
        "step:complete",
        "workflow:complete",
    ]
    assert later[0].meta == {"retry": True, "from_step": "step-2"}
    assert (later[1].step, later[1].attempt) == ("step-2", 1)


class Crash(BaseException):
    """Simulates the process dying mid-step (not an ordinary step failure)."""


def test_s9_resume_interrupted_run(engine: FluxEngine) -> None:
    # Adapted: resume continues a run interrupted mid-step (here: a crash escaping the
    # engine) from its first unfinished step. No workflow:start; the interrupted step counts
    # a new attempt, marked redelivered. Completed steps are not re-run.
    calls = {"a": 0, "b": 0}

    def a(ctx: Any) -> None:
        calls["a"] += 1

    def b(ctx: Any) -> str:
        calls["b"] += 1
        if calls["b"] == 1:
            raise Crash()
        return "ok"

    wf = workflow("s9-golden").step("a", a).step("b", b).step("c", noop)
    with pytest.raises(Crash):
        engine.execute(wf)
    (stuck,) = engine.list(workflow="s9-golden")
    assert stuck.status == R.RUNNING
    assert [s.status.value for s in stuck.steps] == ["completed", "running", "pending"]
    n = len(event_types(engine, stuck.id))

    result = engine.resume(stuck.id).get(timeout=5)
    assert result.status == R.COMPLETED
    later = engine.traces(run_id=stuck.id)[n:]
    assert [e.type for e in later] == [
        "step:start",
        "step:complete",
        "step:start",
        "step:complete",
        "workflow:complete",
    ]
    assert pick(later[:2], "step", "attempt", "meta") == [
        ("b", 2, {"redelivered": True}),
        ("b", 2, USAGE),
    ]
    assert calls == {"a": 1, "b": 2}


def test_s10_step_start_hook_raises(make_engine: Callable[..., FluxEngine]) -> None:
    # Adapted: a raising hook is traced as hook:error and does not change the outcome
    # (upstream: the run failed before step:start). workflow_error is not called.
    errors: list[Any] = []

    def bad_hook(step: str, ctx: Any) -> None:
        raise RuntimeError("hookboom")

    engine = make_engine(
        on={"step_start": bad_hook, "workflow_error": lambda ctx, err: errors.append(err)}
    )
    result = engine.execute(workflow("s10-golden").step("a", lambda ctx: "out"))
    assert result.status == R.COMPLETED
    assert result.results == {"a": "out"}
    events = engine.traces(run_id=result.id)
    assert [e.type for e in events] == [
        "workflow:start",
        "step:start",
        "hook:error",
        "step:complete",
        "workflow:complete",
    ]
    hook = events[2]
    assert (hook.step, hook.error, hook.meta) == (
        "a",
        "RuntimeError: hookboom",
        {"hook": "step_start"},
    )
    assert errors == []
