"""Progress (SPEC section 13): ``ctx.progress`` is stored on the step (throttled to one write
per 0.5 s per step, the last report of an attempt always), traced as ``step:progress``, read
back while the step runs, and shown by ``runs``, ``show`` (and ``show --watch``), the Flower
tab and the viewer. A report never fails its step, never outlives its attempt, and a new
attempt starts without one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import ZERO_BACKOFF, no_sleep

from fluxcelery import FluxEngine, RunStatus, SqlStorage, StepStatus, workflow
from fluxcelery.cli import cli
from fluxcelery.core.records import describe_progress
from fluxcelery.testing import FluxClock


def _progress_events(engine: FluxEngine, run_id: str) -> list[dict[str, Any]]:
    return [e.meta or {} for e in engine.traces(run_id=run_id) if e.type == "step:progress"]


# -- storing: throttled, last report kept, traced ---------------------------------------------
def test_reports_are_throttled_and_the_last_one_is_stored(
    any_storage: Any, flux_clock: FluxClock
) -> None:
    start = flux_clock.now()
    engine = FluxEngine(storage=any_storage, clock=flux_clock)

    def work(ctx: Any) -> str:
        for i in range(1, 6):  # at 0.0, 0.2, 0.4, 0.6, 0.8 s
            ctx.progress(i, 5, f"item {i}")
            flux_clock.advance(0.2)
        return "ok"

    result = engine.execute(workflow("progress-throttle").step("work", work), {})
    assert result.status == RunStatus.COMPLETED
    step = engine.get(result.id).step("work")  # type: ignore[union-attr]
    assert step.progress == {
        "done": 5,
        "total": 5,
        "message": "item 5",
        "at": (start + timedelta(seconds=0.8)).isoformat(),
    }
    # Stored at 0.0 and 0.6 s (0.5 s apart at least), then the last report when it ended.
    assert [e["done"] for e in _progress_events(engine, result.id)] == [1, 4, 5]


def test_a_report_is_visible_while_the_step_runs(sql_storage: Any) -> None:
    engine = FluxEngine(storage=sql_storage)
    reported, release = threading.Event(), threading.Event()

    def work(ctx: Any) -> None:
        ctx.progress(3, 10, "resizing")
        reported.set()
        assert release.wait(10)

    wf = workflow("progress-live").step("work", work)
    runner = threading.Thread(target=engine.execute, args=(wf, {}), kwargs={"run_id": "live-1"})
    runner.start()
    try:
        assert reported.wait(10)
        state = engine.get("live-1")
        assert state is not None and state.steps[0].status == StepStatus.RUNNING
        assert state.steps[0].progress and state.steps[0].progress["done"] == 3
        assert describe_progress(state.steps[0].progress) == "3/10 (30%) resizing"
    finally:
        release.set()
        runner.join(10)


def test_a_new_attempt_starts_without_the_last_ones_report(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage, backoff=ZERO_BACKOFF, sleep=no_sleep)
    seen: list[Any] = []

    def flaky(ctx: Any) -> str:
        seen.append(engine.get(ctx.run_id).step("flaky").progress)  # type: ignore[union-attr]
        ctx.progress(ctx.attempt, 2)
        if ctx.attempt == 1:
            raise ConnectionError("try again")
        return "ok"

    wf = workflow("progress-retry").step("flaky", flaky, retries=1)
    result = engine.execute(wf, {})
    assert result.status == RunStatus.COMPLETED
    assert seen == [None, None]  # attempt 2 did not see attempt 1's report
    assert engine.get(result.id).step("flaky").progress["done"] == 2  # type: ignore[index, union-attr]


def test_a_commit_steps_report_is_stored_with_its_outcome(sql_storage: Any) -> None:
    """A commit's handler runs inside its transaction (on SQLite it holds the write lock):
    its reports are saved with the outcome, not beside it."""
    engine = FluxEngine(storage=sql_storage)

    def charge(ctx: Any) -> str:
        ctx.progress(1, 2, "authorised")
        ctx.progress(2, 2, "captured")
        return "ch_1"

    result = engine.execute(workflow("progress-commit").commit("charge", charge), {})
    assert result.status == RunStatus.COMPLETED
    step = engine.get(result.id).step("charge")  # type: ignore[union-attr]
    assert step.progress and step.progress["message"] == "captured"
    assert [e["message"] for e in _progress_events(engine, result.id)] == ["captured"]


def test_a_late_report_of_an_ended_attempt_goes_nowhere(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage)
    kept: list[Any] = []
    wf = workflow("progress-late").step("work", lambda ctx: kept.append(ctx)).step("next", len)
    result = engine.execute(wf, {})
    kept[0].progress(99, 100, "after the end")  # e.g. from a thread the attempt abandoned
    assert engine.get(result.id).step("work").progress is None  # type: ignore[union-attr]
    assert _progress_events(engine, result.id) == []


def test_the_store_refuses_a_report_for_a_step_not_running_that_attempt(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage)
    result = engine.execute(workflow("progress-guard").step("work", lambda ctx: 1), {})
    report = {"done": 1, "total": None, "message": None, "at": "2026-12-02T12:00:00+00:00"}
    assert any_storage.record_progress(result.id, 0, 1, report, []) is False  # completed
    assert any_storage.record_progress("no-such-run", 0, 1, report, []) is False


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ((float("nan"),), "finite"),
        ((-1,), ">= 0"),
        ((True,), "number"),
        (("3",), "number"),
        ((1, float("inf")), "finite"),
        ((1, 2, 3), "string"),
    ],
)
def test_bad_reports_raise_value_error_naming_the_problem(
    args: tuple[Any, ...], problem: str
) -> None:
    engine = FluxEngine()
    errors: list[str] = []

    def work(ctx: Any) -> None:
        try:
            ctx.progress(*args)
        except ValueError as exc:
            errors.append(str(exc))

    engine.execute(workflow("progress-bad").step("work", work), {})
    assert len(errors) == 1 and problem in errors[0]


def test_a_secret_in_a_message_is_masked() -> None:
    engine = FluxEngine()
    wf = workflow("progress-secret").step(
        "work", lambda ctx: ctx.progress(1, 1, "login s3cr3t-pw ok")
    )
    result = engine.execute(wf, {"password": "s3cr3t-pw"})
    progress = engine.get(result.id).step("work").progress  # type: ignore[union-attr]
    assert progress and progress["message"] == "login *** ok"
    assert "s3cr3t" not in json.dumps(_progress_events(engine, result.id))


# -- where it is shown --------------------------------------------------------------------
@pytest.fixture
def blocked_run(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A run on a SQLite file whose second step reported 40/100 and waits to be released."""
    url = f"sqlite:///{tmp_path}/progress.db"
    engine = FluxEngine(storage=SqlStorage(url))
    reported, release = threading.Event(), threading.Event()

    def resize(ctx: Any) -> str:
        ctx.progress(40, 100, "resizing photos")
        reported.set()
        assert release.wait(30)
        return "done"

    wf = workflow("progress-show").step("fetch", lambda ctx: 1).step("resize", resize)
    runner = threading.Thread(target=engine.execute, args=(wf, {}), kwargs={"run_id": "shown-1"})
    runner.start()
    assert reported.wait(10)
    try:
        yield {"url": url, "engine": engine, "release": release, "id": "shown-1"}
    finally:
        release.set()
        runner.join(30)
        engine.close()


def _cli(url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--db", url, *args], env={"COLUMNS": "120"})


def test_runs_and_show_print_the_running_steps_progress(blocked_run: dict[str, Any]) -> None:
    runs = _cli(blocked_run["url"], "runs")
    assert runs.exit_code == 0, runs.output
    assert "resize 40/100 (40%)" in runs.stdout
    show = _cli(blocked_run["url"], "show", "shown-1")
    assert show.exit_code == 0, show.output
    assert "40/100 (40%) resizing photos" in show.stdout
    rows = json.loads(_cli(blocked_run["url"], "runs", "--json").stdout)["runs"]
    assert rows[0]["progress"]["done"] == 40


def test_show_watch_follows_the_run_until_it_settles(blocked_run: dict[str, Any]) -> None:
    threading.Timer(1.0, blocked_run["release"].set).start()
    result = _cli(blocked_run["url"], "--json", "show", "shown-1", "--watch", "--interval", "0.1")
    assert result.exit_code == 0, result.output
    documents, text = [], result.stdout.strip()
    decoder = json.JSONDecoder()
    while text:
        doc, end = decoder.raw_decode(text)
        documents.append(doc)
        text = text[end:].strip()
    assert documents[0]["steps"][1]["progress"]["message"] == "resizing photos"
    assert documents[-1]["status"] == "completed"
    assert len(documents) >= 2


def test_the_flower_run_page_and_list_show_progress(blocked_run: dict[str, Any]) -> None:
    from test_flower_tab import serve

    from fluxcelery.celery.app import build_app
    from fluxcelery.settings import Settings

    capp = build_app(Settings(broker_url="memory://", celery={"task_always_eager": True}))
    with serve(blocked_run["engine"], capp) as client:
        status, _, page = client.get("/workflows/run/shown-1")
        assert status == 200
        assert 'data-progress-for="resize"' in page
        assert '<progress value="40" max="100">' in page and "40/100 (40%) resizing photos" in page
        status, _, listing = client.get("/workflows")
        assert status == 200 and "40/100 (40%)" in listing


def test_the_viewer_api_gives_the_progress(blocked_run: dict[str, Any]) -> None:
    from test_viewer import get_json, running

    from fluxcelery.web.viewer import create_server

    with running(create_server(db_url=blocked_run["url"], port=0)) as url:
        run = get_json(url + "api/runs/shown-1")
    resize = next(s for s in run["steps"] if s["name"] == "resize")
    assert resize["status"] == "running" and resize["progress"]["done"] == 40
