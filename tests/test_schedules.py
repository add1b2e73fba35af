"""Schedules (SPEC section 14): declaration checks, the tick grid (table-driven, no
sleeping; DST in non-UTC zones), run ids, the catch-up decision, one run per tick however
often it is started, ``engine.schedules()``, the tick task and the beat scheduler (clock
set by the test, publishing captured)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import RecordingDispatcher

from fluxcelery import (
    DefinitionError,
    FluxEngine,
    MemoryStorage,
    RunStatus,
    schedule,
    workflow,
)
from fluxcelery.celery import tasks as flux_tasks
from fluxcelery.celery.app import BEAT_SCHEDULER, build_app
from fluxcelery.schedules import (
    TICK_TASK,
    catch_up_tick,
    declared_schedules,
    define,
    due_tick,
    forget_schedule,
    latest_tick,
    manual_run_id,
    next_tick,
    run_id_prefix,
    run_time,
    start_now,
    start_tick,
    tick_run_id,
)
from fluxcelery.schedules.beat import FluxScheduler
from fluxcelery.schedules.ticks import is_tick
from fluxcelery.settings import Settings

REPORT = workflow("sched-test-report").step("report", lambda ctx: ctx.input)


def at(text: str) -> datetime:
    """``2026-03-29T01:30`` (UTC unless an offset is given)."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@pytest.fixture
def engine() -> Iterator[FluxEngine]:
    dispatcher = RecordingDispatcher()
    engine = FluxEngine(storage=MemoryStorage(), dispatcher=dispatcher)
    engine.sent = dispatcher.sent  # type: ignore[attr-defined]
    yield engine
    engine.close()


@pytest.fixture
def declare() -> Iterator[Callable[..., Any]]:
    """``schedule()`` under a unique name; forgotten after the test."""
    made: list[str] = []

    def factory(stem: str, wf: Any = REPORT, **options: Any) -> Any:
        name = f"{stem}-{uuid.uuid4().hex[:6]}"
        made.append(name)
        return schedule(name, wf, **options)

    yield factory
    for name in made:
        forget_schedule(name)


# -- declaration ----------------------------------------------------------------------------
def test_declared_schedule_is_registered_and_exported(declare: Callable[..., Any]) -> None:
    spec = declare("nightly", cron="0  3 * * *", input={"scope": "all"}, timezone="UTC")
    assert declared_schedules()[spec.name] is spec
    assert spec.cron == "0 3 * * *"  # whitespace normalized
    assert spec.workflow is REPORT and spec.every is None and spec.catch_up is False
    assert spec.cadence == "cron 0 3 * * *"


def test_workflow_given_by_name_and_interval_as_timedelta(declare: Callable[..., Any]) -> None:
    spec = declare("poll", "sched-test-report", every=timedelta(minutes=5))
    assert spec.workflow is REPORT and spec.every == 300 and spec.cadence == "every 300s"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "0 3 * *"}, "cron '0 3 * *' must have 5 fields"),
        ({"cron": "0 3 * * * 2026"}, "must have 5 fields"),
        ({"cron": "61 * * * *"}, "bad cron '61 * * * *'"),
        ({"cron": "0 0 30 2 *"}, "it never matches a date"),
        ({"cron": 3}, "cron must be a string"),
        ({"every": 0}, "every must be a whole number of seconds > 0, got 0"),
        ({"every": -5}, "got -5"),
        ({"every": 1.5}, "got 1.5"),
        ({"every": True}, "got True"),
        ({"every": "300"}, "got '300'"),
        ({}, "give exactly one of cron="),
        ({"cron": "* * * * *", "every": 60}, "give exactly one of cron="),
        ({"every": 60, "timezone": "Mars/Olympus_Mons"}, "unknown timezone 'Mars/Olympus_Mons'"),
        ({"every": 60, "timezone": ""}, "timezone must be an IANA name"),
        ({"every": 60, "input": {"when": object()}}, "input must be JSON data"),
        ({"every": 60, "catch_up": "yes"}, "catch_up must be True or False"),
    ],
)
def test_bad_declarations_name_the_problem(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match="Schedule 'bad-one' is invalid") as info:
        schedule("bad-one", REPORT, **options)
    assert message in str(info.value)
    assert "bad-one" not in declared_schedules()


def test_unknown_workflow_and_bad_name_are_reported_together() -> None:
    with pytest.raises(DefinitionError) as info:
        schedule("no spaces please", "sched-test-nope", every=60)
    text = str(info.value)
    assert "name must be letters, digits" in text
    assert "unknown workflow 'sched-test-nope' (registered: " in text
    with pytest.raises(DefinitionError, match="workflow must be a Workflow"):
        schedule("ok-name", 42, every=60)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="name must be"):
        schedule("a:b", REPORT, every=60)  # ':' would break the run id prefix


def test_duplicate_schedule_name_is_refused(declare: Callable[..., Any]) -> None:
    spec = declare("dup", every=60)
    with pytest.raises(DefinitionError, match=f"Schedule '{spec.name}' is declared twice"):
        schedule(spec.name, REPORT, cron="* * * * *")
    assert declared_schedules()[spec.name] is spec  # the first one stays


def test_input_callable_gets_the_tick_in_the_schedule_timezone() -> None:
    spec = define(
        "feed",
        REPORT,
        every=300,
        input=lambda tick: {"since": tick.isoformat()},
        timezone="Asia/Tokyo",
    )
    assert spec.input_for(at("2026-01-02T03:00")) == {"since": "2026-01-02T12:00:00+09:00"}
    assert define("plain", REPORT, every=60, input=[1, 2]).input_for(at("2026-01-02")) == [1, 2]


# -- the tick grid ----------------------------------------------------------------------------
EVERY_CASES = [
    # (every, now, latest tick, next tick)
    (300, "2026-01-02T03:04:59.999", "2026-01-02T03:00:00", "2026-01-02T03:05:00"),
    (300, "2026-01-02T03:05:00", "2026-01-02T03:05:00", "2026-01-02T03:10:00"),
    (7, "1970-01-01T00:01:40", "1970-01-01T00:01:38", "1970-01-01T00:01:45"),
    (86400, "2026-06-30T23:59:59", "2026-06-30T00:00:00", "2026-07-01T00:00:00"),
    # the grid is UTC seconds since the epoch, whatever the offset of ``now``
    (3600, "2026-01-02T05:30:00+05:30", "2026-01-02T00:00:00", "2026-01-02T01:00:00"),
]


@pytest.mark.parametrize(("every", "now", "latest", "following"), EVERY_CASES)
def test_every_ticks_on_multiples_since_the_epoch(
    every: int, now: str, latest: str, following: str
) -> None:
    spec = define("grid", REPORT, every=every)
    assert latest_tick(spec, at(now)) == at(latest)
    assert next_tick(spec, at(now)) == at(following)


CRON_CASES = [
    # (cron, timezone, now (UTC unless offset), latest tick (UTC), next tick (UTC))
    ("0 3 * * *", "UTC", "2026-01-02T03:00:00", "2026-01-02T03:00", "2026-01-03T03:00"),
    ("0 3 * * *", "UTC", "2026-01-02T02:59:59", "2026-01-01T03:00", "2026-01-02T03:00"),
    ("*/15 * * * *", "UTC", "2026-01-02T10:07:00", "2026-01-02T10:00", "2026-01-02T10:15"),
    # Paris: 03:00 local is 02:00Z in winter, 01:00Z in summer
    ("0 3 * * *", "Europe/Paris", "2026-01-10T12:00", "2026-01-10T02:00", "2026-01-11T02:00"),
    ("0 3 * * *", "Europe/Paris", "2026-07-10T12:00", "2026-07-10T01:00", "2026-07-11T01:00"),
    # Berlin, spring forward (2026-03-29 02:00 -> 03:00): 02:30 does not exist that day; it
    # ticks when the clocks jump (03:00 CEST = 01:00Z), once.
    ("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00", "2026-03-28T01:30", "2026-03-29T01:00"),
    ("30 2 * * *", "Europe/Berlin", "2026-03-29T01:30", "2026-03-29T01:00", "2026-03-30T00:30"),
    # Berlin, fall back (2026-10-25 03:00 -> 02:00): a fixed-time job runs once, at the first
    # 02:30 (CEST, 00:30Z); the second 02:30 (CET, 01:30Z) is not a tick.
    ("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00", "2026-10-24T00:30", "2026-10-25T00:30"),
    ("30 2 * * *", "Europe/Berlin", "2026-10-25T00:30", "2026-10-25T00:30", "2026-10-26T01:30"),
    ("30 2 * * *", "Europe/Berlin", "2026-10-25T01:45", "2026-10-25T00:30", "2026-10-26T01:30"),
    # ... while a wildcard-hour job keeps its real interval through the repeated hour.
    ("*/30 * * * *", "Europe/Berlin", "2026-10-25T00:30", "2026-10-25T00:30", "2026-10-25T01:00"),
    ("*/30 * * * *", "Europe/Berlin", "2026-10-25T01:10", "2026-10-25T01:00", "2026-10-25T01:30"),
    # New York, weekdays at 09:00: DST starts Sunday 2026-03-08 (EST -5 -> EDT -4)
    ("0 9 * * 1-5", "America/New_York", "2026-03-06T15:00", "2026-03-06T14:00", "2026-03-09T13:00"),
    # New York fall back (2026-11-01 02:00 -> 01:00): 01:30 once, EDT
    ("30 1 * * *", "America/New_York", "2026-11-01T04:00", "2026-10-31T05:30", "2026-11-01T05:30"),
    ("30 1 * * *", "America/New_York", "2026-11-01T06:00", "2026-11-01T05:30", "2026-11-02T06:30"),
]


@pytest.mark.parametrize(("cron", "tz", "now", "latest", "following"), CRON_CASES)
def test_cron_ticks_in_the_schedule_timezone(
    cron: str, tz: str, now: str, latest: str, following: str
) -> None:
    spec = define("grid", REPORT, cron=cron, timezone=tz)
    assert latest_tick(spec, at(now)) == at(latest)
    assert next_tick(spec, at(now)) == at(following)


@pytest.mark.parametrize(
    ("cron", "tz", "start"),
    [
        ("30 2 * * *", "Europe/Berlin", "2026-03-28T00:00"),
        ("*/30 * * * *", "Europe/Berlin", "2026-10-24T22:00"),
        ("30 1 * * *", "America/New_York", "2026-10-31T00:00"),
        ("7,37 */2 * * *", "Australia/Lord_Howe", "2026-04-04T10:00"),  # a 30-minute DST shift
    ],
)
def test_the_grid_is_the_same_whenever_it_is_computed(cron: str, tz: str, start: str) -> None:
    """Walking two days across a DST change in 13-minute steps (every offset within an hour
    comes up): latest <= now < next, and the tick found from any time is the one found
    from any other time between the same two ticks."""
    spec = define("walk", REPORT, cron=cron, timezone=tz)
    now = at(start)
    seen: set[datetime] = set()
    for _ in range(2 * 24 * 60 // 13):
        latest, following = latest_tick(spec, now), next_tick(spec, now)
        assert latest <= now < following
        assert next_tick(spec, latest) == following
        assert latest_tick(spec, following - timedelta(microseconds=1)) == latest
        assert is_tick(spec, latest) and is_tick(spec, following)
        seen.add(latest)
        now += timedelta(minutes=13)
    assert len(seen) > 2


def test_due_tick_publishes_the_latest_and_skips_older_ones() -> None:
    spec = define("due", REPORT, every=10)
    handled = at("2026-01-02T00:00:00")
    assert due_tick(spec, at("2026-01-02T00:00:09.99"), handled) is None
    assert due_tick(spec, at("2026-01-02T00:00:10"), handled) == at("2026-01-02T00:00:10")
    assert due_tick(spec, at("2026-01-02T00:00:35"), handled) == at("2026-01-02T00:00:30")


CATCH_UP_CASES = [
    # (catch_up, newest stored run time, expected tick to start) at now = 03:30, hourly ticks
    (False, "2026-01-02T01:00", None),  # missed ticks are skipped without catch_up
    (True, None, None),  # never ran: nothing was missed (a new schedule waits for its tick)
    (True, "2026-01-02T03:00", None),  # the latest tick has its run
    (True, "2026-01-02T01:00", "2026-01-02T03:00"),  # 02:00 and 03:00 missed: the latest
    (True, "2026-01-02T03:10:00.5", None),  # started by hand since the latest tick
]


@pytest.mark.parametrize(("catch_up", "last_run", "expected"), CATCH_UP_CASES)
def test_catch_up_decision(catch_up: bool, last_run: str | None, expected: str | None) -> None:
    spec = define("late", REPORT, cron="0 * * * *", catch_up=catch_up)
    got = catch_up_tick(spec, at("2026-01-02T03:30"), at(last_run) if last_run else None)
    assert got == (at(expected) if expected else None)


# -- run ids ----------------------------------------------------------------------------------
def test_run_id_of_a_tick_derives_from_name_and_utc_time() -> None:
    tick = at("2026-01-02T04:00:00+01:00")
    assert tick_run_id("nightly-report", tick) == "sched:nightly-report:20260102T030000Z"
    assert run_time("nightly-report", "sched:nightly-report:20260102T030000Z") == (
        at("2026-01-02T03:00"),
        False,
    )
    assert run_time("nightly-report", "sched:nightly-reports:20260102T030000Z") is None
    assert run_time("nightly-report", "sched:nightly-report:garbage") is None
    assert run_time("nightly-report", "3f2a9c1e-0d5b-4a51-9a57-2f6f1c0e8b11") is None


def test_long_names_are_hashed_within_64_characters() -> None:
    a, b = "x" * 40 + "-alpha", "x" * 40 + "-beta"
    tick = at("2026-01-02T03:00")
    ids = [tick_run_id(a, tick), tick_run_id(b, tick), manual_run_id(a, tick)]
    assert all(len(i) <= 64 for i in ids)
    assert ids[0] != ids[1] and run_id_prefix(a) != run_id_prefix(b)
    assert ids[0] == tick_run_id(a, tick)  # stable
    assert run_time(a, ids[0]) == (tick, False)
    longest = manual_run_id("y" * 200, at("2026-12-31T23:59:59.999999"))
    assert len(longest) <= 64
    # a 32-character name is used as it is, and no name can look like a hashed one
    assert run_id_prefix("z" * 32) == f"sched:{'z' * 32}:"
    assert "~" in run_id_prefix("z" * 33)


def test_manual_runs_sort_with_tick_runs_by_time() -> None:
    name = "sorted"
    ids = [
        tick_run_id(name, at("2026-01-02T03:00")),
        manual_run_id(name, at("2026-01-02T03:00:00.250")),
        manual_run_id(name, at("2026-01-02T03:04:59.5")),
        tick_run_id(name, at("2026-01-02T03:05")),
    ]
    assert sorted(ids) == ids
    assert run_time(name, ids[2]) == (at("2026-01-02T03:04:59.5"), True)


# -- starting ticks -----------------------------------------------------------------------------
def test_a_tick_started_twice_gives_one_run(
    engine: FluxEngine, declare: Callable[..., Any]
) -> None:
    spec = declare("twice", every=60, input={"scope": "all"})
    tick = at("2026-01-02T03:00")
    first = start_tick(engine, spec, tick)
    second = start_tick(engine, spec, tick)
    assert first == second == tick_run_id(spec.name, tick)
    assert engine.sent == [first]  # type: ignore[attr-defined]
    state = engine.get(first)
    assert state is not None and state.input == {"scope": "all"}
    assert engine.storage.run_ids_with_prefix(run_id_prefix(spec.name), 10) == [first]


def test_a_racing_start_with_other_input_keeps_the_first_run(
    engine: FluxEngine, declare: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers start the same tick at once and the input callable is not
    deterministic: the second finds the run taken (IdempotencyConflict), logs, no raise."""
    calls = iter(range(100))
    spec = declare("racy", every=60, input=lambda tick: {"n": next(calls)})
    tick = at("2026-01-02T03:00")
    run_id = start_tick(engine, spec, tick)
    monkeypatch.setattr(engine, "get", lambda _run_id: None)  # as if it read before the insert
    assert start_tick(engine, spec, tick) == run_id
    assert engine.sent == [run_id]  # type: ignore[attr-defined]
    state = engine.storage.load_run(run_id)
    assert state is not None and state.input == {"n": 0}


def test_start_now_runs_outside_the_grid(engine: FluxEngine, declare: Callable[..., Any]) -> None:
    spec = declare("manual", cron="0 3 * * *", input=lambda tick: {"at": tick.isoformat()})
    now = at("2026-01-02T10:11:12.131415")
    run_id = start_now(engine, spec, now)
    assert run_id == f"sched:{spec.name}:20260102T101112Z-m131415"
    state = engine.get(run_id)
    assert state is not None and state.input == {"at": "2026-01-02T10:11:12.131415+00:00"}
    local = start_now(engine, spec, now + timedelta(seconds=1), local=True)
    done = engine.get(local)
    assert done is not None and done.status == RunStatus.COMPLETED


def test_engine_schedules_lists_next_tick_and_newest_run(
    engine: FluxEngine, declare: Callable[..., Any]
) -> None:
    nightly = declare("nightly", cron="0 3 * * *", timezone="Europe/Paris", catch_up=True)
    poll = declare("poll", every=300)
    start_tick(engine, poll, at("2026-01-02T09:55"))
    manual = start_now(engine, poll, at("2026-01-02T09:58"))
    views = {v.name: v for v in engine.schedules(now=at("2026-01-02T10:01"))}
    n, p = views[nightly.name], views[poll.name]
    assert (n.workflow, n.cron, n.every, n.timezone, n.catch_up) == (
        REPORT.name,
        "0 3 * * *",
        None,
        "Europe/Paris",
        True,
    )
    assert n.next_tick == at("2026-01-03T02:00") and n.last_run_id is None
    assert p.next_tick == at("2026-01-02T10:05")
    assert p.last_run_id == manual and p.last_run_status == "pending" and p.last_run_manual
    assert p.last_run_at == at("2026-01-02T09:58")
    data = n.to_dict()
    assert data["next_tick"] == "2026-01-03T02:00:00+00:00"
    assert data["next_tick_local"] == "2026-01-03T03:00:00+01:00"
    assert list(views) == sorted(views)  # by name


# -- the tick task --------------------------------------------------------------------------------
@pytest.fixture
def tick_app(engine: FluxEngine) -> Any:
    app = build_app(Settings(broker_url="memory://", celery={"task_always_eager": True}))
    flux_tasks.use_engine(app, engine)
    return app


def test_tick_task_starts_one_run_per_tick(
    tick_app: Any, engine: FluxEngine, declare: Callable[..., Any]
) -> None:
    spec = declare("task", every=60, input={"k": 1})
    task = tick_app.tasks[TICK_TASK]
    kwargs = {"schedule": spec.name, "tick": "2026-01-02T03:00:00+00:00"}
    ids = [task.apply(kwargs=kwargs).get() for _ in range(3)]
    assert ids == [f"sched:{spec.name}:20260102T030000Z"] * 3
    assert engine.sent == ids[:1]  # type: ignore[attr-defined]


@pytest.mark.parametrize("tick", ["2026-01-02T03:00:30+00:00", "2026-01-02T03:00:00", "not a time"])
def test_tick_task_drops_a_tick_off_the_grid(
    tick_app: Any, engine: FluxEngine, declare: Callable[..., Any], tick: str
) -> None:
    spec = declare("offgrid", every=60)
    assert (
        tick_app.tasks[TICK_TASK].apply(kwargs={"schedule": spec.name, "tick": tick}).get() is None
    )
    assert engine.sent == []  # type: ignore[attr-defined]


def test_tick_task_drops_an_unknown_schedule(tick_app: Any, engine: FluxEngine) -> None:
    task = tick_app.tasks[TICK_TASK]
    assert (
        task.apply(kwargs={"schedule": "nope", "tick": "2026-01-02T03:00:00+00:00"}).get() is None
    )
    assert engine.sent == []  # type: ignore[attr-defined]


# -- the beat scheduler --------------------------------------------------------------------------
def test_build_app_makes_flux_scheduler_the_beat_scheduler() -> None:
    assert build_app(Settings()).conf.beat_scheduler == BEAT_SCHEDULER
    custom = build_app(Settings(celery={"beat_scheduler": "myapp.beat:Mine"}))
    assert custom.conf.beat_scheduler == "myapp.beat:Mine"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def beat(
    tick_app: Any, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[FluxScheduler, list[dict[str, Any]]]]:
    def make(
        clock: Clock, names: set[str], fail: list[bool] | None = None
    ) -> tuple[FluxScheduler, list[dict[str, Any]]]:
        sent: list[dict[str, Any]] = []

        def send_task(name: str, **options: Any) -> None:
            if fail and fail.pop(0):
                raise ConnectionError("broker down")
            if options["kwargs"]["schedule"] in names:
                sent.append({"task": name, **options})

        scheduler = FluxScheduler(app=tick_app, clock=clock, lazy=True)
        monkeypatch.setattr(scheduler, "send_task", send_task)
        monkeypatch.setattr(FluxScheduler, "producer", None)
        scheduler.setup_schedule()
        return scheduler, sent

    return make


def ticks_of(sent: list[dict[str, Any]]) -> list[str]:
    return [s["kwargs"]["tick"] for s in sent]


def test_beat_publishes_each_due_tick_once(
    beat: Callable[..., Any], declare: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    spec = declare("beat", every=10)
    clock = Clock(at("2026-01-02T00:00:01"))
    caplog.set_level("INFO", logger="fluxcelery.schedules")
    scheduler, sent = beat(clock, {spec.name})
    assert f"schedule {spec.name}: workflow {REPORT.name}, every 10s (UTC), next tick " in (
        caplog.text
    )
    wait = scheduler.tick()
    assert sent == [] and wait == pytest.approx(9.01)  # 00:00:00 was before the start
    clock.now = at("2026-01-02T00:00:10")
    scheduler.tick()
    scheduler.tick()
    assert ticks_of(sent) == ["2026-01-02T00:00:10+00:00"]
    assert sent[0]["task"] == TICK_TASK
    assert sent[0]["expires"] == at("2026-01-02T00:01:10")  # the next tick, at least 60 s on
    clock.now = at("2026-01-02T00:00:35")  # beat stalled: 20 and 30 due, 30 only is sent
    scheduler.tick()
    assert ticks_of(sent)[1:] == ["2026-01-02T00:00:30+00:00"]
    assert "published tick 2026-01-02T00:00:30+00:00" in caplog.text


def test_beat_tries_a_failed_publish_again(
    beat: Callable[..., Any], declare: Callable[..., Any]
) -> None:
    spec = declare("retry", every=10)
    clock = Clock(at("2026-01-02T00:00:05"))
    scheduler, sent = beat(clock, {spec.name}, fail=[True])
    clock.now = at("2026-01-02T00:00:10")
    assert scheduler.tick_schedules() == 1.0  # broker down: again in a second
    assert sent == []
    clock.now = at("2026-01-02T00:00:11")
    scheduler.tick_schedules()
    assert ticks_of(sent) == ["2026-01-02T00:00:10+00:00"]


def test_beat_catches_up_the_latest_missed_tick_from_stored_runs(
    beat: Callable[..., Any], declare: Callable[..., Any], engine: FluxEngine
) -> None:
    late = declare("late", cron="0 * * * *", catch_up=True)
    fresh = declare("fresh", cron="0 * * * *", catch_up=True)  # never ran: nothing missed
    plain = declare("plain", cron="0 * * * *")  # no catch_up: skipped
    for spec in (late, plain):
        start_tick(engine, spec, at("2026-01-02T01:00"))
    clock = Clock(at("2026-01-02T03:30"))
    scheduler, sent = beat(clock, {late.name, fresh.name, plain.name})
    scheduler.tick_schedules()
    assert [(s["kwargs"]["schedule"], s["kwargs"]["tick"]) for s in sent] == [
        (late.name, "2026-01-02T03:00:00+00:00")
    ]
    assert sent[0]["expires"] == at("2026-01-02T04:00")
    scheduler.tick_schedules()
    assert len(sent) == 1 and not scheduler.pending_catch_up
    # once the tick has its run, a beat starting again catches up nothing
    start_tick(engine, late, at("2026-01-02T03:00"))
    again, sent_again = beat(clock, {late.name})
    again.tick_schedules()
    assert sent_again == []


# -- the example ------------------------------------------------------------------------------
def test_the_reports_example_declares_and_runs(
    engine: FluxEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from workflows import reports  # declares nightly-report and poll-feed

    found = declared_schedules()
    nightly, poll = found["nightly-report"], found["poll-feed"]
    assert nightly.workflow is reports.report and poll.workflow is reports.poll
    assert (nightly.cron, nightly.timezone, nightly.catch_up) == ("0 3 * * *", "Europe/Paris", True)
    assert next_tick(nightly, at("2026-12-03T12:00")) == at("2026-12-04T02:00")
    run_id = start_now(engine, nightly, at("2026-12-03T16:48:28.260301"), local=True)
    state = engine.get(run_id)
    assert state is not None and state.status == RunStatus.COMPLETED
    assert state.steps[1].output == {"published": run_id, "rows": 42}
    assert poll.input_for(at("2026-12-03T16:50")) == {"since": "2026-12-03T16:50:00+00:00"}
