"""The Workflows tab in a real headless Chromium (Debian's /usr/bin/chromium via Playwright).

The runs are a small shop's (``acme-*`` workflows, used by no other test), so the same tests
also write the screenshots docs/flower.md shows (docs/img/flower-*.png), at 1400x900.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

pytest.importorskip("flower")

from helpers import IN_CI, ZERO_BACKOFF, no_sleep
from test_flower_tab import NO_BROKER, Client, serve
from test_viewer import store_traceback

from fluxcelery import FluxEngine, SqlStorage, wait_for, workflow
from fluxcelery.celery import tasks as flux_tasks
from fluxcelery.celery.app import build_app
from fluxcelery.contrib import flower as flux_flower
from fluxcelery.settings import Settings

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 900}
# Screenshots go to docs/img/ only when asked (FLUX_UPDATE_SCREENSHOTS=1), so that a
# test run does not rewrite tracked files; otherwise to a temporary directory.
DOCS_IMG = (
    Path(__file__).resolve().parent.parent / "docs" / "img"
    if os.environ.get("FLUX_UPDATE_SCREENSHOTS")
    else Path(tempfile.mkdtemp(prefix="flux-screens-"))
)

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
class Shop:
    engine: FluxEngine
    capp: Any
    declined_id: str
    export_ids: list[str]
    run_ids: list[str]

    @property
    def failed_export_id(self) -> str:
        return self.export_ids[1]


def _work(ms: int) -> None:
    time.sleep(ms / 1000)  # so the durations on the screenshots look like real work


def _put_object(bucket: str, key: str) -> None:
    raise ConnectionError("S3 upload failed: connection reset by peer")


def _upload_rows(day: str) -> None:
    _put_object("acme-exports", f"orders/{day}.csv.gz")


def seed_shop(db_path: Path) -> Shop:
    """Checkout runs on Celery (eager: real task ids), one declined and rolled back; a refund
    waiting for approval; nightly exports, one failed (its upload raised, on Celery)."""
    capp = build_app(Settings(broker_url=NO_BROKER, celery={"task_always_eager": True}))
    engine = FluxEngine(
        storage=SqlStorage(f"sqlite:///{db_path}"), app=capp, backoff=ZERO_BACKOFF, sleep=no_sleep
    )

    def charge_card(ctx: Any) -> dict[str, str]:
        _work(45)
        if ctx.input["amount"] > 1000:
            raise RuntimeError("card declined by the bank (code 05)")
        return {"charge_id": f"ch_{ctx.input['order_id']}"}

    checkout = (
        workflow("acme-checkout")
        .step("validate_order", lambda ctx: _work(6))
        .step("reserve_stock", lambda ctx: _work(18), compensate=lambda ctx: _work(9))
        .commit("charge_card", charge_card, retries=1)
        .step("send_receipt", lambda ctx: _work(22))
    )
    refund = (
        workflow("acme-refund-approval")
        .step("open_case", lambda ctx: _work(12))
        .step("manager_approval", lambda ctx: wait_for("approved"))
        .commit("refund", lambda ctx: _work(30))
    )

    def upload(ctx: Any) -> None:
        _work(35)
        if ctx.input["day"] == "2025-06-02":
            _upload_rows(ctx.input["day"])

    export = (
        workflow("acme-nightly-export")
        .step("collect_rows", lambda ctx: _work(40))
        .step("upload", upload, retries=0)
    )

    flux_tasks.use_engine(capp, engine)  # eager tasks run with this engine
    ids = []
    ids.append(engine.execute(export, {"day": "2025-06-01"}).id)
    ids.append(engine.start(export, {"day": "2025-06-02"}).id)  # fails on a worker
    for order_id, amount in (("A-1041", 59.0), ("A-1042", 129.5)):
        ids.append(engine.start(checkout, {"order_id": order_id, "amount": amount}).id)
    declined = engine.start(
        checkout, {"order_id": "A-1043", "amount": 1499.0, "card_token": "tok_4242"}
    ).id
    ids.append(declined)
    ids.append(engine.start(refund, {"order_id": "A-1038", "amount": 25.0}).id)
    ids.append(engine.start(checkout, {"order_id": "A-1044", "amount": 18.9}).id)
    shop = Shop(engine=engine, capp=capp, declined_id=declined, export_ids=ids[:2], run_ids=ids)
    try:  # the traceback the runner stores, made here in case this storage does not keep it
        _upload_rows("2025-06-02")
    except ConnectionError:
        keep_traceback(engine, shop.failed_export_id, "upload", traceback.format_exc())
    return shop


def keep_traceback(engine: FluxEngine, run_id: str, step: str, text: str) -> str:
    """The step's stored traceback; ``text`` is stored when there is none."""
    state = engine.get(run_id)
    assert state is not None
    stored = state.step(step).traceback
    if stored:
        return stored
    store_traceback(engine.storage, run_id, step, text)
    return text


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    _need_browser()
    data = seed_shop(tmp_path_factory.mktemp("flower-browser") / "flux.db")
    yield data
    data.engine.close()


@pytest.fixture(scope="module")
def site(shop: Shop) -> Iterator[Client]:
    with serve(shop.engine, shop.capp) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _need_browser()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh 1400x900 page; fails the test on a script error, a console error or a dialog."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    def on_dialog(dialog: Any) -> None:
        errors.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.emulate_media(color_scheme="light")
    yield page
    context.close()
    assert not errors, errors


def shown_runs(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "#flux-runs-table tbody tr[data-run-id]", "rows => rows.map(r => r.dataset.runId)"
    )


def test_workflows_tab_lists_runs_and_opens_a_run(page: Any, site: Client, shop: Shop) -> None:
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    # From Flower's own Tasks page, the navbar tab leads to the runs table.
    page.goto(f"{site.base}/tasks")
    page.get_by_role("link", name="Workflows", exact=True).click()
    page.wait_for_url(f"{site.base}/workflows")
    assert len(shown_runs(page)) == len(shop.run_ids)
    declined = page.locator(f'tr[data-run-id="{shop.declined_id}"]')
    assert declined.locator(".badge").inner_text() == "rolled_back"
    assert "card declined" in declined.inner_text()
    assert page.locator("#flux-total").inner_text() == str(len(shop.run_ids))
    page.screenshot(path=str(DOCS_IMG / "flower-workflows.png"), full_page=True)

    # The status filter, then the run page.
    page.locator('a.task-state-filter[data-status="rolled_back"]').click()
    page.wait_for_url("**/workflows?status=rolled_back")
    assert shown_runs(page) == [shop.declined_id]
    page.locator(f'a[href="/workflows/run/{shop.declined_id}"]').click()
    page.wait_for_url(f"**/workflows/run/{shop.declined_id}")

    steps = page.locator("#flux-steps-table tbody tr[data-step]")
    assert steps.count() == 4
    charge = page.locator('tr[data-step="charge_card"]')
    assert charge.locator(".badge").inner_text() == "failed"
    assert "card declined by the bank" in charge.inner_text()
    state = shop.engine.get(shop.declined_id)
    assert state is not None
    task_id = state.step("charge_card").task_id
    assert task_id and charge.locator(f'a[href="/task/{task_id}"]').count() == 1
    events = page.locator("#flux-trace-table tbody tr[data-event]")
    assert events.count() == len(shop.engine.traces(run_id=shop.declined_id))
    assert page.locator('tr[data-event="workflow:rollback_start"]').count() == 1
    assert page.locator("#flux-run-status").inner_text() == "rolled_back"
    assert "tok_4242" not in page.content()  # redacted input
    page.screenshot(path=str(DOCS_IMG / "flower-run.png"), full_page=True)

    # A step named like a script tag is shown as text, never run.
    tag = os.urandom(3).hex()
    xss = workflow(f"acme-xss-{tag}").step("<script>alert(1)</script>", lambda ctx: 1)
    xss_id = shop.engine.execute(xss).id
    page.goto(f"{site.base}/workflows/run/{xss_id}")
    name = page.locator("#flux-steps-table tbody tr td.fw-semibold").inner_text()
    assert name == "<script>alert(1)</script>"


def test_filters_narrow_the_list_and_stay_in_the_url(page: Any, site: Client, shop: Shop) -> None:
    page.goto(f"{site.base}/workflows")
    # Workflow name prefix (typed into the form).
    page.fill("#flux-workflow-filter", "acme-nightly")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/workflows?workflow_prefix=acme-nightly")
    assert set(shown_runs(page)) == set(shop.export_ids)
    assert page.locator("#flux-total").inner_text() == "2"
    # Plus a status: the pill keeps the prefix.
    page.locator('a.task-state-filter[data-status="failed"]').click()
    page.wait_for_url("**/workflows?status=failed&workflow_prefix=acme-nightly")
    assert shown_runs(page) == [shop.failed_export_id]
    assert page.input_value("#flux-workflow-filter") == "acme-nightly"
    page.locator("#flux-clear").click()
    page.wait_for_url(f"{site.base}/workflows")
    assert len(shown_runs(page)) >= len(shop.run_ids)

    # Run id: its first characters.
    page.fill("#flux-run-filter", shop.declined_id[:8])
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/workflows?run_id={shop.declined_id[:8]}")
    assert shown_runs(page) == [shop.declined_id]
    page.locator("#flux-clear").click()
    page.wait_for_url(f"{site.base}/workflows")

    # Created from/before (UTC datetime-local inputs): an hour ahead finds nothing; an hour
    # either side of now finds the shop.
    now = shop.engine.get(shop.run_ids[-1]).created_at  # type: ignore[union-attr]
    later, earlier = now + timedelta(hours=1), now - timedelta(hours=1)
    page.fill("#flux-created-from", later.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/workflows?created_from=*")
    assert shown_runs(page) == []
    assert "matching the filters" in page.locator("#flux-runs-table").inner_text()
    page.fill("#flux-created-from", earlier.strftime("%Y-%m-%dT%H:%M"))
    page.fill("#flux-created-to", later.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/workflows?created_from=*&created_to=*")
    assert set(shop.run_ids) <= set(shown_runs(page))

    # A linked view: exact times (the first export only) and a prefix, from the URL alone.
    first, second = (shop.engine.get(i).created_at for i in shop.export_ids)  # type: ignore[union-attr]
    query = urlencode(
        {
            "workflow_prefix": "acme-",
            "created_from": first.isoformat(),
            "created_to": second.isoformat(),
        }
    )
    page.goto(f"{site.base}/workflows?{query}")
    assert shown_runs(page) == [shop.export_ids[0]]
    assert page.input_value("#flux-workflow-filter") == "acme-"
    assert page.input_value("#flux-created-from").startswith(first.strftime("%Y-%m-%dT%H:%M"))


def test_auto_refresh_is_off_by_default_and_reloads_when_toggled(
    page: Any, site: Client, shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flux_flower, "REFRESH_SECONDS", 1)  # read per request
    page.goto(f"{site.base}/workflows?workflow_prefix=acme-")
    switch = page.locator("#flux-autorefresh")
    assert not switch.is_checked()
    page.evaluate("window.fluxMarker = 'kept'")
    page.wait_for_timeout(2500)  # more than two intervals: nothing reloads by itself
    assert page.evaluate("window.fluxMarker") == "kept"

    switch.check()
    page.wait_for_url("**/workflows?workflow_prefix=acme-&refresh=1")
    assert page.locator("#flux-autorefresh").is_checked()
    page.evaluate("window.fluxMarker = 'kept'")
    page.wait_for_function("() => window.fluxMarker === undefined", timeout=5000)  # reloaded
    assert page.url.endswith("refresh=1")
    # The links of the page keep it on; turning it off stops the reloads.
    href = page.locator('a.task-state-filter[data-status="failed"]').get_attribute("href")
    assert href is not None and "refresh=1" in href
    page.locator("#flux-autorefresh").uncheck()
    page.wait_for_url("**/workflows?workflow_prefix=acme-")
    page.evaluate("window.fluxMarker = 'kept'")
    page.wait_for_timeout(2500)
    assert page.evaluate("window.fluxMarker") == "kept"

    # On the run page too, and an opened traceback stays open across reloads.
    page.goto(f"{site.base}/workflows/run/{shop.failed_export_id}")
    assert not page.locator("#flux-autorefresh").is_checked()
    page.locator("#flux-autorefresh").check()
    page.wait_for_url("**?refresh=1")
    page.locator("details.flux-traceback summary").click()
    page.evaluate("window.fluxMarker = 'kept'")
    page.wait_for_function("() => window.fluxMarker === undefined", timeout=5000)
    page.wait_for_load_state()
    assert page.locator("details.flux-traceback").evaluate("d => d.open")


def test_run_page_steps_above_the_fold_and_traceback(page: Any, site: Client, shop: Shop) -> None:
    for run_id in (shop.declined_id, shop.failed_export_id):
        page.goto(f"{site.base}/workflows/run/{run_id}")
        box = page.locator("#flux-steps-table tbody tr[data-step]").first.bounding_box()
        assert box is not None and box["y"] + box["height"] <= VIEWPORT["height"], (run_id, box)

    # The failed step's traceback: collapsed, then shown in full, monospace.
    upload = page.locator('tr[data-step="upload"]')
    assert upload.locator(".badge").inner_text() == "failed"
    state = shop.engine.get(shop.failed_export_id)
    task_id = state.step("upload").task_id if state else None
    assert task_id and upload.locator(f'a[href="/task/{task_id}"]').count() == 1
    block = page.locator('tr[data-traceback-for="upload"] details.flux-traceback')
    code = block.locator("pre")
    assert not block.evaluate("d => d.open") and not code.is_visible()
    block.locator("summary").click()
    assert code.is_visible()
    text = code.inner_text()
    assert text.startswith("Traceback (most recent call last):")
    assert "ConnectionError: S3 upload failed: connection reset by peer" in text
    assert "monospace" in code.evaluate("e => getComputedStyle(e).fontFamily").lower()
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / "flower-run-failed.png"))

    # A traceback holding a script tag is text.
    def parse(ctx: Any) -> None:
        raise ValueError("bad row: <script>alert(5)</script>")

    xss = workflow(f"acme-xss-tb-{os.urandom(3).hex()}").step("parse", parse, retries=0)
    run_id = shop.engine.execute(xss).id
    try:
        parse(None)
    except ValueError:
        keep_traceback(shop.engine, run_id, "parse", traceback.format_exc())
    page.goto(f"{site.base}/workflows/run/{run_id}")
    block = page.locator('tr[data-traceback-for="parse"] details.flux-traceback')
    block.locator("summary").click()
    assert "ValueError: bad row: <script>alert(5)</script>" in block.locator("pre").inner_text()
    assert page.locator("#flux-steps-table script").count() == 0
    page.wait_for_timeout(300)  # a script that ran would have opened its dialog by now
