"""The Flower Workflows tab (``fluxcelery.contrib.flower``) on a real tornado server.

Runs are seeded on a SQLite file by real workflows: Celery runs execute their step tasks
eagerly (real task ids, the same task bodies a worker runs); the rest run in-process. Each
server is Flower's own application built by ``make_app``, served on a free loopback port
from a thread. One smoke test starts ``python -m fluxcelery.contrib.flower`` against RabbitMQ.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

pytest.importorskip("flower")

from helpers import AMQP_URL, ZERO_BACKOFF, no_sleep, require_service
from test_viewer import raised_traceback, store_traceback
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from fluxcelery import FluxEngine, MemoryStorage, SqlStorage, wait_for, workflow
from fluxcelery.celery import tasks as flux_tasks
from fluxcelery.celery.app import build_app
from fluxcelery.contrib import flower as flux_flower
from fluxcelery.contrib.flower import make_app
from fluxcelery.ops import RunFilter, find_runs, status_counts, trace_rows
from fluxcelery.settings import Settings

XSS_STEP = "<script>alert(1)</script>"
XSS_ERROR = "<img src=x onerror=alert(2)>"
#: The failed step's traceback: a real one, with a script tag in its message.
XSS_TRACEBACK = raised_traceback(ValueError("<script>alert(4)</script>"))
#: Nothing listens on port 1: eager tasks never touch the broker, and Flower must not either.
NO_BROKER = "amqp://guest:guest@127.0.0.1:1//"


# -- seeding ----------------------------------------------------------------------------------
@dataclass
class Seeded:
    engine: FluxEngine
    capp: Any
    orders: str
    bulk: str
    xss: str
    ok_id: str
    failed_id: str
    suspended_id: str
    xss_id: str
    bulk_ids: list[str]


def seed_runs(db_path: Path) -> Seeded:
    """Seven runs: orders completed + rolled back (Celery, eager), one suspended, one failed
    step named like a script tag, three bulk runs (all in-process)."""
    tag = uuid.uuid4().hex[:8]
    capp = build_app(Settings(broker_url=NO_BROKER, celery={"task_always_eager": True}))
    engine = FluxEngine(
        storage=SqlStorage(f"sqlite:///{db_path}"),
        app=capp,
        backoff=ZERO_BACKOFF,
        sleep=no_sleep,
    )

    def charge(ctx: Any) -> str:
        if ctx.input.get("decline"):
            raise RuntimeError("card declined by the bank")
        return "ch_1"

    orders = (
        workflow(f"flowertab-orders-{tag}")
        .step("reserve", lambda ctx: "r1", compensate=lambda ctx: None)
        .commit("charge", charge, retries=1)
        .step("ship", lambda ctx: "shipped")
    )

    def explode(ctx: Any) -> None:
        raise ValueError(XSS_ERROR)

    xss = workflow(f"flowertab-xss-{tag}").step(XSS_STEP, explode, retries=0)
    approval = workflow(f"flowertab-approval-{tag}").step(
        "approve", lambda ctx: wait_for("approved")
    )
    bulk = workflow(f"flowertab-bulk-{tag}").step("one", lambda ctx: 1).step("two", lambda ctx: 2)

    flux_tasks.use_engine(capp, engine)  # eager tasks run with this engine
    ok = engine.start(orders, {"order": 1, "password": "hunter2"})
    failed = engine.start(orders, {"order": 2, "decline": True})
    suspended = engine.execute(approval, {"order": 3})
    bad = engine.execute(xss)
    store_traceback(engine.storage, bad.id, XSS_STEP, XSS_TRACEBACK)
    bulk_ids = [engine.execute(bulk, {"n": n}).id for n in range(3)]

    assert engine.get(ok.id).status.value == "completed"  # type: ignore[union-attr]
    assert engine.get(failed.id).status.value == "rolled_back"  # type: ignore[union-attr]
    assert suspended.status.value == "suspended"
    assert bad.status.value == "failed"
    return Seeded(
        engine=engine,
        capp=capp,
        orders=orders.name,
        bulk=bulk.name,
        xss=xss.name,
        ok_id=ok.id,
        failed_id=failed.id,
        suspended_id=suspended.id,
        xss_id=bad.id,
        bulk_ids=bulk_ids,
    )


# -- a Flower server in a thread --------------------------------------------------------------
@dataclass
class Client:
    base: str
    port: int

    def get(
        self, path: str, auth: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        """GET ``path``: status, headers (lower-case names), body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = dict(headers or {})
        if auth is not None:
            sent["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        try:
            conn.request("GET", path, headers=sent)
            resp = conn.getresponse()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            return resp.status, headers, resp.read().decode()
        finally:
            conn.close()

    def json(self, path: str, auth: str | None = None) -> Any:
        status, _, body = self.get(path, auth=auth)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)


@contextmanager
def serve(engine: FluxEngine, capp: Any, **overrides: Any) -> Iterator[Client]:
    """``make_app(capp, overrides, engine)`` served on 127.0.0.1:<free port> until the block
    exits; the server thread, its sockets and Flower's executor are gone afterwards."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            app = make_app(capp, overrides, engine, io_loop=IOLoop.current())
            sockets = bind_sockets(0, "127.0.0.1")
            server = HTTPServer(app)
            server.add_sockets(sockets)
            box.update(loop=loop, port=sockets[0].getsockname()[1])
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.stop()
            loop.run_until_complete(server.close_all_connections())
            app.executor.shutdown(wait=True)
            loop.close()

    thread = threading.Thread(target=run, name="flower-test-server", daemon=True)
    thread.start()
    assert ready.wait(15), "the test Flower server did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield Client(f"http://127.0.0.1:{box['port']}", box["port"])
    finally:
        box["loop"].call_soon_threadsafe(box["loop"].stop)
        thread.join(15)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    data = seed_runs(tmp_path_factory.mktemp("flower") / "flux.db")
    yield data
    data.engine.close()


@pytest.fixture(scope="module")
def client(seeded: Seeded) -> Iterator[Client]:
    with serve(seeded.engine, seeded.capp) as c:
        yield c


@pytest.fixture
def open_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's switch for an API without authentication (read per request)."""
    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")


def pill_count(body: str, status: str) -> int:
    match = re.search(
        rf'data-status="{status}"[^>]*>[^<]*<span class="flux-count">([\d,]+)</span>', body
    )
    assert match, f"no filter pill for {status!r}"
    return int(match.group(1).replace(",", ""))


def row_ids(body: str) -> list[str]:
    return re.findall(r'<tr data-run-id="([^"]+)"', body)


# -- pages ------------------------------------------------------------------------------------
def test_workflows_page_lists_runs_with_counts(client: Client, seeded: Seeded) -> None:
    status, _, body = client.get("/workflows")
    assert status == 200
    assert set(row_ids(body)) == {
        seeded.ok_id,
        seeded.failed_id,
        seeded.suspended_id,
        seeded.xss_id,
        *seeded.bulk_ids,
    }
    assert pill_count(body, "") == 7
    assert pill_count(body, "completed") == 4
    assert pill_count(body, "rolled_back") == 1
    assert pill_count(body, "suspended") == 1
    assert pill_count(body, "failed") == 1
    assert pill_count(body, "cancelled") == 0
    # The navbar tab is active and each run links to its page.
    assert re.search(r'class="nav-link active"\s+href="/workflows"', body)
    assert f'href="/workflows/run/{seeded.failed_id}"' in body
    assert "hunter2" not in body


def test_status_filter(client: Client, seeded: Seeded) -> None:
    _, _, body = client.get("/workflows?status=rolled_back")
    assert row_ids(body) == [seeded.failed_id]
    assert 'data-status="rolled_back" aria-current="page"' in body
    _, _, body = client.get("/workflows?status=suspended")
    assert row_ids(body) == [seeded.suspended_id]
    _, _, body = client.get("/workflows?status=cancelled")
    assert row_ids(body) == [] and "No runs with status cancelled" in body
    status, _, body = client.get("/workflows?status=bogus")
    assert status == 400 and "unknown status 'bogus'" in body


def test_workflow_filter_and_paging(client: Client, seeded: Seeded) -> None:
    _, _, first = client.get(f"/workflows?workflow={seeded.bulk}&limit=2")
    _, _, second = client.get(f"/workflows?workflow={seeded.bulk}&limit=2&page=2")
    page1, page2 = row_ids(first), row_ids(second)
    assert len(page1) == 2 and len(page2) == 1
    assert set(page1 + page2) == set(seeded.bulk_ids)
    assert "Page 1 of 2" in first and "Showing 1–2 of 3" in first
    assert f"workflow={seeded.bulk}&amp;limit=2&amp;page=2" in first  # the Next link
    assert "Page 2 of 2" in second
    # Counts follow the workflow filter.
    assert pill_count(first, "") == 3 and pill_count(first, "completed") == 3
    status, _, _ = client.get("/workflows?page=0")
    assert status == 400


def test_run_page_shows_steps_linked_to_flower_tasks(client: Client, seeded: Seeded) -> None:
    status, _, body = client.get(f"/workflows/run/{seeded.failed_id}")
    assert status == 200
    state = seeded.engine.get(seeded.failed_id)
    assert state is not None
    steps = re.findall(r'<tr data-step="([^"]+)"[^>]*>(.*?)</tr>', body, re.S)
    assert [name for name, _ in steps] == ["reserve", "charge", "ship"]
    cells = dict(steps)
    assert "compensated" in cells["reserve"]
    assert "failed" in cells["charge"] and "card declined by the bank" in cells["charge"]
    assert re.search(r"<td class=\"flux-nowrap\">2</td>", cells["charge"])  # two attempts
    assert "pending" in cells["ship"] and "/task/" not in cells["ship"]
    for step in state.steps[:2]:
        assert step.task_id
        assert f'href="/task/{step.task_id}"' in cells[step.name]
    # Every trace event, in order.
    events = re.findall(r'<tr data-event="([^"]+)">', body)
    assert events == [e.type for e in seeded.engine.traces(run_id=seeded.failed_id)]
    assert "workflow:rollback_start" in events
    assert 'id="flux-run-status">rolled_back<' in body


def test_run_page_unknown_run_is_404(client: Client) -> None:
    status, _, body = client.get("/workflows/run/no-such-run")
    assert status == 404 and "Unknown run" in body
    status, _, _ = client.get("/workflows/run/" + "x" * 80)
    assert status == 404


def test_script_names_and_errors_are_escaped(client: Client, seeded: Seeded) -> None:
    _, _, body = client.get(f"/workflows/run/{seeded.xss_id}")
    assert XSS_STEP not in body and XSS_ERROR not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=alert(2)&gt;" in body
    _, _, listing = client.get("/workflows")
    assert XSS_ERROR not in listing and "&lt;img src=x onerror=alert(2)&gt;" in listing
    _, _, reflected = client.get("/workflows?workflow=%3Cscript%3Ealert(3)%3C/script%3E")
    assert "<script>alert(3)" not in reflected
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in reflected


def test_failed_step_traceback_is_collapsed_and_escaped(client: Client, seeded: Seeded) -> None:
    _, _, body = client.get(f"/workflows/run/{seeded.xss_id}")
    rows = re.findall(
        r'<tr class="flux-traceback-row" data-traceback-for="([^"]+)">(.*?)</tr>', body, re.S
    )
    assert [name for name, _ in rows] == ["&lt;script&gt;alert(1)&lt;/script&gt;"]
    block = rows[0][1]
    assert '<details class="flux-traceback" id="flux-traceback-0">' in block  # closed
    assert "<script>alert(4)" not in body
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in block
    assert "Traceback (most recent call last):" in block
    assert 'class="flux-has-traceback"' in body
    # Steps without a traceback get no row for it.
    _, _, other = client.get(f"/workflows/run/{seeded.ok_id}")
    assert '<tr class="flux-traceback-row"' not in other


def test_filters_by_prefix_run_id_and_time_range(client: Client, seeded: Seeded) -> None:
    everything = {seeded.ok_id, seeded.failed_id, seeded.suspended_id, seeded.xss_id}
    everything |= set(seeded.bulk_ids)
    _, _, body = client.get("/workflows?workflow_prefix=flowertab-")
    assert set(row_ids(body)) == everything
    _, _, body = client.get(f"/workflows?workflow_prefix={seeded.bulk[:-3]}")
    assert set(row_ids(body)) == set(seeded.bulk_ids)
    assert pill_count(body, "") == 3 and pill_count(body, "completed") == 3  # counts follow
    assert f'value="{seeded.bulk[:-3]}"' in body  # the form shows the filter
    _, _, body = client.get("/workflows?workflow_prefix=nothing-starts-so")
    assert row_ids(body) == [] and "matching the filters" in body

    # Run id: its start, or all of it; combined with the status.
    _, _, body = client.get(f"/workflows?run_id={seeded.ok_id[:8]}")
    assert row_ids(body) == [seeded.ok_id]
    _, _, body = client.get(f"/workflows?run_id={seeded.failed_id}")
    assert row_ids(body) == [seeded.failed_id] and pill_count(body, "rolled_back") == 1
    _, _, body = client.get(f"/workflows?run_id={seeded.failed_id}&status=completed")
    assert row_ids(body) == [] and pill_count(body, "") == 1

    # Created from (inclusive) and before (exclusive), in UTC.
    created = [seeded.engine.get(i).created_at for i in seeded.bulk_ids]  # type: ignore[union-attr]
    query = {"created_from": created[1].isoformat(), "workflow_prefix": "flowertab-"}
    _, _, body = client.get("/workflows?" + urlencode(query))
    assert set(row_ids(body)) == set(seeded.bulk_ids[1:])
    query["created_to"] = created[2].isoformat()
    _, _, body = client.get("/workflows?" + urlencode(query))
    assert row_ids(body) == [seeded.bulk_ids[1]]
    assert 'name="created_from"' in body and created[1].strftime("%Y-%m-%dT%H:%M") in body
    naive = (created[0] - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")  # a datetime-local
    _, _, body = client.get(f"/workflows?created_to={naive}")
    assert row_ids(body) == []

    # Every link keeps the other filters; the status pills combine with them.
    _, _, body = client.get(f"/workflows?workflow_prefix=flowertab-&run_id={seeded.ok_id[:8]}")
    wanted = f"status=completed&amp;workflow_prefix=flowertab-&amp;run_id={seeded.ok_id[:8]}"
    assert f'href="/workflows?{wanted}"' in body
    _, _, body = client.get(f"/workflows?{wanted.replace('&amp;', '&')}")
    assert row_ids(body) == [seeded.ok_id]

    # The form's empty fields redirect to the same view's clean URL.
    status, headers, _ = client.get("/workflows?workflow_prefix=flowertab-&run_id=&created_to=")
    assert status == 302 and headers["location"] == "/workflows?workflow_prefix=flowertab-"

    for bad in (
        "created_from=yesterday",
        "created_from=2025-06-02&created_to=2025-06-01",
        "run_id=" + "x" * 65,
        "workflow_prefix=" + "w" * 201,
    ):
        status, _, text = client.get(f"/workflows?{bad}")
        assert status == 400, (bad, text[:200])


def test_auto_refresh_is_off_unless_asked_for(client: Client, seeded: Seeded) -> None:
    for path in ("/workflows", f"/workflows/run/{seeded.ok_id}"):
        _, _, body = client.get(path)
        switch = re.search(r'<input[^>]*id="flux-autorefresh"[^>]*>', body)
        assert switch and "checked" not in switch.group(0), path
        _, _, body = client.get(path + "?refresh=1")
        switch = re.search(r'<input[^>]*id="flux-autorefresh"[^>]*>', body)
        assert switch and " checked" in switch.group(0), path
        assert 'data-seconds="5"' in switch.group(0)
    # The runs list keeps it on in its links and its filter form.
    _, _, body = client.get("/workflows?refresh=1&workflow_prefix=flowertab-")
    assert 'href="/workflows?status=failed&amp;workflow_prefix=flowertab-&amp;refresh=1"' in body
    assert '<input type="hidden" name="refresh" value="1">' in body
    # No inline event handlers anywhere on the pages.
    assert not re.search(r"<[^>]*\son[a-z]+=", body)


def test_scan_limit_is_reported(
    seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FluxEngine(storage=MemoryStorage())
    wf = workflow(f"flowertab-scan-{uuid.uuid4().hex[:6]}").step("one", lambda ctx: 1)
    ids = [engine.execute(wf).id for _ in range(5)]
    page = find_runs(engine, RunFilter(workflow_prefix="flowertab-scan-"), scan_limit=3)
    assert page.truncated and page.scanned == 3 and page.total == 3
    assert [r["id"] for r in page.runs] == ids[::-1][:3]
    page = find_runs(engine, RunFilter(workflow_prefix="flowertab-scan-"), limit=2, offset=2)
    assert not page.truncated and page.scanned == 5 and page.total == 5
    assert [r["id"] for r in page.runs] == ids[::-1][2:4]
    assert page.counts["completed"] == 5
    # A full uuid is looked up, not scanned for; storage answers plain filters itself.
    page = find_runs(engine, RunFilter(run_id=ids[0]))
    assert [r["id"] for r in page.runs] == [ids[0]] and page.scanned == 1
    page = find_runs(engine, RunFilter(workflow=wf.name), ["completed"], limit=1)
    assert page.total == 5 and page.scanned is None and len(page.runs) == 1

    monkeypatch.setattr(flux_flower, "find_runs", partial(find_runs, scan_limit=2))
    with serve(engine, seeded.capp) as c:
        _, _, body = c.get("/workflows?workflow_prefix=flowertab-scan-")
        assert len(row_ids(body)) == 2 and 'id="flux-scan-note"' in body
        _, _, body = c.get(f"/workflows?workflow={wf.name}")
        assert len(row_ids(body)) == 5 and 'id="flux-scan-note"' not in body
    engine.close()


def test_flower_pages_still_work_and_show_the_tab(client: Client) -> None:
    status, _, body = client.get("/tasks")
    assert status == 200
    assert body.count('href="/workflows"') == 1  # the navbar tab, not active here
    assert re.search(r'class="nav-link active"\s+href="/tasks"', body)
    status, _, _ = client.get("/task/unknown-task-id")
    assert status == 404
    status, _, _ = client.get("/no-such-page")
    assert status == 404  # Flower's catch-all still answers after our routes


# -- JSON API ---------------------------------------------------------------------------------
def test_api_needs_auth_or_the_unauthenticated_switch(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWER_UNAUTHENTICATED_API", raising=False)
    for path in ("/api/flux/runs", "/api/flux/counts", "/api/flux/runs/x/traces"):
        status, _, body = client.get(path)
        assert status == 401 and "FLOWER_UNAUTHENTICATED_API" in body
    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")
    assert client.get("/api/flux/counts")[0] == 200


@pytest.mark.usefixtures("open_api")
def test_api_runs_counts_and_filters(client: Client, seeded: Seeded) -> None:
    data = client.json("/api/flux/runs?status=rolled_back")
    assert [r["id"] for r in data["runs"]] == [seeded.failed_id]
    assert data["total"] == 1 and data["status"] == ["rolled_back"]
    assert data["runs"][0]["steps_total"] == 3 and data["runs"][0]["workflow"] == seeded.orders

    data = client.json(f"/api/flux/runs?workflow={seeded.bulk}&limit=2&offset=2")
    assert len(data["runs"]) == 1 and data["total"] == 3 and data["offset"] == 2

    data = client.json("/api/flux/runs?status=suspended,failed")
    assert {r["id"] for r in data["runs"]} == {seeded.suspended_id, seeded.xss_id}

    counts = client.json("/api/flux/counts")
    assert counts["counts"] == status_counts(seeded.engine) and counts["total"] == 7
    counts = client.json(f"/api/flux/counts?workflow={seeded.orders}")
    assert counts["total"] == 2 and counts["counts"]["rolled_back"] == 1

    assert client.get("/api/flux/runs?limit=0")[0] == 400
    assert client.get("/api/flux/runs?status=nope")[0] == 400


@pytest.mark.usefixtures("open_api")
def test_api_filters_by_prefix_run_id_and_time(client: Client, seeded: Seeded) -> None:
    data = client.json(f"/api/flux/runs?workflow_prefix={seeded.bulk[:-3]}&limit=2")
    assert len(data["runs"]) == 2 and data["total"] == 3
    assert data["workflow_prefix"] == seeded.bulk[:-3] and data["workflow"] is None
    assert data["scanned"] == 7 and data["truncated"] is False

    data = client.json(f"/api/flux/runs?run_id={seeded.xss_id[:6]}&status=failed")
    assert [r["id"] for r in data["runs"]] == [seeded.xss_id] and data["run_id"] == seeded.xss_id[
        :6
    ]

    created = seeded.engine.get(seeded.bulk_ids[2]).created_at  # type: ignore[union-attr]
    data = client.json("/api/flux/runs?" + urlencode({"created_from": created.isoformat()}))
    assert [r["id"] for r in data["runs"]] == [seeded.bulk_ids[2]]
    data = client.json("/api/flux/runs?" + urlencode({"created_to": created.isoformat()}))
    assert data["total"] == 6 and seeded.bulk_ids[2] not in {r["id"] for r in data["runs"]}

    counts = client.json("/api/flux/counts?workflow_prefix=flowertab-orders-")
    assert counts["total"] == 2 and counts["counts"]["rolled_back"] == 1
    assert counts["workflow_prefix"] == "flowertab-orders-" and counts["scanned"] == 7
    plain = client.json("/api/flux/counts")
    assert plain["workflow"] is None and "scanned" not in plain  # unchanged shape
    status, _, body = client.get("/api/flux/runs?created_from=soon")
    assert status == 400 and "created_from must be an ISO 8601 time" in body


@pytest.mark.usefixtures("open_api")
def test_api_run_and_traces(client: Client, seeded: Seeded) -> None:
    status, headers, body = client.get(f"/api/flux/runs/{seeded.ok_id}")
    assert status == 200 and headers["content-type"].startswith("application/json")
    run = json.loads(body)
    assert run["id"] == seeded.ok_id and run["status"] == "completed"
    assert [s["name"] for s in run["steps"]] == ["reserve", "charge", "ship"]
    assert all(s["task_id"] for s in run["steps"])
    assert run["input"]["password"] == "***"  # redacted, as everywhere else

    traces = client.json(f"/api/flux/runs/{seeded.ok_id}/traces")
    expected = trace_rows(seeded.engine.traces(run_id=seeded.ok_id), seeded.engine)
    assert traces["traces"] == expected == run["traces"]
    page = client.json(f"/api/flux/runs/{seeded.ok_id}/traces?limit=2&offset=1")
    assert page["traces"] == expected[1:3]

    assert client.get("/api/flux/runs/no-such-run")[0] == 404
    assert client.get("/api/flux/runs/no-such-run/traces")[0] == 404


# -- auth and url_prefix ----------------------------------------------------------------------
def test_basic_auth_protects_pages_and_api(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWER_UNAUTHENTICATED_API", raising=False)
    run_page = f"/workflows/run/{seeded.ok_id}"
    api = f"/api/flux/runs/{seeded.ok_id}"
    with serve(seeded.engine, seeded.capp, basic_auth=["user:pass"]) as c:
        for path in ("/workflows", run_page, api, "/api/flux/counts", "/tasks"):
            assert c.get(path)[0] == 401, path
            assert c.get(path, auth="user:wrong")[0] == 401, path
            assert c.get(path, auth="user:pass")[0] == 200, path
        assert c.get("/workflows")[1].get("www-authenticate") == 'Basic realm="flower"'
        assert c.json(api, auth="user:pass")["id"] == seeded.ok_id


def test_oauth_pages_redirect_to_login(seeded: Seeded) -> None:
    with serve(seeded.engine, seeded.capp, auth=r".*@example\.com") as c:
        status, headers, _ = c.get("/workflows")
        assert status == 302 and headers["location"].startswith("/login")
        # Like Flower's own API: no session cookie, no data (a redirect to the login page).
        status, headers, _ = c.get(f"/api/flux/runs/{seeded.ok_id}")
        assert status == 302 and headers["location"].startswith("/login")


@pytest.mark.usefixtures("open_api")
def test_url_prefix(seeded: Seeded) -> None:
    with serve(seeded.engine, seeded.capp, url_prefix="flower") as c:
        status, _, body = c.get("/flower/workflows")
        assert status == 200
        assert f'href="/flower/workflows/run/{seeded.ok_id}"' in body
        assert 'href="/flower/static/' in body and 'href="/flower/tasks"' in body
        status, _, body = c.get(f"/flower/workflows/run/{seeded.ok_id}")
        state = seeded.engine.get(seeded.ok_id)
        assert state is not None
        assert status == 200 and f'href="/flower/task/{state.steps[0].task_id}"' in body
        assert c.json("/flower/api/flux/counts")["total"] == 7
        assert c.json(f"/flower/api/flux/runs/{seeded.ok_id}/traces")["traces"]
        assert c.get("/flower/tasks")[0] == 200
        assert c.get("/workflows")[0] == 404


# -- pieces -----------------------------------------------------------------------------------
def test_navbar_patch() -> None:
    source = Path(flux_flower.FLOWER_TEMPLATE_DIR, "navbar.html").read_text()
    patched = flux_flower.navbar_with_workflows(source)
    assert patched.count("reverse_url('flux-workflows')") == 1
    assert patched.index("Broker</a>") < patched.index(">Workflows</a>")
    # An unknown layout is left alone (no tab on Flower's pages, nothing breaks).
    assert flux_flower.navbar_with_workflows("<nav>changed</nav>") == "<nav>changed</nav>"


def test_options_and_argv() -> None:
    with pytest.raises(ValueError, match="unknown Flower option 'nope'"):
        flux_flower.flower_options({"nope": 1})
    assert flux_flower.flower_options({"basic_auth": "a:b"}).basic_auth == ["a:b"]
    assert flux_flower._normalize_argv(
        ["--port", "5555", "--debug", "--basic-auth", "a:b", "--url_prefix=x", "--xheaders"]
    ) == ["--port=5555", "--debug", "--basic-auth=a:b", "--url_prefix=x", "--xheaders"]
    assert flux_flower.main(["--port=not-a-number"]) == 2
    assert flux_flower.format_ms(850) == "850 ms"
    assert flux_flower.format_ms(61_000) == "1m 01s"
    assert flux_flower.format_ts("2025-01-31T12:00:00.123456+00:00") == "2025-01-31 12:00:00 UTC"


def test_importing_fluxcelery_does_not_import_flower() -> None:
    code = "import sys, fluxcelery; fluxcelery.app; print('flower' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


# -- the real command against RabbitMQ --------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_command_smoke_with_rabbitmq(tmp_path: Path, seeded: Seeded) -> None:
    require_service("rabbitmq")
    db = tmp_path / "flux.db"
    engine = FluxEngine(storage=SqlStorage(f"sqlite:///{db}"))
    run_id = engine.execute(seeded.engine.workflow(seeded.bulk), {"n": 9}).id
    engine.close()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUX_", "FLOWER_"))}
    env.update(FLUX_BROKER_URL=AMQP_URL, FLUX_DATABASE_URL=f"sqlite:///{db}")
    proc = subprocess.Popen(
        [
            sys.executable,
            *("-m", "fluxcelery.contrib.flower", "--port", str(port)),
            *("--address=127.0.0.1", "--inspect_timeout=200"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = Client(f"http://127.0.0.1:{port}", port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/healthcheck")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, "fluxcelery flower exited early"
            assert time.monotonic() < deadline, "fluxcelery flower did not answer in 30 s"
            time.sleep(0.1)
        status, _, body = client.get("/workflows")
        assert status == 200 and f'data-run-id="{run_id}"' in body
        status, _, body = client.get("/tasks")
        assert status == 200 and 'href="/workflows"' in body
    finally:
        proc.terminate()  # SIGTERM: Flower's handler stops the loop
        try:
            output, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode == 0, output.decode()[-2000:]
    assert b"Workflows tab: /workflows" in output
