"""Every trace event carries the engine's clock, not the wall clock: a test that sets the
clock (``FluxClock``, ``FluxEngine(clock=...)``) sees its own times in the trace, as the
step rows already had them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fluxcelery import FluxEngine, MemoryStorage, wait_for, workflow
from fluxcelery.testing import FluxClock

LONG_AGO = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)


class FailsOnce:
    """A handler whose first call fails (retried) and whose next calls return ``value``."""

    def __init__(self, value: Any = None) -> None:
        self.value = value
        self.calls = 0

    def __call__(self, ctx: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("first try fails")
        return self.value


def _fail(ctx: Any) -> None:
    raise ValueError("no")


def test_every_event_carries_the_engine_clock() -> None:
    clock = FluxClock(LONG_AGO)
    engine = FluxEngine(storage=MemoryStorage(), clock=clock, sleep=clock.sleep)
    wf = (
        workflow("clocked")
        .step("flaky", FailsOnce("ok"), retries=1)  # step:retry
        .step("skipped", lambda ctx: 1, when=lambda ctx: False)  # step:skipped
        .step("wait", lambda ctx: wait_for("go"))  # step:suspend, signal:received
        .approval("boss")  # approval:requested, approval:decided
        .commit("pay", lambda ctx: "paid", compensate=FailsOnce(), retries=1)
        .step("boom", _fail, retries=0)  # step:error, rollback, compensate(_error)
    )
    run = engine.execute(wf, {})
    engine.signal(run.id, "go", {"x": 1})
    engine.approve(run.id, "ann")
    # and a retry of the rolled-back run: workflow:start (retry), step:skipped (kept commit)
    engine.retry(run.id, from_step="pay")
    events = engine.traces(run.id)
    types = {e.type for e in events}
    for wanted in (
        "step:retry",
        "step:skipped",
        "step:suspend",
        "signal:received",
        "approval:requested",
        "approval:decided",
        "step:error",
        "workflow:rollback_start",
        "step:compensate_error",
        "step:compensate",
        "workflow:rollback_complete",
    ):
        assert wanted in types, wanted
    wall = [(e.type, e.ts) for e in events if e.ts.year != LONG_AGO.year]
    assert wall == []  # every event on the engine's clock
