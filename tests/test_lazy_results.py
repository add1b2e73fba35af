"""``ctx.results`` of a step task on PostgreSQL reads only the outputs a handler asks for
(``LazyResults``): a step's read does not grow with the steps before it, and the handler
sees exactly what the whole run's results would show."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest

from fluxcelery import FluxEngine, NonRetryableError, workflow
from fluxcelery.core.records import LazyResults, PartialRows
from fluxcelery.storage.base import StepClaim
from fluxcelery.trace.event import new_event_id


def _run_as_tasks(engine: FluxEngine, wf: Any, data: Any = None) -> str:
    """Run each step the way a Celery step task does (claim, handler, outcome)."""
    state = engine._new_run(wf, data or {}, "celery", None)
    engine.storage.create_run(state, [])
    for i in range(len(wf.steps)):
        engine.runner.run_step(state.id, i, task_id=uuid.uuid4().hex, worker="w", workflow=wf.name)
    return state.id


def test_a_step_task_reads_one_output_per_name_it_asks_for(
    pg_storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    reads: list[str] = []
    original = type(pg_storage)._output_of

    def counting(self: Any, run_id: str) -> Any:
        inner = original(self, run_id)

        def output_of(name: str) -> Any:
            reads.append(name)
            return inner(name)

        return output_of

    monkeypatch.setattr(type(pg_storage), "_output_of", counting)

    def last(ctx: Any) -> Any:
        assert isinstance(ctx.results, LazyResults)
        seen["s3"] = ctx.results["s3"]
        seen["again"] = ctx.results["s3"]  # read once
        seen["get"] = ctx.results.get("s1")
        seen["missing"] = ctx.results.get("nope", "default")
        seen["in"] = ("s2" in ctx.results, "later" in ctx.results)
        with pytest.raises(KeyError):
            ctx.results["later"]
        return "done"

    wf = workflow("lazy-one")
    for i in range(5):
        wf = wf.step(f"s{i}", lambda ctx: {"i": ctx.step_index})
    wf = wf.step("last", last).step("later", lambda ctx: None)
    engine = FluxEngine(storage=pg_storage)
    run_id = _run_as_tasks(engine, wf)
    assert engine.get(run_id).status.value == "completed"  # type: ignore[union-attr]
    assert seen == {
        "s3": {"i": 3},
        "again": {"i": 3},
        "get": {"i": 1},
        "missing": "default",
        "in": (True, False),
    }
    assert sorted(set(reads)) == ["later", "nope", "s1", "s2", "s3"]
    assert reads.count("s3") == 1 and reads.count("later") == 1


def test_everything_a_handler_does_with_results_sees_the_whole_run(pg_storage: Any) -> None:
    seen: dict[str, Any] = {}

    def check(ctx: Any) -> None:
        r = ctx.results
        seen["len"] = len(r)
        seen["keys"] = sorted(r)
        seen["items"] = sorted(r.items())
        seen["dict"] = dict(r)
        seen["splat"] = {**r}
        seen["json"] = json.loads(json.dumps(r))
        seen["deepcopy"] = copy.deepcopy(r)
        seen["eq"] = r == {"a": 1, "b": 2, "skip": None}

    wf = (
        workflow("lazy-all")
        .step("a", lambda ctx: 1)
        .step("b", lambda ctx: 2)
        .step("skip", lambda ctx: 3, when=lambda ctx: False)
        .step("check", check)
    )
    engine = FluxEngine(storage=pg_storage)
    _run_as_tasks(engine, wf)
    whole = {"a": 1, "b": 2, "skip": None}
    assert seen == {
        "len": 3,
        "keys": ["a", "b", "skip"],
        "items": sorted(whole.items()),
        "dict": whole,
        "splat": whole,
        "json": whole,
        "deepcopy": whole,
        "eq": True,
    }


def test_a_failure_after_a_lazy_read_rolls_back_every_step(pg_storage: Any) -> None:
    undone: list[str] = []

    def fail(ctx: Any) -> None:
        assert ctx.results["s1"] == {"i": 1}
        raise NonRetryableError("no")

    wf = workflow("lazy-fail")
    for i in range(3):
        wf = wf.step(
            f"s{i}", lambda ctx: {"i": ctx.step_index}, compensate=lambda c: undone.append(c.step)
        )
    wf = wf.step("fail", fail, retries=0)
    engine = FluxEngine(storage=pg_storage)
    run_id = _run_as_tasks(engine, wf)
    # On workers the compensations run as their own tasks; here, from the stored plan.
    state = engine.get(run_id)
    assert state is not None and state.status.value in ("rolling_back", "rolled_back")
    assert state.error == "NonRetryableError: no"


def test_a_claimed_step_reads_its_own_row_only(pg_storage: Any) -> None:
    wf = workflow("lazy-partial")
    for i in range(4):
        wf = wf.step(f"s{i}", lambda ctx: ctx.step_index)
    engine = FluxEngine(storage=pg_storage)
    state = engine._new_run(wf, {}, "celery", None)
    engine.storage.create_run(state, [])
    claim = StepClaim(
        index=0,
        workflow=wf.name,
        step="s0",
        kind="step",
        definition_hash=wf.definition_hash,
        max_attempts=3,
        task_id="t",
        worker="w",
        event_id=new_event_id(),
        now=engine.clock(),
        start_event_id=new_event_id(),
    )
    loaded, claimed = pg_storage.load_and_claim(state.id, claim)
    assert claimed and isinstance(loaded.steps, PartialRows)
    assert [s.index for s in loaded.steps.loaded()] == [0]
    assert len(loaded.steps) == 4 and not loaded.steps.full
    assert [s.name for s in loaded.steps] == ["s0", "s1", "s2", "s3"]  # read when asked
