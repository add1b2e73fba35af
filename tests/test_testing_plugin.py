"""``fluxcelery.testing`` as a user meets it (SPEC section 18): docs/testing.md's example (a
retry with 60 s backoff and a one-day approval timeout, in process and on a Celery worker)
run by pytest in a fresh process, where the plugin comes from its entry point alone, each
test in well under a second; the same on RabbitMQ with ``--flux-broker``; and the fixtures
used here directly: countdowns pass at once on the worker, ``advance`` fails a wait when
its deadline falls due and not before."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import AMQP_URL, require_service

import fluxcelery.testing
from fluxcelery import FluxEngine, RunStatus, StepStatus, wait_for, workflow
from fluxcelery.testing import FluxClock, FluxWorker, assert_trace, trace_of

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "testing.md"
EXAMPLE_TESTS = {
    "test_no_decision_within_a_day_refunds_the_charge",
    "test_an_approval_within_the_day_ships",
    "test_the_same_on_a_celery_worker",
}
#: "0.04s call     test_order.py::test_x" in pytest's --durations report.
DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+\S+::(\w+)", re.M)


def docs_example() -> str:
    """The example of docs/testing.md: its Python block that starts with the file's name."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    [example] = [b for b in blocks if b.startswith("# tests/test_order.py")]
    return example


def seconds_per_test(output: str, phase: str) -> dict[str, float]:
    """The time of each test's ``phase`` (setup, call or teardown), from a
    ``--durations=0`` report."""
    return {test: float(seconds) for seconds, at, test in DURATION.findall(output) if at == phase}


# -- as a user runs it: a fresh pytest process, the plugin from its entry point --------------
def test_the_docs_example_passes_each_test_in_well_under_a_second(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_order=docs_example())
    result = pytester.runpytest_subprocess("--durations=0", "--durations-min=0")
    result.assert_outcomes(passed=3)
    times = seconds_per_test(result.stdout.str(), "call")
    assert set(times) == EXAMPLE_TESTS, result.stdout.str()
    # A 60 s backoff twice and a day of waiting, in process and on a Celery worker. (Setup
    # is apart: the first test's includes migrating the session's SQLite template once.)
    assert max(times.values()) < 1.0, times


def test_the_plugin_registers_its_fixtures_and_option(pytester: pytest.Pytester) -> None:
    fixtures = pytester.runpytest_inprocess("--fixtures").stdout.str()
    assert "fixtures defined from fluxcelery.testing.plugin" in fixtures
    for name in ("flux_clock", "flux_engine", "flux_worker", "flux_engine_options"):
        assert re.search(rf"^{name}\b", fixtures, re.M), name
    config = pytester.parseconfig("--flux-broker", "amqp://broker//")
    assert config.getoption("flux_broker") == "amqp://broker//"


@pytest.mark.integration
def test_flux_broker_runs_the_worker_on_rabbitmq_and_deletes_its_queue(
    pytester: pytest.Pytester,
) -> None:
    require_service("rabbitmq")
    pytester.makepyfile(
        test_order=docs_example(),
        test_transport="""
            from pathlib import Path

            def test_the_worker_consumes_from_the_broker_given(flux_worker):
                assert flux_worker.controller.consumer.connection.transport_cls == "amqp"
                Path("queue.txt").write_text(flux_worker.queue)
        """,
    )
    result = pytester.runpytest_subprocess("--flux-broker", AMQP_URL)
    result.assert_outcomes(passed=4)
    queue = (pytester.path / "queue.txt").read_text()
    assert queue.startswith("flux_test_")

    from kombu import Connection

    with Connection(AMQP_URL) as conn:
        with pytest.raises(Exception, match="NOT_FOUND"):
            conn.default_channel.queue_declare(queue, passive=True)


# -- the fixtures, used by this suite ----------------------------------------------------------
def test_a_start_countdown_passes_at_once_and_the_clock_reads_its_due_time(
    flux_worker: FluxWorker, flux_clock: FluxClock
) -> None:
    started = flux_clock.now()
    wf = workflow("testing-countdown").step("a", lambda ctx: ctx.input["n"] + 1)
    result = flux_worker.run(wf, {"n": 1}, countdown=3600, timeout=10)
    assert result.status == RunStatus.COMPLETED and result.results == {"a": 2}
    [start] = flux_worker.engine.traces(run_id=result.id, type="step:start")
    assert start.task_id is not None  # it ran as a Celery task
    assert start.ts == started + timedelta(seconds=3600)


def test_a_retry_on_the_worker_is_sent_again_without_waiting_its_backoff(
    flux_worker: FluxWorker, flux_clock: FluxClock
) -> None:
    from fluxcelery import Backoff

    def flaky(ctx: object) -> int:
        if ctx.attempt < 3:  # type: ignore[attr-defined]
            raise ConnectionError("down")
        return 3

    wf = workflow("testing-retry-worker").step(
        "flaky", flaky, retries=2, backoff=Backoff(base=300, factor=2, max=600, jitter=False)
    )
    started = flux_clock.now()
    result = flux_worker.run(wf, {}, timeout=10)
    assert result.status == RunStatus.COMPLETED and result.step("flaky").attempts == 3
    starts = [e.ts for e in flux_worker.engine.traces(run_id=result.id, type="step:start")]
    assert [(ts - started).total_seconds() for ts in starts] == [0.0, 300.0, 900.0]
    task_ids = {e.task_id for e in flux_worker.engine.traces(run_id=result.id, type="step:start")}
    assert len(task_ids) == 1  # one Celery task, retried (RETRY then SUCCESS)


def test_advance_fails_a_wait_on_the_worker_when_it_falls_due_not_before(
    flux_worker: FluxWorker, flux_clock: FluxClock
) -> None:
    undone: list[str] = []
    wf = (
        workflow("testing-wait-worker")
        .step("reserve", lambda ctx: "r", compensate=lambda ctx: undone.append("reserve"))
        .step("wait", lambda ctx: wait_for("paid", timeout=30), retries=0)
    )
    waiting = flux_worker.run(wf, {}, timeout=10)
    assert waiting.status == RunStatus.SUSPENDED
    flux_clock.advance(29.9)
    assert flux_worker.engine.get(waiting.id).status == RunStatus.SUSPENDED  # type: ignore[union-attr]
    flux_clock.advance(0.1)
    done = flux_worker.wait(waiting.id, timeout=10)
    assert done.status == RunStatus.ROLLED_BACK
    assert done.error == "StepTimeout: no signal 'paid' within the wait timeout of step 'wait'"
    assert undone == ["reserve"]
    assert done.step("wait").finished_at == waiting.step("wait").started_at + timedelta(seconds=30)


def test_a_signal_before_the_deadline_continues_on_the_worker(
    flux_worker: FluxWorker, flux_clock: FluxClock
) -> None:
    wf = (
        workflow("testing-signal-worker")
        .step("wait", lambda ctx: wait_for("paid", timeout=60))
        .step("ship", lambda ctx: ctx.results["wait"]["amount"])
    )
    waiting = flux_worker.run(wf, {}, timeout=10)
    flux_clock.advance(59)
    done = flux_worker.engine.signal(waiting.id, "paid", {"amount": 5}).get(timeout=10)
    assert done.status == RunStatus.COMPLETED and done.results["ship"] == 5
    flux_clock.advance(3600)  # the deadline passes after the signal: nothing happens
    assert flux_worker.engine.get(waiting.id).status == RunStatus.COMPLETED  # type: ignore[union-attr]


def test_advance_fires_waits_in_deadline_order_each_at_its_deadline(
    flux_engine: FluxEngine, flux_clock: FluxClock
) -> None:
    def waits(seconds: float) -> object:
        return workflow(f"testing-wait-{int(seconds)}").step(
            "wait", lambda ctx: wait_for("go", timeout=seconds), retries=0
        )

    started = flux_clock.now()
    late = flux_engine.execute(waits(10), {})
    early = flux_engine.execute(waits(5), {})
    flux_clock.advance(20)
    ended = {}
    for run in (late, early):
        state = flux_engine.get(run.id)
        assert state is not None and state.status == RunStatus.FAILED
        assert state.steps[0].status == StepStatus.FAILED
        assert state.finished_at is not None
        ended[run.id] = (state.finished_at - started).total_seconds()
    assert ended == {early.id: 5.0, late.id: 10.0}
    assert flux_clock.now() == started + timedelta(seconds=20)


def test_an_engine_of_your_own_on_a_flux_clock(any_storage: object) -> None:
    from fluxcelery import Backoff

    clock = FluxClock()
    engine = FluxEngine(
        storage=any_storage,  # type: ignore[arg-type]
        clock=clock,
        sleep=clock.sleep,
        timer=clock.call_later,
        backoff=Backoff(base=60, factor=1, max=60, jitter=False),
    )

    def fails_once(ctx: object) -> str:
        if ctx.attempt == 1:  # type: ignore[attr-defined]
            raise ConnectionError("down")
        return wait_for("go", timeout=3600)  # type: ignore[return-value]

    waiting = engine.execute(workflow("testing-own-engine").step("s", fails_once, retries=1))
    assert waiting.status == RunStatus.SUSPENDED and clock.sleeps == [60.0]
    clock.advance(3600)  # the engine's timer (no watch): in this process
    assert engine.get(waiting.id).status == RunStatus.FAILED  # type: ignore[union-attr]
    expected = ["workflow:start", "step:start", "step:retry", "step:start", "step:suspend"]
    assert_trace(engine, waiting.id, [*expected, "step:error s", "workflow:error"])


def test_assert_trace_shows_the_whole_trace_and_where_it_differs(flux_engine: FluxEngine) -> None:
    result = flux_engine.execute(workflow("testing-trace").step("a", lambda ctx: 1))
    assert trace_of(flux_engine, result.id) == [
        "workflow:start",
        "step:start",
        "step:complete",
        "workflow:complete",
    ]
    with pytest.raises(AssertionError) as raised:
        assert_trace(flux_engine, result.id, ["workflow:start", "step:start b", "step:complete"])
    assert str(raised.value).splitlines() == [
        f"trace of run {result.id} differs at event 1:",
        "    0 workflow:start                           expected workflow:start",
        ">   1 step:start a                             expected step:start b",
        "    2 step:complete a                          expected step:complete",
        "    3 workflow:complete                        expected (none)",
    ]


def test_the_clock_fires_timers_in_order_and_refuses_going_back() -> None:
    clock = FluxClock()
    start = clock.now()
    seen: list[float] = []
    clock.call_later(10, lambda: seen.append((clock.now() - start).total_seconds()))
    clock.call_later(5, lambda: seen.append((clock.now() - start).total_seconds()))
    clock.sleep(7)  # moves on, fires nothing
    assert seen == [] and clock.sleeps == [7]
    clock.advance(0)  # what the sleep made due
    assert seen == [7.0]
    clock.advance(10)
    assert seen == [7.0, 10.0] and clock.now() == start + timedelta(seconds=17)
    with pytest.raises(ValueError, match="time does not go back"):
        clock.advance(-1)

    def again() -> None:
        clock.call_later(0, again)

    clock.call_later(0, again)
    with pytest.raises(RuntimeError, match="always due at once"):
        clock.advance(1)


def test_the_public_names_of_fluxcelery_testing() -> None:
    assert sorted(fluxcelery.testing.__all__) == [
        "ClockDispatcher",
        "FluxClock",
        "FluxWorker",
        "TimeSkippingCelery",
        "assert_trace",
        "build_test_app",
        "trace_of",
    ]
    for name in fluxcelery.testing.__all__:
        assert getattr(fluxcelery.testing, name).__doc__, name
