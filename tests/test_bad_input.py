"""Bad input at every boundary: workflow input, run ids, step data and outputs, payload
sizes, and workflow definitions. Each fails loudly, with a message naming what is wrong,
and leaves stored state intact."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from helpers import event_types
from pydantic import BaseModel

from fluxcelery import (
    Backoff,
    DefinitionError,
    FluxEngine,
    InvalidInput,
    RunNotFound,
    RunStatus,
    SerializationError,
    SqlStorage,
    StepStatus,
    StorageError,
    wait_for,
    workflow,
)
from fluxcelery.testing import FluxClock

R = RunStatus


def noop(ctx: Any) -> None:
    return None


def assert_nothing_stored(engine: FluxEngine) -> None:
    assert engine.list() == []
    assert engine.traces() == []


# ---------------------------------------------------------------------------------------
# Workflow input
# ---------------------------------------------------------------------------------------


class OrderModel(BaseModel):
    order_id: str
    qty: int


@dataclasses.dataclass
class OrderData:
    order_id: str
    qty: int


@pytest.mark.parametrize("spec", [OrderModel, OrderData], ids=["pydantic", "dataclass"])
@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"order_id": "o-1", "qty": "many"}, "qty", "integer"),
        ({"qty": 2}, "order_id", "Field required"),
        ({"order_id": "o-1", "qty": [1]}, "qty", "integer"),
    ],
    ids=["wrong-type", "missing", "list-for-int"],
)
def test_invalid_input_names_the_field(
    engine: FluxEngine, spec: type, raw: dict[str, Any], field: str, fragment: str
) -> None:
    calls: list[str] = []
    name = f"bad-input-{spec.__name__}-{field}-{fragment}"
    wf = workflow(name).input(spec).step("a", lambda ctx: calls.append("ran"))
    with pytest.raises(InvalidInput) as info:
        engine.execute(wf, raw)
    assert info.value.field == field
    message = str(info.value)
    assert f"field '{field}'" in message
    assert fragment in message
    assert f"Invalid input for workflow '{name}'" in message
    assert calls == []
    assert_nothing_stored(engine)


@pytest.mark.parametrize("spec", [OrderModel, OrderData], ids=["pydantic", "dataclass"])
def test_valid_typed_input_reaches_handler_typed(engine: FluxEngine, spec: type) -> None:
    seen: list[Any] = []
    wf = (
        workflow(f"good-input-{spec.__name__}")
        .input(spec)
        .step("a", lambda c: seen.append(c.input))
    )
    result = engine.execute(wf, {"order_id": "o-1", "qty": "3"})
    assert result.status == R.COMPLETED
    assert result.input == {"order_id": "o-1", "qty": 3}  # stored in its JSON form
    assert seen == [spec(order_id="o-1", qty=3)]


def test_callable_validator_returning_false(engine: FluxEngine) -> None:
    def positive_value(raw: Any) -> bool:
        return raw["value"] > 0

    wf = workflow("bad-input-callable-false").input(positive_value).step("a", noop)
    with pytest.raises(InvalidInput) as info:
        engine.execute(wf, {"value": -1})
    assert str(info.value) == (
        "Invalid input for workflow 'bad-input-callable-false': rejected by positive_value"
    )
    assert_nothing_stored(engine)


def test_callable_validator_raising_names_the_problem(engine: FluxEngine) -> None:
    def check(raw: Any) -> bool:
        if "email" not in raw:
            raise ValueError("field 'email' is required")
        return True

    wf = workflow("bad-input-callable-raise").input(check).step("a", noop)
    with pytest.raises(InvalidInput, match="field 'email' is required"):
        engine.execute(wf, {"name": "x"})
    # A validator that fails on a key lookup still raises InvalidInput, naming the key.
    wf2 = (
        workflow("bad-input-callable-keyerror").input(lambda raw: raw["value"] > 0).step("a", noop)
    )
    with pytest.raises(InvalidInput, match="'value'"):
        engine.execute(wf2, {})
    assert_nothing_stored(engine)


def test_callable_validator_raising_invalid_input_keeps_field(engine: FluxEngine) -> None:
    def check(raw: Any) -> bool:
        raise InvalidInput("amount must be positive", field="amount")

    wf = workflow("bad-input-callable-field").input(check).step("a", noop)
    with pytest.raises(InvalidInput) as info:
        engine.execute(wf, {"amount": -5})
    assert info.value.field == "amount"
    assert str(info.value) == "amount must be positive"
    assert_nothing_stored(engine)


def test_bad_input_spec_is_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match="pydantic model, a dataclass, or a callable"):
        workflow("bad-input-spec").input(42)


def test_non_json_input_is_refused_before_storing(engine: FluxEngine) -> None:
    wf = workflow("bad-input-json").step("a", noop)
    with pytest.raises(InvalidInput, match=r"workflow input is not JSON-serializable at"):
        engine.execute(wf, {"when": datetime(2024, 1, 1, tzinfo=UTC)})
    assert_nothing_stored(engine)


def test_oversize_input_is_refused_before_storing(make_engine: Callable[..., FluxEngine]) -> None:
    engine = make_engine(max_payload_bytes=64)
    wf = workflow("bad-input-size").step("a", noop)
    with pytest.raises(InvalidInput, match="over the limit of 64 bytes"):
        engine.execute(wf, {"blob": "x" * 100})
    assert_nothing_stored(engine)


# ---------------------------------------------------------------------------------------
# Unknown run ids
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        lambda e, rid: e.signal(rid, "go"),
        lambda e, rid: e.retry(rid),
        lambda e, rid: e.retry(rid, from_step="a"),
        lambda e, rid: e.resume(rid),
        lambda e, rid: e.cancel(rid),
    ],
    ids=["signal", "retry", "retry-from-step", "resume", "cancel"],
)
def test_unknown_run_id_raises_run_not_found(
    engine: FluxEngine, operation: Callable[[FluxEngine, str], Any]
) -> None:
    engine.execute(workflow("bad-runid-other").step("a", noop))  # an unrelated run exists
    with pytest.raises(RunNotFound) as info:
        operation(engine, "no-such-run")
    assert info.value.run_id == "no-such-run"
    assert str(info.value) == "Run not found: no-such-run"
    assert engine.get("no-such-run") is None
    assert len(engine.list()) == 1


# ---------------------------------------------------------------------------------------
# Step data and outputs that cannot be stored
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"a", "b"}, "tags (set)"),
        (datetime(2024, 1, 1, tzinfo=UTC), "tags (datetime)"),
        ({"nested": [1, {"deep": object()}]}, "tags.nested[1].deep (object)"),
        ({(1, 2): "tuple key"}, "tags[(1, 2)] (keys must be strings)"),
    ],
    ids=["set", "datetime", "nested-object", "tuple-key"],
)
def test_non_json_ctx_data_fails_step_without_retry(
    make_engine: Callable[..., FluxEngine], flux_clock: FluxClock, value: Any, path: str
) -> None:
    engine = make_engine(sleep=flux_clock.sleep)
    calls = {"n": 0}

    def bad(ctx: Any) -> None:
        calls["n"] += 1
        ctx.data["tags"] = value

    def first(ctx: Any) -> None:
        ctx.data["kept"] = 1

    wf = workflow(f"bad-data-{path}").step("first", first).step("bad", bad, retries=3)
    result = engine.execute(wf)
    assert result.status == R.FAILED
    assert calls["n"] == 1  # not retried: the same code on the same data fails the same way
    assert result.step("bad").attempts == 1
    assert result.error == (
        f"SerializationError: ctx.data after step 'bad' is not JSON-serializable at {path}"
    )
    assert result.step("bad").error == result.error
    assert engine.get(result.id).data == {"kept": 1}  # type: ignore[union-attr]
    assert flux_clock.sleeps == []  # not retried: no backoff either
    assert event_types(engine, result.id)[-3:] == ["step:start", "step:error", "workflow:error"]


def test_non_json_output_fails_step_without_retry(engine: FluxEngine) -> None:
    calls = {"n": 0}

    def bad(ctx: Any) -> Any:
        calls["n"] += 1
        ctx.data["written"] = True  # discarded with the failed attempt
        return {"at": datetime(2024, 1, 1, tzinfo=UTC)}

    def first(ctx: Any) -> str:
        ctx.data["kept"] = 1
        return "ok"

    result = engine.execute(workflow("bad-output").step("first", first).step("bad", bad))
    assert result.status == R.FAILED
    assert calls["n"] == 1
    assert result.error == (
        "SerializationError: output of step 'bad' is not JSON-serializable at at (datetime)"
    )
    state = engine.get(result.id)
    assert state is not None
    assert state.data == {"kept": 1}
    assert state.steps[0].output == "ok"
    assert state.steps[1].output is None


def test_replacing_ctx_data_with_non_dict_fails_step(engine: FluxEngine) -> None:
    def bad(ctx: Any) -> None:
        ctx.data = ["not", "a", "dict"]

    result = engine.execute(workflow("bad-data-type").step("bad", bad))
    assert result.status == R.FAILED
    assert result.error == "SerializationError: ctx.data must stay a dict, got list"
    assert result.step("bad").attempts == 1


def test_oversize_ctx_data_is_payload_too_large(make_engine: Callable[..., FluxEngine]) -> None:
    engine = make_engine(max_payload_bytes=200, default_retries=0)

    def first(ctx: Any) -> None:
        ctx.data["kept"] = 1

    def big(ctx: Any) -> None:
        ctx.data["blob"] = "x" * 500

    result = engine.execute(workflow("bad-data-size").step("first", first).step("big", big))
    assert result.status == R.FAILED
    assert result.error is not None
    assert result.error.startswith("PayloadTooLarge: ctx.data after step 'big' is ")
    assert result.error.endswith("bytes, over the limit of 200 bytes")
    assert result.step("big").status == StepStatus.FAILED
    assert engine.get(result.id).data == {"kept": 1}  # type: ignore[union-attr]


def test_oversize_output_is_payload_too_large(make_engine: Callable[..., FluxEngine]) -> None:
    engine = make_engine(max_payload_bytes=200, default_retries=0)
    result = engine.execute(workflow("bad-output-size").step("big", lambda ctx: "y" * 500))
    assert result.status == R.FAILED
    assert result.error is not None
    assert result.error.startswith("PayloadTooLarge: output of step 'big' is ")
    assert result.step("big").output is None


def test_bad_signal_payload_leaves_run_suspended(engine: FluxEngine) -> None:
    first = engine.execute(workflow("bad-signal-payload").step("w", lambda c: wait_for("go")))
    assert first.status == R.SUSPENDED
    with pytest.raises(SerializationError, match="signal payload is not JSON-serializable"):
        engine.signal(first.id, "go", {"s": {1, 2}})
    state = engine.get(first.id)
    assert state is not None
    assert state.status == R.SUSPENDED
    assert state.steps[0].status == StepStatus.SUSPENDED
    assert engine.signal(first.id, "go", {"s": [1, 2]}).get(timeout=5).status == R.COMPLETED


# ---------------------------------------------------------------------------------------
# Bad definitions
# ---------------------------------------------------------------------------------------


def test_duplicate_step_names_raise_definition_error() -> None:
    wf = workflow("bad-def-dup").step("a", noop)
    with pytest.raises(DefinitionError, match="duplicate step name 'a'"):
        wf.step("a", noop)
    with pytest.raises(DefinitionError, match="duplicate step name 'a'"):
        wf.commit("a", noop)
    assert [s.name for s in wf.steps] == ["a"]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"retries": -1}, "retries must be an int >= 0, got -1"),
        ({"retries": 1.5}, "retries must be an int >= 0, got 1.5"),
        ({"retries": True}, "retries must be an int >= 0, got True"),
        ({"timeout": 0}, "timeout must be seconds > 0 or None, got 0"),
        ({"timeout": -2.0}, "timeout must be seconds > 0 or None, got -2.0"),
        ({"timeout": "30"}, "timeout must be seconds > 0 or None, got '30'"),
        ({"when": "yes"}, "when must be callable"),
        ({"compensate": 3}, "compensate must be callable"),
        ({"backoff": 2.0}, "backoff must be a Backoff(...)"),
        ({"retry_on": "ValueError"}, "retry_on must be an exception type"),
        ({"no_retry_on": (ValueError, 1)}, "no_retry_on must be an exception type"),
    ],
    ids=lambda v: str(v),
)
def test_bad_step_options_raise_definition_error(options: dict[str, Any], fragment: str) -> None:
    wf = workflow("bad-def-options")
    with pytest.raises(DefinitionError) as info:
        wf.step("s", noop, **options)
    assert fragment in str(info.value)
    assert "step 's'" in str(info.value)
    assert wf.steps == ()


@pytest.mark.parametrize("handler", [None, "not-callable", 42])
def test_non_callable_handler_raises_definition_error(handler: Any) -> None:
    with pytest.raises(DefinitionError, match=r"handler must be callable, got"):
        workflow("bad-def-handler").step("s", handler)
    with pytest.raises(DefinitionError, match=r"handler must be callable, got"):
        workflow("bad-def-handler-commit").commit("s", handler)


@pytest.mark.parametrize("name", ["", "   ", None, 5, "x" * 201])
def test_bad_names_raise_definition_error(name: Any) -> None:
    with pytest.raises(DefinitionError, match="name"):
        workflow(name)
    with pytest.raises(DefinitionError, match="name"):
        workflow("bad-def-stepname").step(name, noop)


def test_task_names_that_meet_are_a_definition_error_not_a_wrong_handler() -> None:
    """Dots in names can give two steps one Celery task name (``flux.a.b.c``): the task
    registered first would then run for both. Registering the second is refused instead."""
    from fluxcelery.celery.app import build_app
    from fluxcelery.celery.tasks import register_workflow
    from fluxcelery.settings import Settings

    app = build_app(Settings())
    first = workflow("a").step("b.c", noop).freeze()
    assert register_workflow(app, first, 30.0) == ["flux.a.b.c"]
    assert register_workflow(app, first, 30.0) == ["flux.a.b.c"]  # again: the same task, fine
    with pytest.raises(DefinitionError, match=r"'flux\.a\.b\.c' is already step 'b\.c'"):
        register_workflow(app, workflow("a.b").step("c", noop).freeze(), 30.0)
    own = workflow("x").step("s.compensate", noop).step("s", noop, compensate=noop).freeze()
    with pytest.raises(DefinitionError, match="cannot also run the compensation of step 's'"):
        register_workflow(app, own, 30.0)

    @app.task(name="flux.y.z")
    def not_ours() -> None:
        return None

    with pytest.raises(DefinitionError, match="not a fluxcelery step"):
        register_workflow(app, workflow("y").step("z", noop).freeze(), 30.0)


def test_bad_wait_for_and_backoff_values_raise_definition_error() -> None:
    with pytest.raises(DefinitionError, match="signal must be a non-empty string"):
        wait_for("")
    with pytest.raises(DefinitionError, match=r"wait_for\(timeout=...\): must be a number > 0"):
        wait_for("go", timeout=0)
    with pytest.raises(DefinitionError, match=r"Backoff\.base must be a number >= 0"):
        Backoff(base=-1)
    with pytest.raises(DefinitionError, match=r"Backoff\.factor must be >= 1"):
        Backoff(factor=0.5)


def test_bad_engine_options_raise(make_engine: Callable[..., FluxEngine]) -> None:
    with pytest.raises(ValueError, match="default_retries must be an int >= 0"):
        make_engine(default_retries=-1)
    with pytest.raises(ValueError, match="default_timeout must be > 0"):
        make_engine(default_timeout=0)
    with pytest.raises(ValueError, match=r"unknown hook\(s\) \['on_done'\]"):
        make_engine(on={"on_done": noop})


def test_an_unsupported_database_is_refused_at_once_without_its_password() -> None:
    with pytest.raises(StorageError) as caught:
        SqlStorage("mysql+pymysql://flux:s3cret@db.example/flux")
    message = str(caught.value)
    assert "supports SQLite and PostgreSQL, not 'mysql'" in message
    assert "s3cret" not in message and "***" in message
