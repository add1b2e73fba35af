"""Approve / Reject on the Flower run page in a real headless Chromium (Debian's
/usr/bin/chromium via Playwright), on in-process runs in a SQLite file: a person approves
with a comment and sees the decision; a rejection needs a reason; and a page on another
origin (a small HTTP server on another port of 127.0.0.1) that auto-submits a form to the
approve URL is refused, even when its script copies the ``_xsrf`` cookie into the form, and
the run still waits.

The screenshots docs/approvals.md shows come from scripts/flower_approval_screenshots.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flower")

from helpers import ZERO_BACKOFF, event_types, no_sleep
from test_browser_flower import VIEWPORT, _need_browser, browser, page  # noqa: F401
from test_flower_tab import NO_BROKER, Client, serve

from fluxcelery import FluxEngine, SqlStorage, workflow
from fluxcelery.celery.app import build_app
from fluxcelery.settings import Settings

pytestmark = pytest.mark.browser


@dataclass
class Purchases:
    engine: FluxEngine
    capp: Any
    wf: Any

    def waiting(self) -> str:
        run = self.engine.execute(self.wf, {"request_id": uuid.uuid4().hex[:8], "amount": 640})
        assert run.status.value == "suspended"
        return run.id

    def status(self, run_id: str) -> str:
        state = self.engine.get(run_id)
        assert state is not None
        return state.status.value


@pytest.fixture(scope="module")
def purchases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Purchases]:
    _need_browser()
    db: Path = tmp_path_factory.mktemp("flower-approval-browser") / "flux.db"
    capp = build_app(Settings(broker_url=NO_BROKER, celery={"task_always_eager": True}))
    engine = FluxEngine(storage=SqlStorage(f"sqlite:///{db}"), backoff=ZERO_BACKOFF, sleep=no_sleep)
    wf = (
        workflow(f"acme-purchase-{uuid.uuid4().hex[:6]}")
        .step("submit", lambda ctx: {"request": ctx.input["request_id"]}, compensate=lambda c: 1)
        .approval("manager", approvers=["ann", "lee"], timeout=7 * 24 * 3600)
        .commit("place-order", lambda ctx: {"po": f"PO-{ctx.input['request_id']}"})
    )
    engine.register(wf)
    yield Purchases(engine, capp, wf)
    engine.close()


@pytest.fixture(scope="module")
def site(purchases: Purchases) -> Iterator[Client]:
    with serve(purchases.engine, purchases.capp) as client:
        yield client


def test_approve_with_a_comment_then_see_the_decision(
    page: Any,  # noqa: F811
    site: Client,
    purchases: Purchases,
) -> None:
    run_id = purchases.waiting()
    page.goto(f"{site.base}/workflows/run/{run_id}")
    card = page.locator("#flux-approval")
    assert card.is_visible()
    assert page.locator("#flux-approval-step").inner_text() == "manager"
    assert page.locator("#flux-approvers .flux-approver").all_inner_texts() == ["ann", "lee"]
    assert "(timeout 7 days)" in page.locator("#flux-approval-deadline").inner_text()
    row = page.locator('#flux-steps-table tr[data-step="manager"]')
    assert "waiting for a decision" in row.inner_text()

    page.fill("#flux-approve-by", "ann")
    page.fill("#flux-approve-comment", "Budget checked <b>ok</b>")
    page.click("#flux-approve")
    page.wait_for_url(f"{site.base}/workflows/run/{run_id}")  # Post/Redirect/Get
    notice = page.locator("#flux-notice")
    assert notice.inner_text() == "Approved by ann. The run is completed."
    assert page.locator("#flux-run-status").inner_text() == "completed"
    assert page.locator("#flux-approval").count() == 0
    decided = page.locator('#flux-decided li[data-step="manager"]')
    assert decided.get_attribute("data-decision") == "approved"
    assert decided.locator(".flux-decided-by").inner_text() == "ann"
    assert decided.locator(".flux-decided-comment").inner_text() == "Budget checked <b>ok</b>"
    assert "approved by ann" in row.locator(".flux-decision").inner_text()
    state = purchases.engine.get(run_id)
    assert state is not None and state.step("manager").output["comment"] == (
        "Budget checked <b>ok</b>"
    )
    # A reload is a GET of the run page: nothing is sent again, the notice is gone.
    page.reload()
    assert page.locator("#flux-notice").count() == 0
    assert event_types(purchases.engine, run_id).count("approval:decided") == 1


def test_reject_needs_a_reason_and_fails_the_run(
    page: Any,  # noqa: F811
    site: Client,
    purchases: Purchases,
) -> None:
    run_id = purchases.waiting()
    page.goto(f"{site.base}/workflows/run/{run_id}")
    page.fill("#flux-reject-by", "lee")
    page.click("#flux-reject")  # the reason is required: the browser does not send it
    page.wait_for_timeout(300)
    assert page.url == f"{site.base}/workflows/run/{run_id}"
    assert purchases.status(run_id) == "suspended"

    page.fill("#flux-reject-reason", "over the team budget")
    page.click("#flux-reject")
    page.wait_for_url(f"{site.base}/workflows/run/{run_id}")
    assert page.locator("#flux-notice").inner_text() == "Rejected by lee. The run is rolled back."
    assert page.locator("#flux-run-error").inner_text() == "Rejected: over the team budget"
    row = page.locator('#flux-steps-table tr[data-step="manager"]')
    assert row.locator(".badge").first.inner_text() == "failed"
    assert page.locator('#flux-steps-table tr[data-step="submit"] .badge').inner_text() == (
        "compensated"
    )


# -- a page on another origin ----------------------------------------------------------------
ATTACK = """<!doctype html>
<html><head><title>You won a prize</title></head><body>
<h1>Claim your prize</h1>
<form id="f" method="post" action="{action}">
  <input name="by" value="ann"><input name="comment" value="approved from elsewhere">
  <input type="hidden" name="_xsrf" id="token">
</form>
<script>
  // Cookies do not keep ports apart: this page can read Flower's _xsrf cookie.
  var found = document.cookie.match(/(?:^|; )_xsrf=([^;]*)/);
  var token = document.getElementById("token");
  if ({steal} && found) {{ token.value = decodeURIComponent(found[1]); }} else {{ token.remove(); }}
  document.getElementById("f").submit();
</script>
</body></html>
"""


@contextmanager
def attacker(pages: dict[str, str]) -> Iterator[str]:
    """Serve ``pages`` (path -> HTML) from 127.0.0.1 on another free port; its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write((body or "not here").encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="attacker", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_form_posted_from_another_origin_is_refused(
    browser: Any,  # noqa: F811
    site: Client,
    purchases: Purchases,
) -> None:
    run_id = purchases.waiting()
    action = f"{site.base}/workflows/run/{run_id}/approve"
    pages = {
        "/plain": ATTACK.format(action=action, steal="false"),
        "/steal": ATTACK.format(action=action, steal="true"),
    }
    context = browser.new_context(viewport=VIEWPORT)
    try:
        victim = context.new_page()
        # The victim has the run page open: the browser holds Flower's _xsrf cookie.
        victim.goto(f"{site.base}/workflows/run/{run_id}")
        assert "_xsrf" in {c["name"] for c in context.cookies(site.base)}
        with attacker(pages) as evil:
            assert evil != site.base and evil.startswith("http://127.0.0.1:")
            for path in ("/plain", "/steal"):
                tab = context.new_page()
                with tab.expect_response(lambda r: r.url == action) as posted:
                    tab.goto(evil + path)
                response = posted.value
                sent = response.request.post_data or ""
                assert response.request.method == "POST" and "by=ann" in sent
                if path == "/steal":  # the token really was copied from the cookie
                    assert "_xsrf=2%7C" in sent, sent
                else:
                    assert "_xsrf" not in sent
                assert response.status == 403, (path, response.status)
                tab.wait_for_load_state()
                assert "Cross-site request refused (Sec-Fetch-Site: same-site)" in (tab.content())
                tab.close()
        assert purchases.status(run_id) == "suspended"
        assert "approval:decided" not in event_types(purchases.engine, run_id)

        # The same browser, from the page itself: accepted.
        victim.reload()
        victim.fill("#flux-approve-by", "lee")
        victim.click("#flux-approve")
        victim.wait_for_url(f"{site.base}/workflows/run/{run_id}")
        assert victim.locator("#flux-notice").inner_text().startswith("Approved by lee.")
        assert purchases.status(run_id) == "completed"
    finally:
        context.close()
