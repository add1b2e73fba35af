"""The Schedules page of the Flower tab (``/workflows/schedules``) and its JSON, over HTTP
on a real tornado server (the ``serve`` helper of test_flower_tab.py)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flower")

from test_flower_tab import NO_BROKER, Client, serve

from fluxcelery import FluxEngine, SqlStorage, schedule, workflow
from fluxcelery.celery.app import build_app
from fluxcelery.schedules import declared_schedules, forget_schedule, latest_tick, tick_run_id
from fluxcelery.settings import Settings

XSS_WORKFLOW = "sched-flower-<script>alert(1)</script>"


class Seeded:
    def __init__(self, engine: FluxEngine, capp: Any, poll_run: str, xss: str) -> None:
        self.engine, self.capp, self.poll_run, self.xss = engine, capp, poll_run, xss


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """The schedules of ``schedule_workflows`` (imported by the page itself), a completed
    run of the latest tick of ``sched-cli-poll``, and a schedule of a workflow whose name
    is a script tag."""
    db = tmp_path_factory.mktemp("flower-schedules") / "flux.db"
    capp = build_app(Settings(broker_url=NO_BROKER, workflows=("schedule_workflows",)))
    engine = FluxEngine(storage=SqlStorage(f"sqlite:///{db}"), app=capp)
    import schedule_workflows  # the run below needs the definitions

    poll_tick = latest_tick(declared_schedules()["sched-cli-poll"], datetime.now(UTC))
    poll_run = tick_run_id("sched-cli-poll", poll_tick)
    engine.execute(schedule_workflows.report, {"since": poll_tick.isoformat()}, run_id=poll_run)
    xss_wf = workflow(XSS_WORKFLOW).step("one", lambda ctx: 1)
    xss = f"sched-flower-xss-{uuid.uuid4().hex[:6]}"
    schedule(xss, xss_wf, every=60)
    try:
        yield Seeded(engine, capp, poll_run, xss)
    finally:
        forget_schedule(xss)
        engine.close()


@pytest.fixture(scope="module")
def client(seeded: Seeded) -> Iterator[Client]:
    with serve(seeded.engine, seeded.capp) as c:
        yield c


def row(body: str, name: str) -> str:
    match = re.search(rf'<tr data-schedule="{re.escape(name)}">(.*?)</tr>', body, re.S)
    assert match, f"no row for schedule {name!r}"
    return match.group(1)


def test_schedules_page_lists_next_tick_and_last_run(client: Client, seeded: Seeded) -> None:
    status, _, body = client.get("/workflows/schedules")
    assert status == 200
    assert re.search(r'class="nav-link active"\s+href="/workflows/schedules"', body)
    poll = row(body, "sched-cli-poll")
    link = "/workflows/run/" + seeded.poll_run.replace(":", "%3A")
    assert f'href="{link}"' in poll
    assert 'class="badge text-bg-success">completed</span>' in poll
    assert "every 300 s" in poll and "catch up" in poll
    nightly = row(body, "sched-cli-nightly")
    assert "0 3 * * *" in nightly and "Europe/Paris" in nightly and "none yet" in nightly
    assert re.search(r"\d{4}-\d\d-\d\d 0[12]:00:00 UTC", nightly)  # 03:00 Paris, in UTC
    assert re.search(r"\d{4}-\d\d-\d\d 03:00:00 Europe/Paris", nightly)
    # the run link opens the run's page
    status, _, run_page = client.get(link)
    assert status == 200 and seeded.poll_run in run_page


def test_workflow_names_are_escaped(client: Client, seeded: Seeded) -> None:
    _, _, body = client.get("/workflows/schedules")
    xss = row(body, seeded.xss)
    assert "<script>alert(1)" not in body
    assert "sched-flower-&lt;script&gt;alert(1)&lt;/script&gt;" in xss
    assert "workflow=sched-flower-%3Cscript%3E" in xss


def test_navbar_has_the_schedules_tab_on_every_page(client: Client) -> None:
    _, _, body = client.get("/workflows")
    assert 'href="/workflows/schedules"' in body
    assert re.search(r'class="nav-link active"\s+href="/workflows"', body)


def test_schedules_api(client: Client, seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    status, _, _ = client.get("/api/flux/schedules")
    assert status == 401  # like Flower's own API without auth
    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")
    data = client.json("/api/flux/schedules")
    found = {s["name"]: s for s in data["schedules"]}
    assert found["sched-cli-poll"]["last_run_id"] == seeded.poll_run
    assert found["sched-cli-poll"]["last_run_status"] == "completed"
    local = datetime.fromisoformat(found["sched-cli-nightly"]["next_tick_local"])
    assert (local.hour, local.minute) == (3, 0)
    assert data["import_errors"] == []


def test_a_module_that_fails_to_import_is_named(tmp_path: Path) -> None:
    capp = build_app(Settings(broker_url=NO_BROKER, workflows=("sched_flower_no_such_module",)))
    engine = FluxEngine(storage=SqlStorage(f"sqlite:///{tmp_path / 'flux.db'}"), app=capp)
    try:
        with serve(engine, capp) as c:
            status, _, body = c.get("/workflows/schedules")
        assert status == 200
        assert 'id="flux-import-errors"' in body
        assert "sched_flower_no_such_module: ModuleNotFoundError" in body
    finally:
        engine.close()
