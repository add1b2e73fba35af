"""The Workflows tab in a real headless Chromium (Debian's /usr/bin/chromium via Playwright).

The runs are a small shop's (``acme-*`` workflows, used by no other test), so the same test
also writes the screenshots docs/flower.md shows (docs/img/flower-*.png).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flower")

from helpers import IN_CI, ZERO_BACKOFF, no_sleep
from test_flower_tab import NO_BROKER, serve

from fluxcelery import FluxEngine, SqlStorage, wait_for, workflow
from fluxcelery.celery import tasks as flux_tasks
from fluxcelery.celery.app import build_app
from fluxcelery.settings import Settings

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
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
    run_ids: list[str]


def _work(ms: int) -> None:
    time.sleep(ms / 1000)  # so the durations on the screenshots look like real work


def seed_shop(db_path: Path) -> Shop:
    """Checkout runs on Celery (eager: real task ids), one declined and rolled back; a refund
    waiting for approval; nightly exports, one failed."""
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
            raise ConnectionError("S3 upload failed: connection reset by peer")

    export = (
        workflow("acme-nightly-export")
        .step("collect_rows", lambda ctx: _work(40))
        .step("upload", upload, retries=0)
    )

    previous = flux_tasks._worker_engine
    flux_tasks.set_worker_engine(engine)
    ids = []
    try:
        ids.append(engine.execute(export, {"day": "2025-06-01"}).id)
        ids.append(engine.execute(export, {"day": "2025-06-02"}).id)
        for order_id, amount in (("A-1041", 59.0), ("A-1042", 129.5)):
            ids.append(engine.start(checkout, {"order_id": order_id, "amount": amount}).id)
        declined = engine.start(
            checkout, {"order_id": "A-1043", "amount": 1499.0, "card_token": "tok_4242"}
        ).id
        ids.append(declined)
        ids.append(engine.start(refund, {"order_id": "A-1038", "amount": 25.0}).id)
        ids.append(engine.start(checkout, {"order_id": "A-1044", "amount": 18.9}).id)
    finally:
        flux_tasks.set_worker_engine(previous)
    return Shop(engine=engine, capp=capp, declined_id=declined, run_ids=ids)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    _need_browser()
    data = seed_shop(tmp_path_factory.mktemp("flower-browser") / "flux.db")
    yield data
    data.engine.close()


def test_workflows_tab_lists_runs_and_opens_a_run(shop: Shop) -> None:
    sync_playwright = _need_browser()
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with serve(shop.engine, shop.capp) as client, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 860})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
            page.emulate_media(color_scheme="light")

            # From Flower's own Tasks page, the navbar tab leads to the runs table.
            page.goto(f"{client.base}/tasks")
            page.get_by_role("link", name="Workflows", exact=True).click()
            page.wait_for_url(f"{client.base}/workflows")
            rows = page.locator("#flux-runs-table tbody tr[data-run-id]")
            assert rows.count() == len(shop.run_ids)
            declined = page.locator(f'tr[data-run-id="{shop.declined_id}"]')
            assert declined.locator(".badge").inner_text() == "rolled_back"
            assert "card declined" in declined.inner_text()
            assert page.locator("#flux-total").inner_text() == str(len(shop.run_ids))
            page.screenshot(path=str(DOCS_IMG / "flower-workflows.png"), full_page=True)

            # The status filter, then the run page.
            page.locator('a.task-state-filter[data-status="rolled_back"]').click()
            page.wait_for_url("**/workflows?status=rolled_back")
            assert rows.count() == 1
            page.locator(f'a[href="/workflows/run/{shop.declined_id}"]').click()
            page.wait_for_url(f"**/workflows/run/{shop.declined_id}")

            steps = page.locator("#flux-steps-table tbody tr")
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
            page.goto(f"{client.base}/workflows/run/{xss_id}")
            name = page.locator("#flux-steps-table tbody tr td.fw-semibold").inner_text()
            assert name == "<script>alert(1)</script>"
        finally:
            browser.close()
    assert not errors, errors
