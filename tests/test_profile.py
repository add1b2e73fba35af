"""``fluxcelery profile`` (SPEC section 17): the math table-tested on made-up events and
profiles, then a store with a CPU-bound and an I/O-bound step run 20 times in process, whose
profile recommends prefork for the first and threads for the second, and the command's table
and ``--json`` on it. The CPU time behind it is recorded on each attempt's outcome."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import it_profile_flows as flows
import pytest
from click.testing import CliRunner, Result

from fluxcelery import FluxEngine, MemoryStorage, SqlStorage, TraceEvent
from fluxcelery.cli import cli
from fluxcelery.profile import (
    DueClock,
    StepProfile,
    WorkflowProfile,
    classify,
    cpu_ratio,
    first_starts,
    percentile,
    profile_steps,
    profile_workflows,
    read_events,
)
from fluxcelery.runner.usage import CpuMeter, thread_clock
from fluxcelery.sizing import (
    advise_pool,
    advise_pools,
    advise_timeouts,
    judge_timeout,
    slots,
    suggest_timeout,
)

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
RUNS = 20


def ev(
    type: str,
    at_ms: float,
    step: str | None = None,
    *,
    run: str = "r1",
    index: int | None = None,
    attempt: int | None = None,
    duration: int | None = None,
    meta: dict[str, Any] | None = None,
    kind: str | None = None,
    workflow: str = "w",
) -> TraceEvent:
    """An event ``at_ms`` after T0."""
    return TraceEvent(
        type=type,
        run_id=run,
        workflow=workflow,
        step=step,
        step_index=index,
        kind=kind or ("step" if step else None),
        attempt=attempt,
        duration_ms=duration,
        meta=meta,
        ts=T0 + timedelta(milliseconds=at_ms),
    )


# -- the math --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([7.0], 95, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),  # any order
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([float(n) for n in range(1, 101)], 95, 95.05),
        ([10.0, 20.0], 95, 19.5),
    ],
)
def test_percentile_interpolates_between_ranks(
    values: list[float], q: float, expected: float | None
) -> None:
    got = percentile(values, q)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(
    ("cpu", "wall", "expected"),
    [(15.0, 30.0, 0.5), (0.0, 0.0, 0.0), (0.3, 0.0, 1.0), (40.0, 30.0, 1.0), (0.1, 30.0, 0.1 / 30)],
)
def test_cpu_ratio(cpu: float, wall: float, expected: float) -> None:
    assert cpu_ratio(cpu, wall) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("ratio", "mean_ms", "bound"),
    [
        (None, 30.0, None),  # no cpu_ms recorded
        (0.5, 30.0, "cpu"),
        (0.97, 30.0, "cpu"),
        (0.49, 30.0, "io"),
        (0.002, 30.0, "io"),
        (0.9, 4.9, "fast"),  # too short to judge
        (0.9, 5.0, "cpu"),
    ],
)
def test_classify(ratio: float | None, mean_ms: float, bound: str | None) -> None:
    assert classify(ratio, mean_ms) == bound


@pytest.mark.parametrize(
    ("rate", "busy_s", "expected"),
    [
        (50, 0.03, 2),
        (100, 0.05, 5),
        (100, 0.0501, 6),
        (10, 0.01, 1),
        (0.001, 5, 1),
        (200, 1.0, 200),
    ],
)
def test_slots_by_littles_law(rate: float, busy_s: float, expected: int) -> None:
    assert slots(rate, busy_s) == expected


@pytest.mark.parametrize(
    ("p95_ms", "expected"),
    [(None, None), (0.0, 1), (12.0, 1), (1000.0, 2), (2000.0, 3), (3333.0, 5), (40_000.0, 60)],
)
def test_suggested_timeout_is_p95_times_1_5_rounded_up(
    p95_ms: float | None, expected: int | None
) -> None:
    assert suggest_timeout(p95_ms) == expected


@pytest.mark.parametrize(
    ("configured", "suggested", "verdict"),
    [(None, 2, "none"), (1.0, 2, "tight"), (2.0, 2, "ok"), (9.9, 2, "ok"), (10.0, 2, "loose")],
)
def test_judge_timeout(configured: float | None, suggested: int, verdict: str) -> None:
    assert judge_timeout(configured, suggested) == verdict


# -- queue wait ------------------------------------------------------------------------------
def starts_wait(events: list[TraceEvent], due: dict[str, datetime] | None = None) -> list[Any]:
    """(step, wait in ms) of every step:start, events fed in time order."""
    clock = DueClock(due or {})
    out = []
    for e in sorted(events, key=lambda e: e.ts):
        if e.type == "step:start":
            wait = clock.wait(e)
            out.append((e.step, None if wait is None else round(wait, 3)))
        clock.see(e)
    return out


QUEUE_WAITS = {
    "first step from the run's due time, next from the previous completion": (
        [
            ev("workflow:start", 40),
            ev("step:start", 50, "a", index=0, attempt=1),
            ev("step:complete", 80, "a", index=0, attempt=1),
            ev("step:start", 95, "b", index=1, attempt=1),
        ],
        {"r1": T0},
        [("a", 50.0), ("b", 15.0)],
    ),
    "without the run's due time, from workflow:start": (
        [ev("workflow:start", 40), ev("step:start", 50, "a", index=0, attempt=1)],
        None,
        [("a", 10.0)],
    ),
    "a retry from its due time (ts + delay_s)": (
        [
            ev("workflow:start", 0),
            ev("step:start", 0, "a", index=0, attempt=1),
            ev("step:retry", 10, "a", index=0, attempt=1, meta={"delay_s": 2.0}),
            ev("step:start", 2030, "a", index=0, attempt=2),
        ],
        None,
        [("a", 0.0), ("a", 20.0)],
    ),
    "a redelivered attempt has none": (
        [
            ev("workflow:start", 0),
            ev("step:start", 5, "a", index=0, attempt=1),
            ev("step:start", 9000, "a", index=0, attempt=2, meta={"redelivered": True}),
        ],
        None,
        [("a", 5.0), ("a", None)],
    ),
    "after a signal, from signal:received": (
        [
            ev("workflow:start", 0),
            ev("step:start", 0, "wait", index=0, attempt=1),
            ev("step:suspend", 1, "wait", index=0, attempt=1),
            ev("signal:received", 60_000, "wait", index=0),
            ev("step:start", 60_007, "next", index=1, attempt=1),
        ],
        None,
        [("wait", 0.0), ("next", 7.0)],
    ),
    "a branch step from its branch, not from a sibling branch": (
        [
            ev("parallel:start", 100, "par", index=0, kind="parallel"),
            ev("step:start", 102, "x1", index=1, attempt=1, meta={"branch": "x"}),
            ev("step:start", 104, "y1", index=3, attempt=1, meta={"branch": "y"}),
            ev("step:complete", 110, "x1", index=1, attempt=1, meta={"branch": "x"}),
            ev("step:complete", 150, "y1", index=3, attempt=1, meta={"branch": "y"}),
            ev("step:start", 160, "x2", index=2, attempt=1, meta={"branch": "x"}),
        ],
        None,
        [("x1", 2.0), ("y1", 4.0), ("x2", 50.0)],
    ),
    "a for_each item from the fan-out or the sibling that freed its slot": (
        [
            ev("parallel:start", 0, "each", index=0, kind="for_each"),
            ev("step:start", 1, "each", index=1, attempt=1, meta={"item": 0}),
            ev("step:complete", 30, "each", index=1, attempt=1, meta={"item": 0}),
            ev("step:start", 33, "each", index=2, attempt=1, meta={"item": 1}),
        ],
        None,
        [("each", 1.0), ("each", 3.0)],
    ),
    "a start whose due moment was not read has none": (
        [ev("step:start", 5, "b", index=1, attempt=1)],
        None,
        [("b", None)],
    ),
}


@pytest.mark.parametrize("case", list(QUEUE_WAITS), ids=list(QUEUE_WAITS))
def test_queue_wait(case: str) -> None:
    events, due, expected = QUEUE_WAITS[case]
    assert starts_wait(events, due) == expected


def test_first_starts_are_fresh_runs_only() -> None:
    events = [
        ev("workflow:start", 0, run="a"),
        ev("workflow:start", 1, run="b", meta={"retry": True, "from_step": "s"}),
        ev("step:start", 2, "s", run="c", index=0, attempt=1),
    ]
    assert first_starts(events) == ["a"]


# -- counting --------------------------------------------------------------------------------
def test_attempts_retries_failures_and_cpu_of_a_step() -> None:
    cpu = {"cpu_ms": 9.0, "run_delay_ms": 6.0}
    events = [
        ev("workflow:start", 0),
        ev("step:start", 0, "s", index=0, attempt=1),
        ev("step:retry", 20, "s", index=0, attempt=1, duration=20, meta={"delay_s": 0, **cpu}),
        ev("step:start", 21, "s", index=0, attempt=2),
        ev("step:error", 41, "s", index=0, attempt=2, duration=20, meta=cpu),
        ev("workflow:start", 100, run="r2"),
        ev("step:start", 100, "s", run="r2", index=0, attempt=1),
        ev("step:complete", 140, "s", run="r2", index=0, attempt=1, duration=40),  # no cpu_ms
        # A wait that expired: the step fails outside an attempt (and repeats the duration
        # of the attempt that suspended): a failure, not an attempt.
        ev("step:error", 900, "s", run="r3", index=0, attempt=1, duration=40),
        # The group step of a for_each is no attempt either.
        ev("step:complete", 950, "s", run="r2", index=1, attempt=1, duration=99, kind="for_each"),
    ]
    p = profile_steps(events)[("w", "s")]
    assert (p.runs, p.attempts, p.completed, p.retried, p.failed) == (2, 3, 1, 1, 2)
    assert p.durations == [20.0, 20.0, 40.0]
    assert (p.p50_ms, p.max_ms, p.index) == (20.0, 40.0, 0)
    assert p.retry_rate == pytest.approx(1 / 3)
    assert p.failure_rate == pytest.approx(2 / 3)  # of the 3 executions that ended
    assert (p.cpu_ms, p.cpu_wall_ms, p.cpu_attempts, p.run_delay_ms) == (18.0, 40.0, 2, 12.0)
    assert p.cpu_ratio == pytest.approx(18 / 40)
    assert p.ready_ratio == pytest.approx(18 / 28)  # the wait for a core left out
    assert p.bound == "cpu"
    assert sorted(p.waits) == [0.0, 0.0, 1.0]


def test_workflows_runs_rates_and_step_order() -> None:
    events = [
        ev("workflow:start", 0, run="a"),
        ev("step:start", 1, "second", run="a", index=1, attempt=1),
        ev("step:complete", 2, "second", run="a", index=1, attempt=1, duration=1),
        ev("step:start", 3, "first", run="b", index=0, attempt=1),
        ev("step:complete", 2000, "first", run="b", index=0, attempt=1, duration=1),
        ev("workflow:start", 5, run="z", workflow="other"),
    ]
    other, w = profile_workflows(events)  # sorted by name
    assert (w.workflow, w.runs, other.workflow, other.runs) == ("w", 2, "other", 1)
    assert [s.step for s in w.steps] == ["first", "second"]
    assert w.observed_rate == pytest.approx(2 / 2.0)
    assert other.observed_rate is None  # one instant: no rate


# -- sizing ----------------------------------------------------------------------------------
def step(
    name: str, *, wall: float, cpu: float | None, runs: int = 10, delay: float = 0.0
) -> StepProfile:
    """A step whose ``runs`` attempts took ``wall`` ms each, ``cpu`` ms of it on the CPU."""
    p = StepProfile("w", name, "step", runs=runs, attempts=runs, completed=runs)
    p.durations = [wall] * runs
    if cpu is not None:
        p.cpu_ms, p.cpu_wall_ms, p.cpu_attempts = cpu * runs, wall * runs, runs
        p.run_delay_ms = delay * runs
    return p


def wf_of(*steps: StepProfile, runs: int = 10, rate: float | None = 1.0) -> WorkflowProfile:
    return WorkflowProfile("w", runs, rate, steps)


def test_cpu_bound_steps_get_prefork_spread_over_machines_by_cores() -> None:
    wf = wf_of(step("crunch", wall=100, cpu=95))
    advice = advise_pool("q", [(wf, wf.steps[0])], {"w": 50.0}, cores=2)
    # 50 runs/s x 0.1 s = 5 in flight; 4.75 cores busy on 2-core machines: 3 machines.
    assert (advice.pool, advice.bound, advice.concurrency) == ("prefork", "cpu", 5)
    assert (advice.processes, advice.per_process) == (3, 2)
    assert advice.command == "celery -A fluxcelery worker -Q q -P prefork -c 2"
    assert advice.load.cores == pytest.approx(4.75)


def test_a_wait_for_a_core_is_not_counted_as_work() -> None:
    """Measured on an oversubscribed host: 30 ms of CPU in 100 ms, 70 of them waiting for a
    core. CPU-bound all the same, and sized for 30 ms attempts."""
    crunch = step("crunch", wall=100, cpu=30, delay=70)
    assert crunch.cpu_ratio == pytest.approx(0.3) and crunch.bound == "cpu"
    wf = wf_of(crunch)
    advice = advise_pool("q", [(wf, crunch)], {"w": 100.0}, cores=8)
    assert (advice.pool, advice.concurrency, advice.processes) == ("prefork", 3, 1)


def test_io_bound_steps_get_threads_then_gevent_then_more_processes() -> None:
    wf = wf_of(step("fetch", wall=200, cpu=2))
    threads = advise_pool("q", [(wf, wf.steps[0])], {"w": 100.0}, cores=4)
    assert (threads.pool, threads.concurrency, threads.processes, threads.per_process) == (
        "threads",
        20,
        1,
        20,
    )
    slow = wf_of(step("poll", wall=2000, cpu=0.1))  # 200 in flight, hardly any CPU
    gevent = advise_pool("q", [(slow, slow.steps[0])], {"w": 100.0}, cores=4)
    assert (gevent.pool, gevent.concurrency, gevent.processes) == ("gevent", 200, 1)
    # 2000 runs/s x 2 ms of CPU = 4 cores of CPU work: 8 processes at half a core each.
    busy = advise_pool("q", [(wf, wf.steps[0])], {"w": 2000.0}, cores=4)
    assert (busy.pool, busy.concurrency, busy.processes, busy.per_process) == (
        "threads",
        400,
        8,
        50,
    )


def test_a_queue_with_both_kinds_is_split() -> None:
    crunch, fetch = step("crunch", wall=30, cpu=29), step("fetch", wall=30, cpu=0.1)
    wf = wf_of(crunch, fetch)
    advice = advise_pool("flux", [(wf, crunch), (wf, fetch)], {"w": 10.0}, cores=4)
    assert (advice.pool, advice.bound) == ("split", "mixed")
    assert [(p.queue, p.pool, p.steps) for p in advice.parts] == [
        ("flux-cpu", "prefork", ("w.crunch",)),
        ("flux", "threads", ("w.fetch",)),
    ]
    assert advice.routes == {"flux.w.crunch": "flux-cpu"}
    assert advice.command is None


def test_nothing_to_judge_by() -> None:
    old = wf_of(step("legacy", wall=30, cpu=None))
    advice = advise_pool("q", [(old, old.steps[0])], {"w": 1.0}, cores=4)
    assert advice.pool is None and "before meta.cpu_ms" in advice.reason
    fast = wf_of(step("tiny", wall=1, cpu=1))
    assert advise_pool("q", [(fast, fast.steps[0])], {"w": 1.0}, cores=4).pool is None
    unknown_rate = advise_pool("q", [(old, old.steps[0])], {"w": None}, cores=4)
    assert unknown_rate.concurrency is None


def test_pools_by_queue_and_timeouts_against_the_configured_ones() -> None:
    crunch, fetch = step("crunch", wall=800, cpu=790), step("fetch", wall=30, cpu=0.1)
    wf = wf_of(crunch, fetch)
    pools = advise_pools(
        [wf], lambda w, s: f"{s}-q", target_rate=2.0, cores=4
    )  # each step on its own queue
    assert [(p.queue, p.pool, p.concurrency) for p in pools] == [
        ("crunch-q", "prefork", 2),
        ("fetch-q", "threads", 1),
    ]
    timeouts = advise_timeouts([wf], {("w", "crunch"): 1.0, ("w", "fetch"): None})
    assert [(t.step, t.suggested_s, t.verdict) for t in timeouts] == [
        ("crunch", 2, "tight"),
        ("fetch", 1, "none"),
    ]
    assert advise_timeouts([wf], {})[0].to_dict()["configured_s"] == "unknown"


# -- reading ---------------------------------------------------------------------------------
def test_read_events_pages_newest_first_up_to_the_cap() -> None:
    storage = MemoryStorage()
    events = [ev("step:start", n, "s", run=f"r{n}", index=0, attempt=1) for n in range(25)]
    storage.append_traces([*events, ev("hook:error", 30)])  # not a type the profile reads
    pages: list[int] = []
    read = read_events(storage, page=10, on_page=pages.append)
    assert [e.id for e in read.events] == [e.id for e in events] and not read.capped
    assert pages == [10, 20, 25]
    capped = read_events(storage, page=10, cap=12)
    assert capped.capped and [e.id for e in capped.events] == [e.id for e in events[-12:]]
    later = read_events(storage, since=T0 + timedelta(milliseconds=20))
    assert [e.run_id for e in later.events] == ["r21", "r22", "r23", "r24"]


# -- CPU time on the attempts ----------------------------------------------------------------
def test_the_meter_reads_the_thread_it_runs_on() -> None:
    meter = CpuMeter()
    assert meter.usage is None
    began = thread_clock()
    flows.crunch(type("Ctx", (), {"input": {"work_s": 0.01}})())
    meter.since(began)
    usage = meter.usage
    assert usage is not None and usage["cpu_ms"] >= 9.9
    assert set(usage) <= {"cpu_ms", "run_delay_ms"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite store where the CPU-bound and the I/O-bound step ran ``RUNS`` times each."""
    url = f"sqlite:///{tmp_path_factory.mktemp('profile') / 'flux.db'}"
    engine = FluxEngine(storage=SqlStorage(url))
    try:
        for n in range(RUNS):
            assert engine.execute(flows.profiled, {"n": n}).status.value == "completed"
    finally:
        engine.close()
    yield url


def test_each_attempt_outcome_records_its_cpu_time(store: str) -> None:
    storage = SqlStorage(store)
    try:
        done = storage.list_traces(type="step:complete")
    finally:
        storage.close()
    assert len(done) == 2 * RUNS
    cpu = {e.step: (e.meta or {})["cpu_ms"] for e in done}
    assert cpu["crunch"] >= flows.WORK_S * 1000 * 0.95 and cpu["fetch"] < 5


def test_the_profile_says_prefork_for_the_cpu_step_and_threads_for_the_io_step(
    store: str,
) -> None:
    storage = SqlStorage(store)
    try:
        read = read_events(storage)
        due = storage.due_times(first_starts(read.events))
    finally:
        storage.close()
    (wf,) = profile_workflows(read.events, due)
    assert (wf.workflow, wf.runs) == ("it-profile", RUNS)
    crunch, fetch = wf.steps
    assert (crunch.step, crunch.attempts, crunch.bound) == ("crunch", RUNS, "cpu")
    assert (fetch.step, fetch.attempts, fetch.bound) == ("fetch", RUNS, "io")
    assert len(crunch.waits) == len(fetch.waits) == RUNS
    separate = advise_pools([wf], lambda w, s: f"{s}-q", target_rate=100.0, cores=2)
    assert [(p.queue, p.pool) for p in separate] == [
        ("crunch-q", "prefork"),
        ("fetch-q", "threads"),
    ]
    (shared,) = advise_pools([wf], lambda w, s: "flux", target_rate=100.0, cores=2)
    assert shared.pool == "split"
    assert [(p.pool, p.steps) for p in shared.parts] == [
        ("prefork", ("it-profile.crunch",)),
        ("threads", ("it-profile.fetch",)),
    ]


# -- the command -----------------------------------------------------------------------------
ENV: dict[str, str | None] = {
    "FLUX_BROKER_URL": "memory://",
    "FLUX_DATABASE_URL": None,
    "FLUX_WORKFLOWS": None,
    "FLUX_QUEUE": None,
    "FLUX_TRACE_FILE": None,
    "FLUX_DEFAULT_TIMEOUT": None,
    "COLUMNS": "200",
}


def profile_cli(db: str, *args: str) -> Result:
    argv = ["--db", db, "--workflows", "it_profile_flows", "profile", *args]
    return CliRunner().invoke(cli, argv, env=ENV)


def test_the_command_prints_a_table_per_workflow_and_the_recommendations(store: str) -> None:
    result = profile_cli(store, "--target-rate", "100", "--cores", "2")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    out = result.stdout
    assert "it-profile: 20 run(s)" in out
    for header in ("step", "attempts", "p50", "p95", "retry", "fail", "wait p95", "cpu/wall"):
        assert header in out
    rows = {
        line.split()[0]: line for line in out.splitlines() if line.startswith(("crunch", "fetch"))
    }
    assert rows["crunch"].rstrip().endswith("cpu") and rows["fetch"].rstrip().endswith("io")
    assert "queue flux: split" in out
    assert "task_routes = {'flux.it-profile.crunch': {'queue': 'flux-cpu'}}" in out
    assert "-Q flux-cpu -P prefork" in out and "-Q flux -P threads" in out
    assert "it-profile.crunch: p95" in out and "(configured 20 s: loose)" in out
    assert "it-profile.fetch: p95" in out and "(configured 30 s: loose)" in out


def test_the_command_json_is_one_document(store: str) -> None:
    result = profile_cli(store, "--json", "--since", "0", "--workflow", "it-profile")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["window"]["since"] is None and doc["window"]["capped"] is False
    assert doc["window"]["events"] == RUNS * 5  # workflow:start, 2 x (step:start, complete)
    (wf,) = doc["workflows"]
    assert [(s["step"], s["bound"], s["attempts"]) for s in wf["steps"]] == [
        ("crunch", "cpu", RUNS),
        ("fetch", "io", RUNS),
    ]
    (queue,) = doc["queues"]
    assert queue["pool"] == "split" and [p["pool"] for p in queue["parts"]] == [
        "prefork",
        "threads",
    ]
    assert [t["configured_s"] for t in doc["timeouts"]] == [20, 30]
    assert set(doc["rules"]) == {"cpu_bound", "pool", "concurrency", "timeout"}


def test_the_command_with_nothing_to_profile_and_bad_input(store: str, tmp_path: Path) -> None:
    empty = profile_cli(store, "--workflow", "nobody")
    assert empty.exit_code == 0 and "nothing to profile" in empty.stdout
    bad = profile_cli(store, "--since", "yesterday")
    assert bad.exit_code == 2 and "not a duration" in bad.stderr
    missing = profile_cli(f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.exit_code == 1 and "no database" in missing.stderr
