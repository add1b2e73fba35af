"""The trace viewer page in a real headless Chromium (Debian's /usr/bin/chromium via Playwright).

Also writes the screenshot used by the docs (docs/img/viewer.png).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import IN_CI, ZERO_BACKOFF, no_sleep
from test_viewer import raised_traceback, store_traceback

from fluxcelery import (
    FluxEngine,
    FluxResult,
    JsonFileTraceSink,
    MemoryStorage,
    NonRetryableError,
    SqlStorage,
    TraceEvent,
    wait_for,
    workflow,
)
from fluxcelery.web import create_server
from fluxcelery.web.sources import DbSource

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Screenshots go to docs/img/ only when asked (FLUX_UPDATE_SCREENSHOTS=1), so that a
# test run does not rewrite tracked files; otherwise to a temporary directory.
DOCS_IMG = (
    Path(__file__).resolve().parent.parent / "docs" / "img"
    if os.environ.get("FLUX_UPDATE_SCREENSHOTS")
    else Path(tempfile.mkdtemp(prefix="flux-screens-"))
)
XSS = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
TAG = uuid.uuid4().hex[:6]  # workflow names are process-global

pytestmark = pytest.mark.browser


def _need_browser() -> Any:
    """Playwright's sync API on the system Chromium; skip (laptop) or fail (CI) without it."""
    problem = None
    if not os.path.exists(CHROMIUM):
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = problem or "playwright is not installed (pip install playwright)"
    if problem:
        if IN_CI:
            pytest.fail(f"{problem} (CI=true: a missing browser is a failure)")
        pytest.skip(problem)
    return sync_playwright


@dataclass
class Site:
    url: str
    path: Path
    engine: FluxEngine
    runs: dict[str, FluxResult]


def _work(ms: int) -> Any:
    def handler(ctx: Any) -> dict[str, bool]:
        time.sleep(ms / 1000)
        return {"ok": True}

    return handler


def _engine(path: Path) -> FluxEngine:
    sink = JsonFileTraceSink(path)
    return FluxEngine(storage=MemoryStorage(), trace=[sink], backoff=ZERO_BACKOFF, sleep=no_sleep)


def _trip() -> Any:
    """A saga with a retried payment, a skipped step and a failing hotel: rolled back."""
    tries = {"n": 0}

    def charge(ctx: Any) -> dict[str, str]:
        tries["n"] += 1
        time.sleep(0.03)
        if tries["n"] == 1:
            raise ConnectionError("payment gateway timeout")
        return {"charge_id": "ch_1"}

    def book_hotel(ctx: Any) -> None:
        time.sleep(0.02)
        raise NonRetryableError("no rooms left for 2024-06-01")

    return (
        workflow("trip-booking", version="2")
        .step("validate", _work(8))
        .step("charge-card", charge, retries=2, compensate=_work(12))
        .step("loyalty-bonus", _work(1), when=lambda ctx: False)
        .commit("book-flight", _work(25), compensate=_work(18))
        .step("book-hotel", book_hotel, retries=1)
        .step("send-itinerary", _work(5))
    )


@contextmanager
def _site(
    path: Path, engine: FluxEngine, runs: dict[str, FluxResult], shown: str | None = None
) -> Iterator[Site]:
    """Serve ``path``; ``shown`` is a relative path to it from its parent's parent, to show."""
    with pytest.MonkeyPatch.context() as mp:
        if shown:
            mp.chdir(path.parent.parent)
        server = create_server(trace_file=shown or path, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield Site(server.url, path, engine, runs)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        engine.close()


@pytest.fixture(scope="module")
def showcase(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Four runs of three workflows: completed, suspended and a rolled-back saga. The names
    are this module's own (the docs screenshot shows them)."""
    path = tmp_path_factory.mktemp("viewer-browser") / ".flux" / "trace.ndjson"
    engine = _engine(path)
    checkout = (
        workflow("checkout")
        .step("validate", _work(4))
        .step("reserve-stock", _work(12))
        .commit("charge", _work(16))
        .step("notify", _work(3))
    )
    approval = (
        workflow("expense-approval")
        .step("submit", _work(5))
        .step("await-approval", lambda ctx: wait_for("approved"))
        .step("pay-out", _work(5))
    )
    runs = {"checkout": engine.execute(checkout, {"sku": "A-1"})}
    runs["approval"] = engine.execute(approval, {"amount": 120})
    runs["checkout2"] = engine.execute(checkout, {"sku": "B-7"})
    runs["trip"] = engine.execute(_trip(), {"traveller": "ada", "card": "4242"})
    assert runs["trip"].status == "rolled_back"
    with _site(path, engine, runs, shown=".flux/trace.ndjson") as site:
        yield site


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _need_browser()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; fails the test on a script error, a console error or any dialog."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None,
    )

    def on_dialog(dialog: Any) -> None:
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield page
    context.close()
    assert problems == []


def _events(site: Site, run_id: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in site.path.read_text().splitlines()
        if json.loads(line)["run_id"] == run_id
    ]


def _timeline(page: Any) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#timeline tbody tr",
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))",
    )


def test_run_path_and_timeline(page: Any, showcase: Site) -> None:
    trip = showcase.runs["trip"]
    events = _events(showcase, trip.id)
    page.goto(showcase.url)
    page.click(f'.run-item[data-run-id="{trip.id}"]')
    page.wait_for_function(
        "n => document.querySelectorAll('#timeline tbody tr').length === n", arg=len(events)
    )

    nodes = page.eval_on_selector_all(
        "#path .step-node",
        "ns => ns.map(n => [n.querySelector('.step-name').textContent, n.className])",
    )
    assert [name for name, _ in nodes] == [
        "validate",
        "charge-card",
        "loyalty-bonus",
        "book-flight",
        "book-hotel",
        "send-itinerary",  # not reached: from the registered definition
    ]
    statuses = ["completed", "compensated", "skipped", "compensated", "failed", "pending"]
    for (name, cls), status in zip(nodes, statuses, strict=True):
        assert f"status-{status}" in cls.split(), (name, cls)
    assert page.locator("#path .arrow").count() == 5
    assert page.locator("#rollback .rollback-chip").all_text_contents() == [
        "book-flight",
        "charge-card",
    ]
    assert page.locator("#run-head h1").text_content() == trip.workflow
    assert "rolled back" in page.locator("#run-head .badge").text_content()

    rows = _timeline(page)
    assert [r[1] for r in rows] == [e["type"] for e in events]
    retry = next(r for r in rows if r[1] == "step:retry")
    assert retry[2:4] == ["charge-card", "1/3"]
    assert retry[4].endswith(" ms") and retry[5] == "ConnectionError: payment gateway timeout"
    assert next(r for r in rows if r[1] == "step:start")[4] == "—"  # no duration yet

    bars = page.locator("#gantt .bar")
    assert bars.count() == 8  # 2 charge attempts + 2 compensations + 3 steps + 1 skip
    assert page.locator("#gantt .bar.out-retry").count() == 1
    assert page.locator("#gantt .bar.phase-compensate").count() == 2
    assert page.locator("#tracebacks-panel").is_hidden()  # trace files carry none

    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(200)
    page.screenshot(path=str(DOCS_IMG / "viewer.png"), full_page=True)


def test_script_names_render_as_text(page: Any, tmp_path: Path) -> None:
    path = tmp_path / "trace.ndjson"
    engine = _engine(path)

    def fail(ctx: Any) -> None:
        raise NonRetryableError(IMG)

    wf = workflow(f"<b>xss</b>-{TAG}").step(XSS, lambda ctx: 1).step("boom", fail)
    run = engine.execute(wf)
    with _site(path, engine, {"xss": run}) as site:
        page.goto(site.url)
        item = page.locator(f'.run-item[data-run-id="{run.id}"]')
        assert item.locator(".run-wf").text_content() == wf.name
        item.click()
        page.wait_for_selector("#path .step-node")
        page.wait_for_function("() => document.querySelectorAll('#timeline tbody tr').length > 3")
        assert page.locator("#path .step-name").all_text_contents() == [XSS, "boom"]
        assert XSS in page.locator("#timeline .c-step").all_text_contents()
        assert f"NonRetryableError: {IMG}" in page.locator("#timeline .c-error").all_text_contents()
        assert page.locator("#run-head h1").text_content() == wf.name
        page.wait_for_timeout(300)  # a script that ran would have opened its dialog by now
        assert page.evaluate("document.scripts.length") == 1  # only viewer.js
        assert page.locator("img").count() == 0
        assert page.locator("#runs b, #run-head b, #path b, #timeline b").count() == 0
        assert page.locator("#path script, #timeline script, #runs script").count() == 0


def test_zero_durations_show_as_zero_ms(page: Any, tmp_path: Path) -> None:
    path = tmp_path / "trace.ndjson"
    sink = JsonFileTraceSink(path)
    common = {"run_id": f"instant-{TAG}", "workflow": f"instant-{TAG}"}
    step = {"step": "noop", "step_index": 0, "kind": "step", "attempt": 1, "max_attempts": 1}
    sink.emit_many(
        [
            TraceEvent(type="workflow:start", status="running", **common),
            TraceEvent(type="step:start", status="running", **common, **step),
            TraceEvent(type="step:complete", status="completed", duration_ms=0, **common, **step),
            TraceEvent(type="workflow:complete", status="completed", duration_ms=0, **common),
        ]
    )
    with _site(path, _engine(tmp_path / "unused.ndjson"), {}) as site:
        page.goto(f"{site.url}#run=instant-{TAG}")
        page.wait_for_function("() => document.querySelectorAll('#timeline tbody tr').length == 4")
        durations = page.locator("#timeline .c-duration").all_text_contents()
        assert durations == ["—", "—", "0 ms", "0 ms"]
        meta = page.locator("#path .step-node.status-completed .step-meta span")
        assert meta.all_text_contents() == ["attempt 1/1", "0 ms"]


def test_selecting_a_run_filters_the_timeline(page: Any, showcase: Site) -> None:
    page.goto(showcase.url)
    page.wait_for_selector("#recent tbody tr")
    shown = set(page.eval_on_selector_all("#recent tbody tr", "rs => rs.map(r => r.dataset.runId)"))
    assert shown == {r.id for r in showcase.runs.values()}  # no run selected: every run

    for key, steps in [
        ("checkout", {"validate", "reserve-stock", "charge", "notify", "—"}),
        ("approval", {"submit", "await-approval", "—"}),
    ]:
        run = showcase.runs[key]
        events = _events(showcase, run.id)
        page.click(f'.run-item[data-run-id="{run.id}"]')
        page.wait_for_function(
            "([id, n]) => document.querySelector('#run-head .run-id')?.textContent === id &&"
            " document.querySelectorAll('#timeline tbody tr').length === n",
            arg=[run.id, len(events)],
        )
        rows = _timeline(page)
        assert [r[1] for r in rows] == [e["type"] for e in events]
        assert {r[2] for r in rows} <= steps
        assert page.locator("#overview").is_hidden()

    statuses = page.eval_on_selector_all("#path .step-node", "ns => ns.map(n => n.dataset.status)")
    assert statuses == ["completed", "suspended", "pending"]

    page.select_option("#f-workflow", showcase.runs["checkout"].workflow)
    page.wait_for_function("() => document.querySelectorAll('.run-item').length === 2")
    page.keyboard.press("Escape")
    page.wait_for_selector("#overview:not([hidden]) #recent tbody tr")
    shown = set(page.eval_on_selector_all("#recent tbody tr", "rs => rs.map(r => r.dataset.runId)"))
    assert shown == {showcase.runs["checkout"].id, showcase.runs["checkout2"].id}


def test_page_follows_the_trace_without_needless_redraws(page: Any, tmp_path: Path) -> None:
    path = tmp_path / "trace.ndjson"
    engine = _engine(path)
    live = workflow(f"live-{TAG}").step("a", _work(1))
    first = engine.execute(live)
    with _site(path, engine, {"first": first}) as site:
        page.goto(site.url)
        page.wait_for_selector(".run-item")
        page.evaluate("document.querySelector('.run-item').dataset.marker = 'kept'")
        page.wait_for_timeout(1800)  # at least one poll with nothing new
        assert page.locator(".run-item[data-marker='kept']").count() == 1
        second = engine.execute(live)
        page.wait_for_selector(f'.run-item[data-run-id="{second.id}"]', timeout=5000)
        assert page.locator(".run-item").count() == 2


def test_failed_step_traceback_is_text(page: Any, tmp_path: Path) -> None:
    """From a database: the failed step's traceback, collapsed, shown as text when opened,
    and still open after the page redraws the run."""
    url = f"sqlite:///{tmp_path}/flux.db"
    engine = FluxEngine(storage=SqlStorage(url), backoff=ZERO_BACKOFF, sleep=no_sleep)

    def parse(ctx: Any) -> None:
        raise ValueError(XSS)

    wf = workflow(f"import-{TAG}").step("fetch", _work(2)).step("parse", parse, retries=0)
    run = engine.execute(wf)
    engine.close()
    server = create_server(db_url=url, port=0)
    assert isinstance(server.source, DbSource)
    text = raised_traceback(ValueError(XSS))
    store_traceback(server.source.storage, run.id, "parse", text)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        page.goto(f"{server.url}#run={run.id}")
        page.wait_for_selector("#tracebacks-panel:not([hidden]) details.traceback")
        block = page.locator('#tracebacks details.traceback[data-step="parse"]')
        assert page.locator("#tracebacks details").count() == 1
        assert not block.evaluate("d => d.open")
        assert block.locator(".traceback-error").text_content() == f"ValueError: {XSS}"
        block.locator("summary").click()
        pre = block.locator("pre")
        assert pre.is_visible() and pre.text_content() == text
        assert f"ValueError: {XSS}" in pre.inner_text()
        # The run changes (saved again): the page redraws it and keeps the block open.
        block.evaluate("d => { d.dataset.marker = 'old'; }")
        store_traceback(server.source.storage, run.id, "parse", text)
        page.wait_for_function(
            "() => !document.querySelector('#tracebacks details[data-marker]')", timeout=5000
        )
        assert block.evaluate("d => d.open")
        page.wait_for_timeout(300)  # a script that ran would have opened its dialog by now
        assert page.evaluate("document.scripts.length") == 1  # only viewer.js
        assert page.locator("#tracebacks script, #tracebacks img").count() == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_running_steps_progress_is_drawn_and_follows_the_run(page: Any, tmp_path: Path) -> None:
    """From a database, while a step runs: a bar and "40/100 (40%) resizing photos" on its
    node, redrawn when the step reports again, gone once it completed."""
    url = f"sqlite:///{tmp_path}/flux.db"
    engine = FluxEngine(storage=SqlStorage(url))
    reported, more, release = threading.Event(), threading.Event(), threading.Event()

    def resize(ctx: Any) -> str:
        ctx.progress(40, 100, "resizing photos")
        reported.set()
        assert more.wait(30)
        ctx.progress(90, 100, "almost there")
        assert release.wait(30)
        return "done"

    wf = workflow(f"photos-{TAG}").step("fetch", _work(2)).step("resize", resize)
    runner = threading.Thread(target=engine.execute, args=(wf, {}), kwargs={"run_id": "ph-1"})
    runner.start()
    server = create_server(db_url=url, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        assert reported.wait(10)
        page.goto(f"{server.url}#run=ph-1")
        node = page.locator('#path .step-node[data-step="resize"]')
        node.locator(".step-progress").wait_for()
        assert node.locator(".step-progress span").text_content() == "40/100 (40%) resizing photos"
        assert node.locator("progress").evaluate("p => [p.value, p.max]") == [40, 100]
        assert "null" not in page.locator("#run-head").inner_text()  # no error, no "null"
        page.screenshot(path=str(DOCS_IMG / "viewer-progress.png"))
        time.sleep(0.6)  # reports are stored at most every 0.5 s
        more.set()
        page.wait_for_function(
            "() => document.querySelector("
            "'#path .step-node[data-step=\"resize\"] .step-progress span')"
            "?.textContent === '90/100 (90%) almost there'",
            timeout=10000,
        )
        release.set()
        page.wait_for_function(
            "() => !document.querySelector('#path .step-progress')", timeout=10000
        )
        assert node.get_attribute("data-status") == "completed"
    finally:
        more.set()
        release.set()
        runner.join(10)
        server.shutdown()
        server.server_close()
        thread.join(5)
        engine.close()
