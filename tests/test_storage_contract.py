"""The storage contract (``fluxcelery.storage.base.Storage``), run against every backend.

Each test gets a fresh, empty store from the ``any_storage`` fixture: ``MemoryStorage``,
SQLite (a WAL file) and PostgreSQL (a per-session schema). Tests of ``transaction()`` that need a
real SQL session use ``sql_storage`` (SQLite and PostgreSQL).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from fluxcelery import (
    FluxError,
    MemoryStorage,
    RunState,
    RunStatus,
    SqlStorage,
    StepState,
    StepStatus,
    TraceEvent,
)

UTC = UTC
T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)

NESTED_INPUT: dict[str, Any] = {
    "name": "Zoë ✓ 日本語 🚀",
    "nested": {
        "list": [1, 2.5, -3, True, False, None, {"deep": ["x", {"y": [], "z": {}}]}],
        "empty": {},
    },
    "big": 2**53,
    "quote": 'he said "hi"\n\ttab \\ backslash',
    "ключ": ["значение", "Ωμέγα"],
}
NESTED_DATA: dict[str, Any] = {
    "counter": 3,
    "ünïcode-key ✓": "värde",
    "items": [{"a": 1}, {"b": [1, 2, 3]}],
    "flag": False,
    "nothing": None,
}


@pytest.fixture(params=["sqlite", "postgres"])
def sql_storage(request: pytest.FixtureRequest) -> Any:
    """Each SQL backend in turn. Overrides conftest's ``sql_storage``, which looks up a
    ``postgres_storage`` fixture that does not exist (the PostgreSQL one is ``pg_storage``)."""
    return request.getfixturevalue(
        {"sqlite": "sqlite_storage", "postgres": "pg_storage"}[request.param]
    )


# -- helpers ----------------------------------------------------------------------------------
def make_run(
    run_id: str | None = None,
    *,
    workflow: str = "wf",
    status: RunStatus = RunStatus.RUNNING,
    n_steps: int = 3,
    created_at: datetime | None = None,
    **fields: Any,
) -> RunState:
    """A plain run whose steps are all pending."""
    return RunState(
        id=run_id or f"run-{uuid.uuid4().hex[:12]}",
        workflow=workflow,
        status=status,
        input={"n": 1},
        data={},
        steps=[StepState(name=f"s{i}", index=i) for i in range(n_steps)],
        created_at=created_at or datetime.now(UTC),
        **fields,
    )


def make_full_run(run_id: str) -> RunState:
    """A run with every field of RunState and StepState set to a non-default value."""
    return RunState(
        id=run_id,
        workflow="wörkflow ✓",
        workflow_version="v2",
        definition_hash="0123456789abcdef",
        status=RunStatus.SUSPENDED,
        input=NESTED_INPUT,
        data=NESTED_DATA,
        current_step=1,
        error="ValueError: bad ✗",
        executor="celery",
        version=0,
        created_at=T0,
        updated_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(seconds=5, microseconds=7),
        steps=[
            StepState(
                name="charge",
                index=0,
                kind="step",
                status=StepStatus.COMPLETED,
                attempts=2,
                compensation_attempts=1,
                output={"receipt": "r-1", "amounts": [1.25, 2, None], "ok": True, "€": "€"},
                error=None,
                waiting_for=None,
                task_id="task-0001",
                started_at=T0 + timedelta(milliseconds=10),
                finished_at=T0 + timedelta(milliseconds=1510),
                duration_ms=1500,
            ),
            StepState(
                name="approve",
                index=1,
                kind="step",
                status=StepStatus.SUSPENDED,
                attempts=1,
                waiting_for="approval ✓",
                task_id="task-0002",
                started_at=T0 + timedelta(seconds=2),
                duration_ms=3,
                wait_deadline=T0 + timedelta(hours=1),
            ),
            StepState(
                name="ship",
                index=2,
                kind="commit",
                branch="löcal ✓",
                parent=1,
                scope={"data": {"k": "ü"}, "unset": ["x"]},
            ),
            StepState(
                name="notify",
                index=3,
                kind="commit",
                status=StepStatus.COMPENSATION_FAILED,
                attempts=3,
                compensation_attempts=4,
                output=["a", 1, {"b": "ü"}],
                error="RuntimeError: compensation failed: boom ✗",
                traceback='Traceback (most recent call last):\n  File "x.py"\nRuntimeError: ✗',
                finished_at=T0 + timedelta(seconds=9),
                item=7,
                parent=0,
                scope={"value": {"to": "ü"}},
            ),
        ],
    )


def event(
    run_id: str,
    type: str = "step:start",
    *,
    workflow: str = "wf",
    status: str | None = "running",
    **fields: Any,
) -> TraceEvent:
    return TraceEvent(type=type, run_id=run_id, workflow=workflow, status=status, **fields)


def datetimes_of(state: RunState) -> list[datetime | None]:
    values: list[datetime | None] = [state.created_at, state.updated_at, state.finished_at]
    for s in state.steps:
        values += [s.started_at, s.finished_at, s.wait_deadline]
    return values


def assert_utc(value: datetime | None) -> None:
    if value is None:
        return
    assert value.tzinfo is not None, f"{value!r} is naive"
    assert value.utcoffset() == timedelta(0), f"{value!r} is not UTC"


def ids(runs: list[RunState]) -> list[str]:
    return [r.id for r in runs]


def backend(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["any_storage"])


def xfail_on(request: pytest.FixtureRequest, backends: set[str], reason: str) -> None:
    if backend(request) in backends:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# -- create / load ----------------------------------------------------------------------------
def test_stores_traces_flag(any_storage: Any) -> None:
    assert any_storage.stores_traces is True


def test_load_missing_run_is_none(any_storage: Any) -> None:
    assert any_storage.load_run("no-such-run") is None


def test_create_then_load_round_trips_every_field(any_storage: Any) -> None:
    state = make_full_run("full-1")
    events = [
        event("full-1", "workflow:start", workflow=state.workflow, meta={"input": NESTED_INPUT}),
        event(
            "full-1",
            "step:suspend",
            workflow=state.workflow,
            status="suspended",
            step="approve",
            step_index=1,
            kind="step",
            attempt=1,
            max_attempts=4,
            duration_ms=3,
            task_id="task-0002",
            worker="w@host",
            meta={"signal": "approval ✓"},
        ),
    ]
    assert any_storage.create_run(state, events) is True

    loaded = any_storage.load_run("full-1")
    assert loaded is not None
    assert loaded is not state
    # create_run may set updated_at (and writes it back into ``state``); everything else is
    # exactly what was passed in.
    assert loaded == state
    assert loaded.created_at == T0
    assert loaded.input == NESTED_INPUT
    assert loaded.input["name"] == "Zoë ✓ 日本語 🚀"
    assert loaded.data == NESTED_DATA
    assert loaded.status is RunStatus.SUSPENDED
    assert [s.status for s in loaded.steps] == [
        StepStatus.COMPLETED,
        StepStatus.SUSPENDED,
        StepStatus.PENDING,
        StepStatus.COMPENSATION_FAILED,
    ]
    assert all(isinstance(s.status, StepStatus) for s in loaded.steps)
    assert [s.index for s in loaded.steps] == [0, 1, 2, 3]
    assert loaded.steps[0].output == {
        "receipt": "r-1",
        "amounts": [1.25, 2, None],
        "ok": True,
        "€": "€",
    }
    assert loaded.steps[1].wait_deadline == T0 + timedelta(hours=1)
    assert loaded.steps[3].traceback == state.steps[3].traceback
    assert loaded.finished_at == T0 + timedelta(seconds=5, microseconds=7)
    for value in datetimes_of(loaded):
        assert_utc(value)
    assert loaded.updated_at is not None
    assert any_storage.list_traces(run_id="full-1") == events


@pytest.mark.parametrize(
    "value",
    [
        None,
        "text ✓ 🚀",
        42,
        -1.5,
        True,
        [1, "a", None, [2, [3]]],
        {"k": {"v": [1, {"w": "ü"}]}},
        # SQLite once turned these into other numbers (a JSON column has NUMERIC affinity).
        2**70,
        -(2**65),
        1.0,
        0.1 + 0.2,
        1e300,
        "12",
    ],
    ids=[
        "null",
        "str",
        "int",
        "float",
        "bool",
        "list",
        "dict",
        "int-beyond-64-bits",
        "negative-int-beyond-64-bits",
        "whole-float",
        "float-17-digits",
        "huge-float",
        "numeric-string",
    ],
)
def test_json_top_level_values_round_trip(any_storage: Any, value: Any) -> None:
    if (
        str(getattr(any_storage, "url", "")).startswith("sqlite")
        and sqlite3.sqlite_version_info < (3, 35)
        and isinstance(value, (int, float))
    ):
        pytest.skip(f"SQLite {sqlite3.sqlite_version} keeps the JSON columns NUMERIC (0003)")
    state = make_run("json-1", n_steps=1)
    state.input = value
    state.steps[0].output = value
    assert any_storage.create_run(state, []) is True
    loaded = any_storage.load_run("json-1")
    assert loaded is not None
    assert loaded.input == value
    assert type(loaded.input) is type(value)
    assert loaded.steps[0].output == value
    assert type(loaded.steps[0].output) is type(value)
    # The same through a save (a different statement on the SQL fast paths).
    loaded.data = {"v": value}
    loaded.steps[0].output = [value]
    assert any_storage.save_run(loaded, loaded.version, [0], []) is True
    saved = any_storage.load_run("json-1")
    assert saved is not None
    assert saved.data == {"v": value}
    assert saved.steps[0].output == [value]
    loaded.steps[0].output = value
    assert any_storage.save_run(loaded, loaded.version, [0], []) is True
    again = any_storage.load_run("json-1")
    assert again is not None
    assert again.steps[0].output == value
    assert type(again.steps[0].output) is type(value)
    # And through the listing queries (SQLAlchemy Core on the SQL stores, not the fast path).
    (listed,) = any_storage.list_runs()
    assert listed.input == value and type(listed.input) is type(value)
    assert listed.steps[0].output == value and type(listed.steps[0].output) is type(value)


def test_create_with_existing_id_returns_false_and_changes_nothing(any_storage: Any) -> None:
    first = make_run("dup-1", workflow="wf-a")
    first.input = {"v": 1}
    first_events = [event("dup-1", "workflow:start", workflow="wf-a")]
    assert any_storage.create_run(first, first_events) is True
    before = any_storage.load_run("dup-1")

    second = make_run("dup-1", workflow="wf-b", status=RunStatus.COMPLETED, n_steps=5)
    second.input = {"v": 2}
    second.data = {"other": True}
    assert (
        any_storage.create_run(second, [event("dup-1", "workflow:start", workflow="wf-b")]) is False
    )

    assert any_storage.load_run("dup-1") == before
    assert any_storage.list_traces(run_id="dup-1") == first_events
    assert any_storage.list_traces(workflow="wf-b") == []
    assert ids(any_storage.list_runs()) == ["dup-1"]


@pytest.mark.parametrize("n_steps", [1, 0])
def test_create_run_with_one_or_no_steps(any_storage: Any, n_steps: int) -> None:
    state = make_run("few-1", n_steps=n_steps)
    assert any_storage.create_run(state, [event("few-1", "workflow:start")]) is True
    loaded = any_storage.load_run("few-1")
    assert loaded is not None
    assert len(loaded.steps) == n_steps
    assert loaded == state
    assert len(any_storage.list_traces(run_id="few-1")) == 1


def test_nul_character_in_json_round_trips_or_raises_flux_error(
    any_storage: Any, request: pytest.FixtureRequest
) -> None:
    state = make_run("nul-1", n_steps=1)
    state.input = {"s": "a\x00b"}
    try:
        created = any_storage.create_run(state, [])
    except FluxError:
        assert any_storage.load_run("nul-1") is None
        return
    assert created is True
    loaded = any_storage.load_run("nul-1")
    assert loaded is not None
    assert loaded.input == {"s": "a\x00b"}


def test_non_utc_datetimes_keep_their_instant(
    any_storage: Any, request: pytest.FixtureRequest
) -> None:
    plus2 = timezone(timedelta(hours=2))
    minus5 = timezone(timedelta(hours=-5))
    state = make_run("tz-1", n_steps=1, created_at=datetime(2024, 1, 1, 12, 0, tzinfo=plus2))
    state.finished_at = datetime(2024, 1, 1, 13, 0, tzinfo=plus2)
    state.steps[0].started_at = datetime(2024, 1, 1, 6, 0, tzinfo=minus5)
    state.steps[0].wait_deadline = datetime(2024, 1, 1, 7, 30, tzinfo=minus5)
    assert any_storage.create_run(state, []) is True
    loaded = any_storage.load_run("tz-1")
    assert loaded is not None
    assert loaded.created_at == datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    assert loaded.finished_at == datetime(2024, 1, 1, 11, 0, tzinfo=UTC)
    assert loaded.steps[0].started_at == datetime(2024, 1, 1, 11, 0, tzinfo=UTC)
    assert loaded.steps[0].wait_deadline == datetime(2024, 1, 1, 12, 30, tzinfo=UTC)


def test_expired_waits_with_non_utc_now_compares_instants(
    any_storage: Any, request: pytest.FixtureRequest
) -> None:
    now = datetime.now(UTC)
    state = make_run("tzw-1", status=RunStatus.SUSPENDED, n_steps=1)
    state.steps[0].status = StepStatus.SUSPENDED
    state.steps[0].wait_deadline = now + timedelta(minutes=30)
    assert any_storage.create_run(state, []) is True
    plus2_now = now.astimezone(timezone(timedelta(hours=2)))
    assert ids(any_storage.expired_waits(plus2_now)) == []
    assert ids(any_storage.expired_waits(plus2_now + timedelta(hours=1))) == ["tzw-1"]


# -- save_run ---------------------------------------------------------------------------------
def test_save_run_with_right_version_lands(any_storage: Any) -> None:
    created_events = [event("save-1", "workflow:start")]
    original = make_run("save-1", created_at=T0)
    assert any_storage.create_run(original, created_events) is True
    stored = any_storage.load_run("save-1")
    assert stored is not None
    assert stored.version == 0

    state = any_storage.load_run("save-1")
    assert state is not None
    before_save = datetime.now(UTC)
    state.status = RunStatus.SUSPENDED
    state.current_step = 1
    state.data = {"k": ["v", {"ü": 1}]}
    state.error = "E: x"
    state.workflow_version = "v9"
    state.finished_at = T0 + timedelta(days=1)
    state.created_at = T0 + timedelta(days=30)  # must be ignored: created_at is written once
    state.steps[0].status = StepStatus.COMPLETED
    state.steps[0].output = {"out": [1, 2]}
    state.steps[0].attempts = 1
    state.steps[0].finished_at = T0 + timedelta(minutes=1)
    state.steps[1].status = StepStatus.SUSPENDED
    state.steps[1].waiting_for = "go"
    state.steps[1].wait_deadline = T0 + timedelta(hours=2)
    state.steps[1].traceback = "Traceback (most recent call last):\nValueError: ✗"
    # Modified but not listed: must not be persisted.
    state.steps[2].status = StepStatus.FAILED
    state.steps[2].error = "not listed"
    state.steps[2].attempts = 9
    state.steps[2].traceback = "not listed"
    new_events = [
        event("save-1", "step:complete", status="completed", step="s0", step_index=0),
        event(
            "save-1",
            "step:suspend",
            status="suspended",
            step="s1",
            step_index=1,
            meta={"signal": "go"},
        ),
    ]

    assert any_storage.save_run(state, 0, (0, 1), new_events) is True
    assert state.version == 1

    loaded = any_storage.load_run("save-1")
    assert loaded is not None
    assert loaded.version == 1
    assert loaded.status is RunStatus.SUSPENDED
    assert loaded.current_step == 1
    assert loaded.data == {"k": ["v", {"ü": 1}]}
    assert loaded.error == "E: x"
    assert loaded.workflow_version == "v9"
    assert loaded.finished_at == T0 + timedelta(days=1)
    assert loaded.created_at == T0
    assert loaded.updated_at == state.updated_at
    assert loaded.updated_at >= before_save - timedelta(seconds=1)
    assert_utc(loaded.updated_at)
    assert loaded.steps[0] == state.steps[0]
    assert loaded.steps[1] == state.steps[1]
    assert loaded.steps[2] == stored.steps[2]
    assert loaded.steps[2].status is StepStatus.PENDING
    assert loaded.steps[2].error is None
    assert loaded.steps[2].attempts == 0
    assert loaded.steps[2].traceback is None
    assert loaded.steps[1].traceback == "Traceback (most recent call last):\nValueError: ✗"
    assert any_storage.list_traces(run_id="save-1") == created_events + new_events


def test_save_run_versions_increase_by_one_each_time(any_storage: Any) -> None:
    assert any_storage.create_run(make_run("ver-1"), []) is True
    state = any_storage.load_run("ver-1")
    assert state is not None
    for expected in range(4):
        state.data = {"round": expected}
        assert any_storage.save_run(state, expected, set(), []) is True
        assert state.version == expected + 1
        loaded = any_storage.load_run("ver-1")
        assert loaded is not None
        assert loaded.version == expected + 1
        assert loaded.data == {"round": expected}


@pytest.mark.parametrize("expected_version", [0, 2, -1], ids=["older", "newer", "negative"])
def test_save_run_with_stale_version_returns_false_and_changes_nothing(
    any_storage: Any, expected_version: int
) -> None:
    created_events = [event("stale-1", "workflow:start")]
    assert any_storage.create_run(make_run("stale-1", created_at=T0), created_events) is True
    first = any_storage.load_run("stale-1")
    assert first is not None
    first.data = {"winner": True}
    winner_events = [event("stale-1", "step:start", step="s0", step_index=0)]
    assert any_storage.save_run(first, 0, [0], winner_events) is True  # now at version 1
    snapshot = any_storage.load_run("stale-1")
    assert snapshot is not None

    loser = any_storage.load_run("stale-1")
    assert loser is not None
    loser.version = expected_version
    loser.status = RunStatus.FAILED
    loser.data = {"loser": True}
    loser.steps[0].status = StepStatus.FAILED
    loser.steps[1].output = "never"
    loser_events = [event("stale-1", "step:error", status="failed")]
    assert any_storage.save_run(loser, expected_version, [0, 1], loser_events) is False
    assert loser.version == expected_version  # not bumped

    assert any_storage.load_run("stale-1") == snapshot
    assert any_storage.list_traces(run_id="stale-1") == created_events + winner_events
    assert any_storage.list_traces(type="step:error") == []


def test_save_run_of_missing_run_returns_false(any_storage: Any) -> None:
    ghost = make_run("ghost-1")
    assert any_storage.save_run(ghost, 0, [0], [event("ghost-1")]) is False
    assert any_storage.load_run("ghost-1") is None
    assert any_storage.list_traces() == []


def test_created_at_is_never_changed_by_save_run(any_storage: Any) -> None:
    assert any_storage.create_run(make_run("ca-1", created_at=T0), []) is True
    for i in range(3):
        state = any_storage.load_run("ca-1")
        assert state is not None
        state.created_at = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=i)
        assert any_storage.save_run(state, i, [0], []) is True
        loaded = any_storage.load_run("ca-1")
        assert loaded is not None
        assert loaded.created_at == T0


# -- private copies -----------------------------------------------------------------------------
def test_load_returns_a_private_copy(any_storage: Any) -> None:
    original = make_full_run("copy-1")
    assert any_storage.create_run(original, []) is True
    snapshot = any_storage.load_run("copy-1")

    loaded = any_storage.load_run("copy-1")
    assert loaded is not None
    loaded.status = RunStatus.FAILED
    loaded.input["nested"]["list"].append(99)
    loaded.input["new"] = 1
    loaded.data["counter"] = 1000
    loaded.data["items"][0]["a"] = "changed"
    loaded.steps[0].output["amounts"].append(7)
    loaded.steps[0].status = StepStatus.FAILED
    loaded.steps.append(StepState(name="extra", index=4))
    loaded.version = 42

    assert any_storage.load_run("copy-1") == snapshot
    listed = any_storage.list_runs()
    assert listed == [snapshot]
    listed[0].data["counter"] = -1
    listed[0].steps[0].output["receipt"] = "x"
    assert any_storage.load_run("copy-1") == snapshot


def test_store_keeps_its_own_copy_of_what_was_written(any_storage: Any) -> None:
    state = make_run("own-1")
    state.input = {"a": [1, 2]}
    assert any_storage.create_run(state, []) is True
    state.input["a"].append(3)
    state.steps[0].status = StepStatus.FAILED
    loaded = any_storage.load_run("own-1")
    assert loaded is not None
    assert loaded.input == {"a": [1, 2]}
    assert loaded.steps[0].status is StepStatus.PENDING

    loaded.data = {"d": {"x": 1}}
    loaded.steps[0].output = {"o": [1]}
    assert any_storage.save_run(loaded, 0, [0], []) is True
    loaded.data["d"]["x"] = 2
    loaded.steps[0].output["o"].append(2)
    again = any_storage.load_run("own-1")
    assert again is not None
    assert again.data == {"d": {"x": 1}}
    assert again.steps[0].output == {"o": [1]}


def test_trace_events_are_private_copies(any_storage: Any, request: pytest.FixtureRequest) -> None:
    ev = event("tcopy-1", "workflow:start", meta={"a": [1]})
    any_storage.append_traces([ev])
    ev.meta["a"].append(2)  # type: ignore[index]
    listed = any_storage.list_traces(run_id="tcopy-1")
    assert listed[0].meta == {"a": [1]}
    listed[0].meta["b"] = 1  # type: ignore[index]
    assert any_storage.list_traces(run_id="tcopy-1")[0].meta == {"a": [1]}


# -- list / count / delete ----------------------------------------------------------------------
@pytest.fixture
def five_runs(any_storage: Any) -> Any:
    """r0..r4 created one minute apart (r4 newest), inserted out of order."""
    spec = {
        0: ("wf-a", RunStatus.COMPLETED),
        1: ("wf-b", RunStatus.FAILED),
        2: ("wf-a", RunStatus.RUNNING),
        3: ("wf-b", RunStatus.COMPLETED),
        4: ("wf-a", RunStatus.SUSPENDED),
    }
    for i in (2, 0, 4, 1, 3):
        wf, status = spec[i]
        run = make_run(f"r{i}", workflow=wf, status=status, created_at=T0 + timedelta(minutes=i))
        assert any_storage.create_run(run, []) is True
    return any_storage


def test_list_runs_orders_newest_created_first(five_runs: Any) -> None:
    assert ids(five_runs.list_runs()) == ["r4", "r3", "r2", "r1", "r0"]
    listed = five_runs.list_runs()
    assert listed[0] == five_runs.load_run("r4")
    assert len(listed[0].steps) == 3


def test_list_runs_filters(five_runs: Any) -> None:
    assert ids(five_runs.list_runs(workflow="wf-a")) == ["r4", "r2", "r0"]
    assert ids(five_runs.list_runs(workflow="wf-b")) == ["r3", "r1"]
    assert ids(five_runs.list_runs(workflow="nope")) == []
    assert ids(five_runs.list_runs(status="completed")) == ["r3", "r0"]
    assert ids(five_runs.list_runs(status=["completed", "failed"])) == ["r3", "r1", "r0"]
    assert ids(five_runs.list_runs(status=("running", "suspended"))) == ["r4", "r2"]
    assert ids(five_runs.list_runs(status=[])) == []
    assert ids(five_runs.list_runs(status="cancelled")) == []
    assert ids(five_runs.list_runs(workflow="wf-a", status="completed")) == ["r0"]
    assert ids(five_runs.list_runs(workflow="wf-b", status=["failed", "running"])) == ["r1"]


def test_list_runs_limit_and_offset(five_runs: Any) -> None:
    assert ids(five_runs.list_runs(limit=2)) == ["r4", "r3"]
    assert ids(five_runs.list_runs(limit=2, offset=1)) == ["r3", "r2"]
    assert ids(five_runs.list_runs(limit=2, offset=4)) == ["r0"]
    assert ids(five_runs.list_runs(offset=3)) == ["r1", "r0"]
    assert ids(five_runs.list_runs(limit=None, offset=2)) == ["r2", "r1", "r0"]
    assert ids(five_runs.list_runs(limit=None)) == ["r4", "r3", "r2", "r1", "r0"]
    assert ids(five_runs.list_runs(limit=None, offset=5)) == []
    assert ids(five_runs.list_runs(offset=10)) == []
    assert ids(five_runs.list_runs(limit=0)) == []
    assert ids(five_runs.list_runs(workflow="wf-a", limit=1, offset=1)) == ["r2"]
    assert ids(five_runs.list_runs(status="completed", limit=None, offset=1)) == ["r0"]


def test_list_runs_default_limit_is_50(any_storage: Any) -> None:
    for i in range(52):
        run = make_run(f"many-{i:02d}", n_steps=1, created_at=T0 + timedelta(seconds=i))
        assert any_storage.create_run(run, []) is True
    listed = any_storage.list_runs()
    assert ids(listed) == [f"many-{i:02d}" for i in range(51, 1, -1)]
    assert len(any_storage.list_runs(limit=None)) == 52


def test_count_runs(five_runs: Any) -> None:
    assert five_runs.count_runs() == {
        "completed": 2,
        "failed": 1,
        "running": 1,
        "suspended": 1,
    }
    assert five_runs.count_runs("wf-a") == {"completed": 1, "running": 1, "suspended": 1}
    assert five_runs.count_runs(workflow="wf-b") == {"completed": 1, "failed": 1}
    assert five_runs.count_runs("nope") == {}


def test_count_runs_empty_store(any_storage: Any) -> None:
    assert any_storage.count_runs() == {}


def test_delete_run(any_storage: Any) -> None:
    keep_events = [event("keep-1", "workflow:start"), event("keep-1", "step:start")]
    assert any_storage.create_run(make_run("del-1"), [event("del-1", "workflow:start")]) is True
    assert any_storage.create_run(make_run("keep-1"), keep_events) is True
    any_storage.append_traces([event("del-1", "step:start")])
    kept = any_storage.load_run("keep-1")

    assert any_storage.delete_run("del-1") is True
    assert any_storage.load_run("del-1") is None
    assert any_storage.list_traces(run_id="del-1") == []
    assert ids(any_storage.list_runs()) == ["keep-1"]
    assert any_storage.load_run("keep-1") == kept
    assert any_storage.list_traces() == keep_events
    assert any_storage.count_runs() == {"running": 1}

    assert any_storage.delete_run("del-1") is False
    assert any_storage.delete_run("never-existed") is False
    # The id can be used again after delete.
    assert any_storage.create_run(make_run("del-1", workflow="again"), []) is True
    reborn = any_storage.load_run("del-1")
    assert reborn is not None
    assert reborn.workflow == "again"
    assert reborn.version == 0


def test_a_run_not_due_yet_is_not_stale(any_storage: Any) -> None:
    """A run started with a countdown waits in the broker: ``recover`` must not start it
    early, however long ago it was created."""
    now = datetime.now(UTC)
    scheduled = make_run("later", status=RunStatus.PENDING)
    scheduled.not_before = now + timedelta(hours=1)
    assert any_storage.create_run(scheduled, []) is True
    assert any_storage.create_run(make_run("now", status=RunStatus.PENDING), []) is True
    soon = now + timedelta(minutes=10)
    assert ids(any_storage.stale_runs(soon)) == ["now"]
    assert sorted(ids(any_storage.stale_runs(now + timedelta(hours=2)))) == ["later", "now"]


def test_prune_runs_deletes_old_finished_runs_with_their_steps_and_traces(
    any_storage: Any,
) -> None:
    spec = [
        ("old-failed", RunStatus.FAILED),
        ("old-done", RunStatus.COMPLETED),
        ("old-cancelled", RunStatus.CANCELLED),
        ("old-running", RunStatus.RUNNING),  # not finished: kept however old
        ("old-waiting", RunStatus.SUSPENDED),
        ("new-done", RunStatus.COMPLETED),
    ]
    for run_id, status in spec:
        run = make_run(run_id, status=status)
        assert any_storage.create_run(run, [event(run_id, "workflow:start")]) is True
        time.sleep(0.002)
    cutoff = any_storage.load_run("new-done").updated_at  # strictly before: new-done stays
    finished = ["cancelled", "completed", "failed", "rolled_back"]

    assert any_storage.prune_runs(cutoff, finished, limit=None) == 3  # a count, no delete
    assert len(any_storage.list_runs()) == 6
    assert any_storage.prune_runs(cutoff, ["completed"], limit=5) == 1
    assert any_storage.load_run("old-done") is None
    assert any_storage.prune_runs(cutoff, finished, limit=1) == 1  # the oldest first
    assert any_storage.load_run("old-failed") is None
    assert any_storage.prune_runs(cutoff, finished, limit=10) == 1
    assert any_storage.prune_runs(cutoff, finished, limit=10) == 0
    assert sorted(ids(any_storage.list_runs())) == ["new-done", "old-running", "old-waiting"]
    assert {e.run_id for e in any_storage.list_traces()} == {
        "new-done",
        "old-running",
        "old-waiting",
    }
    kept = any_storage.load_run("old-running")
    assert kept is not None and len(kept.steps) == 3
    # The pruned ids are free again, with no step rows left behind.
    assert any_storage.create_run(make_run("old-done"), []) is True


# -- traces -------------------------------------------------------------------------------------
@pytest.fixture
def traced(any_storage: Any) -> tuple[Any, list[TraceEvent]]:
    base = datetime(2024, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
    evs = [
        event(
            "t1",
            "workflow:start",
            workflow="wf-a",
            ts=base,
            meta={"input": {"ü": [1, {"x": None}]}},
        ),
        event(
            "t1",
            "step:start",
            workflow="wf-a",
            step="a",
            step_index=0,
            kind="step",
            attempt=1,
            max_attempts=3,
            task_id="tid-1",
            worker="w1",
            ts=base + timedelta(seconds=1),
        ),
        event("t2", "workflow:start", workflow="wf-b", ts=base - timedelta(days=1)),
        event(
            "t1",
            "step:error",
            workflow="wf-a",
            status="failed",
            step="a",
            step_index=0,
            kind="step",
            attempt=1,
            max_attempts=3,
            duration_ms=12,
            error="ValueError: ✗",
            ts=base + timedelta(seconds=2),
        ),
        event(
            "t2",
            "hook:error",
            workflow="wf-b",
            status=None,
            error="RuntimeError: hook",
            meta={"hook": "step_start"},
        ),
        event(
            "t1",
            "workflow:error",
            workflow="wf-a",
            status="failed",
            duration_ms=2000,
            error="ValueError: ✗",
        ),
        event(
            "t2",
            "step:complete",
            workflow="wf-b",
            status="completed",
            step="b",
            step_index=0,
            kind="commit",
            duration_ms=0,
        ),
    ]
    any_storage.append_traces(evs[:3])
    any_storage.append_traces([])
    any_storage.append_traces(evs[3:5])
    any_storage.append_traces(evs[5:])
    return any_storage, evs


def test_list_traces_keeps_insertion_order_and_every_field(
    traced: tuple[Any, list[TraceEvent]],
) -> None:
    storage, evs = traced
    listed = storage.list_traces()
    assert listed == evs  # every field, including ts, meta and the event id
    for e in listed:
        assert_utc(e.ts)
    assert listed[0].meta == {"input": {"ü": [1, {"x": None}]}}


def test_list_traces_filters(traced: tuple[Any, list[TraceEvent]]) -> None:
    storage, evs = traced
    assert storage.list_traces(run_id="t1") == [evs[0], evs[1], evs[3], evs[5]]
    assert storage.list_traces(run_id="t2") == [evs[2], evs[4], evs[6]]
    assert storage.list_traces(run_id="nope") == []
    assert storage.list_traces(workflow="wf-b") == [evs[2], evs[4], evs[6]]
    assert storage.list_traces(type="workflow:start") == [evs[0], evs[2]]
    assert storage.list_traces(type=["step:error", "hook:error"]) == [evs[3], evs[4]]
    assert storage.list_traces(type=("workflow:error",)) == [evs[5]]
    assert storage.list_traces(status="failed") == [evs[3], evs[5]]
    assert storage.list_traces(status=["completed", "running"]) == [
        evs[0],
        evs[1],
        evs[2],
        evs[6],
    ]
    assert storage.list_traces(run_id="t1", type="workflow:start") == [evs[0]]
    assert storage.list_traces(workflow="wf-a", status="failed", type="workflow:error") == [evs[5]]
    assert storage.list_traces(run_id="t2", workflow="wf-a") == []


def test_list_traces_limit_and_offset(traced: tuple[Any, list[TraceEvent]]) -> None:
    storage, evs = traced
    assert storage.list_traces(limit=2) == evs[:2]
    assert storage.list_traces(limit=2, offset=2) == evs[2:4]
    assert storage.list_traces(offset=5) == evs[5:]
    assert storage.list_traces(limit=None, offset=4) == evs[4:]
    assert storage.list_traces(run_id="t1", limit=2, offset=1) == [evs[1], evs[3]]
    assert storage.list_traces(limit=0) == []


def test_list_traces_newest_first_pages_from_the_end(
    traced: tuple[Any, list[TraceEvent]],
) -> None:
    storage, evs = traced
    newest = list(reversed(evs))
    assert storage.list_traces(newest_first=True) == newest
    assert storage.list_traces(newest_first=True, limit=2) == newest[:2]
    assert storage.list_traces(newest_first=True, limit=2, offset=2) == newest[2:4]
    assert (
        storage.list_traces(run_id="t1", newest_first=True, limit=1)
        == [e for e in newest if e.run_id == "t1"][:1]
    )


def test_traces_from_create_save_and_append_share_one_order(any_storage: Any) -> None:
    e1 = event("mix-1", "workflow:start")
    e2 = event("mix-1", "hook:error", status=None)
    e3 = event("mix-1", "step:start")
    assert any_storage.create_run(make_run("mix-1"), [e1]) is True
    any_storage.append_traces([e2])
    state = any_storage.load_run("mix-1")
    assert any_storage.save_run(state, 0, [], [e3]) is True
    assert any_storage.list_traces(run_id="mix-1") == [e1, e2, e3]


# -- stale_runs / expired_waits -----------------------------------------------------------------
def test_stale_runs_selects_active_runs_not_updated_since(any_storage: Any) -> None:
    statuses = [
        ("old-run", RunStatus.RUNNING),
        ("old-rb", RunStatus.ROLLING_BACK),
        ("susp", RunStatus.SUSPENDED),
        ("done", RunStatus.COMPLETED),
        ("pend", RunStatus.PENDING),
        ("fail", RunStatus.FAILED),
        ("rolled", RunStatus.ROLLED_BACK),
        ("canc", RunStatus.CANCELLED),
        ("new-run", RunStatus.RUNNING),
    ]
    for run_id, status in statuses:
        assert any_storage.create_run(make_run(run_id, status=status), []) is True
        time.sleep(0.002)
    updated = {run_id: any_storage.load_run(run_id).updated_at for run_id, _ in statuses}
    future = datetime.now(UTC) + timedelta(hours=1)

    # pending counts as active: a run whose first dispatch was lost must be recoverable.
    assert ids(any_storage.stale_runs(future)) == ["old-run", "old-rb", "pend", "new-run"]
    assert ids(any_storage.stale_runs(future, limit=2)) == ["old-run", "old-rb"]
    assert ids(any_storage.stale_runs(updated["new-run"])) == ["old-run", "old-rb", "pend"]
    assert ids(any_storage.stale_runs(updated["old-rb"])) == ["old-run"]
    assert ids(any_storage.stale_runs(updated["old-run"])) == []  # strictly before
    assert ids(any_storage.stale_runs(T0)) == []

    # An update makes a run fresh again, and moves it to the end of the oldest-first order.
    state = any_storage.load_run("old-run")
    assert any_storage.save_run(state, 0, [], []) is True
    assert ids(any_storage.stale_runs(updated["new-run"])) == ["old-rb", "pend"]
    assert ids(any_storage.stale_runs(future)) == ["old-rb", "pend", "new-run", "old-run"]
    stale = any_storage.stale_runs(future)
    assert stale[0] == any_storage.load_run("old-rb")


def test_expired_waits(any_storage: Any) -> None:
    now = datetime.now(UTC)

    def waiting(
        run_id: str,
        deadline: datetime | None,
        *,
        run_status: RunStatus = RunStatus.SUSPENDED,
        step_status: StepStatus = StepStatus.SUSPENDED,
    ) -> None:
        state = make_run(run_id, status=run_status, n_steps=2, current_step=1)
        state.steps[0].status = StepStatus.COMPLETED
        state.steps[1].status = step_status
        state.steps[1].waiting_for = "go"
        state.steps[1].wait_deadline = deadline
        assert any_storage.create_run(state, []) is True

    waiting("expired", now - timedelta(minutes=5))
    waiting("exactly-now", now)
    waiting("future", now + timedelta(minutes=5))
    waiting("no-deadline", None)
    waiting("run-not-suspended", now - timedelta(minutes=5), run_status=RunStatus.RUNNING)
    waiting("step-completed", now - timedelta(minutes=5), step_status=StepStatus.COMPLETED)
    waiting(
        "cancelled",
        now - timedelta(minutes=5),
        run_status=RunStatus.CANCELLED,
        step_status=StepStatus.FAILED,
    )

    assert sorted(ids(any_storage.expired_waits(now))) == ["exactly-now", "expired"]
    assert ids(any_storage.expired_waits(now - timedelta(seconds=1))) == ["expired"]
    assert sorted(ids(any_storage.expired_waits(now + timedelta(minutes=10)))) == [
        "exactly-now",
        "expired",
        "future",
    ]
    assert ids(any_storage.expired_waits(now - timedelta(hours=1))) == []
    limited = ids(any_storage.expired_waits(now, limit=1))
    assert len(limited) == 1
    assert limited[0] in {"expired", "exactly-now"}
    found = {r.id: r for r in any_storage.expired_waits(now)}
    assert found["expired"] == any_storage.load_run("expired")

    # Once the step leaves ``suspended`` the run is no longer selected.
    state = any_storage.load_run("expired")
    state.status = RunStatus.RUNNING
    state.steps[1].status = StepStatus.COMPLETED
    state.steps[1].wait_deadline = None
    assert any_storage.save_run(state, 0, [1], []) is True
    assert ids(any_storage.expired_waits(now)) == ["exactly-now"]


# -- transaction() ------------------------------------------------------------------------------
def test_transaction_save_run_behaves_like_save_run(any_storage: Any) -> None:
    assert any_storage.create_run(make_run("tx-any"), []) is True
    state = any_storage.load_run("tx-any")
    state.status = RunStatus.COMPLETED
    ev = event("tx-any", "workflow:complete", status="completed")
    with any_storage.transaction() as tx:
        if isinstance(any_storage, MemoryStorage):
            assert tx.session is None
        else:
            assert isinstance(tx.session, Session)
        assert tx.save_run(state, 0, [0], [ev]) is True
    assert state.version == 1
    loaded = any_storage.load_run("tx-any")
    assert loaded.version == 1
    assert loaded.status is RunStatus.COMPLETED
    assert any_storage.list_traces(run_id="tx-any") == [ev]

    stale = any_storage.load_run("tx-any")
    stale.status = RunStatus.FAILED
    with any_storage.transaction() as tx:
        assert tx.save_run(stale, 0, [0], [event("tx-any", "workflow:error")]) is False
    loaded = any_storage.load_run("tx-any")
    assert loaded.version == 1
    assert loaded.status is RunStatus.COMPLETED
    assert any_storage.list_traces(run_id="tx-any") == [ev]


@pytest.fixture
def side_table(sql_storage: SqlStorage) -> Iterator[sa.Table]:
    """A table of the test's own, written through ``tx.session``."""
    md = sa.MetaData()
    table = sa.Table(
        f"tx_side_{uuid.uuid4().hex[:8]}",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("note", sa.String(50), nullable=False),
    )
    md.create_all(sql_storage.engine)
    yield table
    md.drop_all(sql_storage.engine)


def side_rows(storage: SqlStorage, table: sa.Table) -> list[tuple[int, str]]:
    with storage.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(table).order_by(table.c.id))]


def test_transaction_commits_session_writes_with_a_landed_save(
    sql_storage: SqlStorage, side_table: sa.Table
) -> None:
    assert sql_storage.create_run(make_run("tx-1"), []) is True
    state = sql_storage.load_run("tx-1")
    state.status = RunStatus.COMPLETED
    state.steps[0].status = StepStatus.COMPLETED
    ev = event("tx-1", "step:complete", status="completed")
    with sql_storage.transaction() as tx:
        tx.session.execute(side_table.insert().values(id=1, note="effect ✓"))
        assert tx.save_run(state, 0, [0], [ev]) is True
        # Nothing is visible to other connections before the block ends.
        assert side_rows(sql_storage, side_table) == []
        assert sql_storage.load_run("tx-1").version == 0
        assert sql_storage.list_traces(run_id="tx-1") == []
    assert side_rows(sql_storage, side_table) == [(1, "effect ✓")]
    loaded = sql_storage.load_run("tx-1")
    assert loaded.version == 1
    assert loaded.status is RunStatus.COMPLETED
    assert loaded.steps[0].status is StepStatus.COMPLETED
    assert sql_storage.list_traces(run_id="tx-1") == [ev]


def test_transaction_rolls_back_session_writes_when_save_does_not_land(
    sql_storage: SqlStorage, side_table: sa.Table
) -> None:
    assert sql_storage.create_run(make_run("tx-2"), []) is True
    stale = sql_storage.load_run("tx-2")
    winner = sql_storage.load_run("tx-2")
    winner.data = {"winner": 1}
    assert sql_storage.save_run(winner, 0, [], []) is True
    snapshot = sql_storage.load_run("tx-2")

    stale.status = RunStatus.COMPLETED
    stale.steps[0].status = StepStatus.COMPLETED
    with sql_storage.transaction() as tx:
        tx.session.execute(side_table.insert().values(id=1, note="lost"))
        assert tx.save_run(stale, 0, [0], [event("tx-2", "step:complete")]) is False
    assert side_rows(sql_storage, side_table) == []
    assert sql_storage.load_run("tx-2") == snapshot
    assert sql_storage.list_traces(run_id="tx-2") == []


def test_transaction_rolls_back_everything_when_an_exception_escapes(
    sql_storage: SqlStorage, side_table: sa.Table
) -> None:
    assert sql_storage.create_run(make_run("tx-3"), []) is True
    snapshot = sql_storage.load_run("tx-3")
    state = sql_storage.load_run("tx-3")
    state.status = RunStatus.COMPLETED
    with pytest.raises(RuntimeError, match="after the save"):
        with sql_storage.transaction() as tx:
            tx.session.execute(side_table.insert().values(id=1, note="undone"))
            assert tx.save_run(state, 0, [0], [event("tx-3", "step:complete")]) is True
            raise RuntimeError("after the save")
    assert side_rows(sql_storage, side_table) == []
    assert sql_storage.load_run("tx-3") == snapshot
    assert sql_storage.list_traces(run_id="tx-3") == []

    # The store is still usable and the version check still works.
    fresh = sql_storage.load_run("tx-3")
    with sql_storage.transaction() as tx:
        tx.session.execute(side_table.insert().values(id=2, note="kept"))
        assert tx.save_run(fresh, 0, [], []) is True
    assert side_rows(sql_storage, side_table) == [(2, "kept")]
    assert sql_storage.load_run("tx-3").version == 1


def test_transaction_without_save_run_commits_nothing(
    sql_storage: SqlStorage, side_table: sa.Table
) -> None:
    with sql_storage.transaction() as tx:
        tx.session.execute(side_table.insert().values(id=1, note="orphan"))
    assert side_rows(sql_storage, side_table) == []


# -- MemoryStorage's own options ----------------------------------------------------------------


def test_memory_max_traces_keeps_the_newest_events_in_order() -> None:
    storage = MemoryStorage(max_traces=5)
    evs = [event(f"r{i % 3}", "step:start", step=f"s{i}") for i in range(12)]
    storage.create_run(make_run("r0"), evs[:2])
    for i in range(2, 12, 3):
        storage.append_traces(evs[i : i + 3])
    assert storage.list_traces() == evs[-5:]
    assert storage.list_traces(run_id="r1") == [e for e in evs[-5:] if e.run_id == "r1"]
    assert storage.delete_run("r0") is True
    kept = [e for e in evs[-5:] if e.run_id != "r0"]
    assert storage.list_traces() == kept
    storage.append_traces(evs[:5])  # still bounded after a delete rebuilt the buffer
    assert storage.list_traces() == (kept + evs[:5])[-5:]


def test_memory_store_keeps_runs_out_of_the_garbage_collectors_way() -> None:
    """Stored runs are tuples, not objects: a run as objects was about a dozen that every full
    collection walked, and embedded runs slowed down as the store grew (25% of the time
    went to collections with 20,000 runs stored)."""
    import gc

    storage = MemoryStorage()
    gc.collect()
    before = len(gc.get_objects())
    for i in range(2000):
        run = make_run(f"gc-{i}")
        run.data = {"n": i, "tags": ["a", "b"]}
        assert storage.create_run(run, [event(f"gc-{i}", "workflow:start")])
        state = storage.load_run(f"gc-{i}")
        assert state is not None
        state.steps[0].status = StepStatus.COMPLETED
        state.steps[0].output = {"ok": True}
        assert storage.save_run(state, state.version, [0], [event(f"gc-{i}", "step:complete")])
        del state, run
    gc.collect()
    per_run = (len(gc.get_objects()) - before) / 2000
    assert per_run < 7, per_run  # 11 as objects; 5 here: the dicts and lists stored


def test_workflow_names_are_those_with_runs_sorted(any_storage: Any) -> None:
    assert any_storage.workflow_names() == []
    for run_id, name in (("wn-1", "zeta"), ("wn-2", "alpha ✓"), ("wn-3", "zeta")):
        assert any_storage.create_run(make_run(run_id, workflow=name), []) is True
    assert any_storage.workflow_names() == ["alpha ✓", "zeta"]


def test_run_ids_with_prefix_is_exact_case_and_wildcard_safe(any_storage: Any) -> None:
    for run_id in ("ab12-one", "ab12-two", "AB12-upper", "ab1%x", "ab1_y", "ab1*z", "ab1[q"):
        assert any_storage.create_run(make_run(run_id), []) is True
    assert any_storage.run_ids_with_prefix("ab12") == ["ab12-one", "ab12-two"]
    assert any_storage.run_ids_with_prefix("ab12", limit=1) == ["ab12-one"]
    assert any_storage.run_ids_with_prefix("ab12", limit=1, descending=True) == ["ab12-two"]
    assert any_storage.run_ids_with_prefix("AB12") == ["AB12-upper"]
    # LIKE and GLOB wildcards in a prefix match themselves only.
    assert any_storage.run_ids_with_prefix("ab1%") == ["ab1%x"]
    assert any_storage.run_ids_with_prefix("ab1_") == ["ab1_y"]
    assert any_storage.run_ids_with_prefix("ab1*") == ["ab1*z"]
    assert any_storage.run_ids_with_prefix("ab1[") == ["ab1[q"]
    assert any_storage.run_ids_with_prefix("zz") == []


def test_due_times_of_stored_runs_only(any_storage: Any) -> None:
    """``due_times``: when each stored run's first step was due, in UTC: ``created_at``, or
    ``not_before`` for a run started with a countdown; unknown ids are left out; more ids
    than one query takes are read in chunks."""
    assert any_storage.due_times([]) == {}
    for n in range(3):
        run = make_run(f"due-{n}", created_at=T0 + timedelta(seconds=n))
        if n == 1:
            run.not_before = T0 + timedelta(minutes=5)
        assert any_storage.create_run(run, []) is True
    ids = ["due-2", "due-0", "nope", "due-0", "due-1", *(f"absent-{n}" for n in range(1200))]
    assert any_storage.due_times(ids) == {
        "due-0": T0,
        "due-1": T0 + timedelta(minutes=5),
        "due-2": T0 + timedelta(seconds=2),
    }
    assert all(t.utcoffset() == timedelta(0) for t in any_storage.due_times(ids).values())


def test_list_traces_since_a_time(any_storage: Any) -> None:
    assert any_storage.create_run(make_run("since-1"), []) is True
    events = [
        event("since-1", ts=T0 + timedelta(seconds=i), step_index=i, step=f"s{i}") for i in range(4)
    ]
    any_storage.append_traces(events)
    later = any_storage.list_traces(run_id="since-1", since=T0 + timedelta(seconds=1))
    assert [e.step for e in later] == ["s2", "s3"]
    newest = any_storage.list_traces(run_id="since-1", since=T0, newest_first=True, limit=2)
    assert [e.step for e in newest] == ["s3", "s2"]


# -- rows added to a run (for_each items, SPEC section 11) -------------------------------------
def _item(i: int, parent: int, value: Any) -> StepState:
    return StepState(
        name="each", index=i, kind="commit", item=i - 3, parent=parent, scope={"value": value}
    )


@pytest.mark.parametrize("in_tx", [False, True])
def test_save_run_inserts_created_rows_with_their_group_fields(
    any_storage: Any, in_tx: bool
) -> None:
    state = make_run("grow", n_steps=3)
    state.steps[1] = StepState(name="book", index=1, kind="parallel")
    state.steps[2] = StepState(name="leg", index=2, branch="left", parent=1)
    assert any_storage.create_run(state, []) is True
    state = any_storage.load_run("grow")
    assert (state.steps[2].branch, state.steps[2].parent, state.steps[2].item) == ("left", 1, None)
    state.steps.extend(_item(i, 0, {"to": f"ü{i}"}) for i in (3, 4))
    state.steps[2].scope = {"data": {"k": [1, {"x": None}]}, "unset": ["gone"]}
    ev = event("grow", "parallel:start")
    if in_tx:
        with any_storage.transaction() as tx:
            assert tx.save_run(state, 0, [2], [ev], created=[3, 4]) is True
    else:
        assert any_storage.save_run(state, 0, [2], [ev], created=[3, 4]) is True
    loaded = any_storage.load_run("grow")
    assert [s.index for s in loaded.steps] == [0, 1, 2, 3, 4]
    assert [(s.item, s.parent, s.scope, s.kind) for s in loaded.steps[3:]] == [
        (0, 0, {"value": {"to": "ü3"}}, "commit"),
        (1, 0, {"value": {"to": "ü4"}}, "commit"),
    ]
    assert loaded.steps[2].scope == {"data": {"k": [1, {"x": None}]}, "unset": ["gone"]}
    # Once stored, the new rows are updated like any other; a stale write adds nothing.
    loaded.steps[4].status = StepStatus.COMPLETED
    assert any_storage.save_run(loaded, 1, [4], []) is True
    assert any_storage.load_run("grow").steps[4].status is StepStatus.COMPLETED
    stale = any_storage.load_run("grow")
    stale.steps.append(_item(5, 0, 3))
    assert any_storage.save_run(stale, 0, [], [], created=[5]) is False
    assert len(any_storage.load_run("grow").steps) == 5


# -- the row view of a for_each item (``RowViewStorage``) --------------------------------------
def _each_run(run_id: str) -> RunState:
    """s0, a for_each at 1, s2; items 3..8: done, running, in flight, two waiting, failed."""
    state = make_run(run_id, n_steps=3, current_step=1)
    state.steps[1] = StepState(
        name="each",
        index=1,
        kind="for_each",
        status=StepStatus.RUNNING,
        scope={"open": 4, "in_flight": 2, "next": 6},  # the group's counters
    )
    S = StepStatus
    plan = [
        (S.COMPLETED, "t0"),
        (S.RUNNING, "t1"),
        (S.PENDING, "t2"),
        (S.PENDING, None),
        (S.PENDING, None),
        (S.SKIPPED, "t5"),
    ]
    for k, (status, task) in enumerate(plan):
        state.steps.append(
            StepState(
                name="each",
                index=3 + k,
                item=k,
                parent=1,
                status=status,
                task_id=task,
                output={"k": k} if status == S.COMPLETED else None,
                scope={"value": k},
            )
        )
    return state


def test_a_row_view_reads_the_defined_steps_its_row_and_where_its_group_sends_next(
    any_storage: Any,
) -> None:
    assert any_storage.create_run(_each_run("view"), []) is True
    view = any_storage.load_row_view("view", 5, 3, 1)
    assert view is not None and view.steps[1].scope == {"open": 4, "in_flight": 2, "next": 6}
    assert len(view.steps) == 9 and not view.steps.full
    assert sorted(s.index for s in view.steps.loaded()) == [0, 1, 2, 5, 6]
    assert (view.steps[5].item, view.steps[5].scope) == (2, {"value": 2})
    assert view.results == {}  # items are not results; nothing defined completed
    # Anything else is read when first asked for: the whole run, consistent.
    assert view.steps[3].output == {"k": 0}
    assert view.steps.full and [s.index for s in view.steps] == list(range(9))
    assert any_storage.load_row_view("missing", 5, 3, 1) is None


def test_a_row_view_keeps_the_objects_its_caller_changed_when_it_reads_the_rest(
    any_storage: Any,
) -> None:
    assert any_storage.create_run(_each_run("view-keep"), []) is True
    view = any_storage.load_row_view("view-keep", 5, 3, 0)
    mine = view.steps[5]
    mine.status = StepStatus.RUNNING
    rows = list(view.steps)
    assert rows[5] is mine and rows[5].status is StepStatus.RUNNING


def test_the_item_claim_starts_a_pending_item_of_a_running_group_once(
    pg_storage: SqlStorage,
) -> None:
    from fluxcelery.storage.base import StepClaim

    assert pg_storage.create_run(_each_run("claim-item"), []) is True

    with pg_storage.engine.begin() as conn:  # the claim checks the definition's hash
        conn.execute(sa.text("UPDATE flux_runs SET definition_hash = 'h' WHERE id = 'claim-item'"))

    def claim_h(row: int, definition_hash: str = "h") -> tuple[Any, bool]:
        return pg_storage.load_row_claiming(
            "claim-item",
            StepClaim(
                index=row,
                workflow="wf",
                step="each",
                kind="step",
                definition_hash=definition_hash,
                max_attempts=3,
                task_id=f"task-{row}",
                worker="w",
                event_id=f"ev-{row}-{uuid.uuid4().hex[:6]}",
                now=datetime.now(UTC),
                start_event_id="x",
            ),
            3,
            1,
        )

    assert claim_h(5, "other")[1] is False  # another definition: refused
    read_before = pg_storage.load_run("claim-item")
    state, claimed = claim_h(5)
    assert claimed is True
    assert state.steps[5].status is StepStatus.PENDING  # as read before the claim
    stored = pg_storage.load_run("claim-item")
    assert (stored.steps[5].status, stored.steps[5].attempts) == (StepStatus.RUNNING, 1)
    # Counted apart from the version: a write made from a read before the claim does not
    # land, unless it says it does not depend on item starts (an item's outcome).
    assert (stored.version, stored.claims) == (read_before.version, read_before.claims + 1)
    assert pg_storage.save_run(read_before, read_before.version, [], []) is False
    assert pg_storage.save_run(read_before, read_before.version, [], [], any_claims=True)
    start = [e for e in pg_storage.list_traces(run_id="claim-item") if e.step_index == 5]
    assert [(e.type, e.meta) for e in start] == [("step:start", {"item": 2})]
    assert claim_h(5)[1] is False  # claimed once
    assert claim_h(3)[1] is False  # a completed item is not started again
    with pg_storage.engine.begin() as conn:
        conn.execute(sa.text("UPDATE flux_runs SET status = 'rolling_back'"))
    assert claim_h(6)[1] is False  # the run stopped stepping: nothing starts
