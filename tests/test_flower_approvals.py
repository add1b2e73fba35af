"""Approve / Reject on the Flower run page (``fluxcelery.contrib.flower_decisions``), over
HTTP against Flower's own application on a loopback port (``test_flower_tab.serve``).

Runs are in-process on a SQLite file: each test starts its own purchase, which suspends at
the ``manager`` approval (approvers ann and lee). A browser-like client keeps cookies and
reads the ``_xsrf`` token from the page's forms, as a browser would.
"""

from __future__ import annotations

import base64
import http.client
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

pytest.importorskip("flower")

from helpers import ZERO_BACKOFF, event_types, no_sleep
from test_flower_tab import NO_BROKER, serve

from fluxcelery import (
    ConcurrentUpdate,
    FluxEngine,
    InvalidTransition,
    SqlStorage,
    wait_for,
    workflow,
)
from fluxcelery.celery.app import build_app
from fluxcelery.contrib import flower as flux_flower
from fluxcelery.contrib import flower_decisions as fd
from fluxcelery.core.errors import (
    DefinitionChanged,
    NotAllowed,
    RunNotFound,
    StepTimeout,
    WorkflowNotFound,
)
from fluxcelery.settings import Settings

XSS_NAME = "<script>alert(1)</script>"
XSS_COMMENT = "<img src=x onerror=alert(2)>"


# -- a browser-like client -------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: str

    def header(self, name: str) -> str:
        return (self.headers.get(name.lower()) or [""])[0]


@dataclass
class Session:
    """Cookies kept across requests (no paths, no expiry); redirects are not followed."""

    port: int
    auth: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        auth: str | None = ...,  # type: ignore[assignment]
    ) -> Reply:
        sent = dict(headers or {})
        who = self.auth if auth is ... else auth
        if who is not None:
            sent["Authorization"] = "Basic " + base64.b64encode(who.encode()).decode()
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            got: dict[str, list[str]] = {}
            for name, value in resp.getheaders():
                got.setdefault(name.lower(), []).append(value)
            reply = Reply(resp.status, got, resp.read().decode())
        finally:
            conn.close()
        for line in reply.headers.get("set-cookie", []):
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if value in ("", '""'):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return reply

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, str], **kw: Any) -> Reply:
        return self.request("POST", path, form=form, **kw)


def token_of(body: str) -> str:
    match = re.search(r'name="_xsrf" value="([^"]+)"', body)
    assert match, "the page has no form with an _xsrf token"
    return match.group(1)


# -- the runs --------------------------------------------------------------------------------
@dataclass
class Shop:
    engine: FluxEngine
    capp: Any
    purchase: Any
    withdrawn: list[str]

    def waiting(self) -> str:
        """A new purchase, suspended at its ``manager`` approval."""
        run = self.engine.execute(self.purchase, {"item": f"chair-{uuid.uuid4().hex[:6]}"})
        assert run.status.value == "suspended"
        return run.id

    def status(self, run_id: str) -> str:
        state = self.engine.get(run_id)
        assert state is not None
        return state.status.value


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    db: Path = tmp_path_factory.mktemp("flower-approvals") / "flux.db"
    capp = build_app(Settings(broker_url=NO_BROKER, celery={"task_always_eager": True}))
    engine = FluxEngine(storage=SqlStorage(f"sqlite:///{db}"), backoff=ZERO_BACKOFF, sleep=no_sleep)
    withdrawn: list[str] = []
    purchase = (
        workflow(f"flowerapp-purchase-{uuid.uuid4().hex[:8]}")
        .step("submit", lambda ctx: "PR-1", compensate=lambda ctx: withdrawn.append(ctx.run_id))
        .approval("manager", approvers=["ann", "lee", XSS_NAME], timeout=3600)
        .step("place", lambda ctx: {"approved_by": ctx.results["manager"]["by"]})
    )
    engine.register(purchase)
    yield Shop(engine, capp, purchase, withdrawn)
    engine.close()


@pytest.fixture(scope="module")
def site(shop: Shop) -> Iterator[int]:
    with serve(shop.engine, shop.capp) as client:
        yield client.port


@pytest.fixture(scope="module")
def guarded(shop: Shop) -> Iterator[int]:
    """The same Flower with ``--basic-auth`` for ann, bob and lee."""
    with serve(shop.engine, shop.capp, basic_auth=["ann:pw-a", "bob:pw-b", "lee:pw-l"]) as c:
        yield c.port


def page(run_id: str) -> str:
    return f"/workflows/run/{run_id}"


def opened(port: int, run_id: str, auth: str | None = None) -> tuple[Session, str]:
    """A session that opened the run page: its cookies and the forms' token."""
    session = Session(port, auth=auth)
    reply = session.get(page(run_id))
    assert reply.status == 200, reply.body[:300]
    return session, token_of(reply.body)


# -- the page --------------------------------------------------------------------------------
def test_waiting_run_shows_the_request_and_the_forms(site: int, shop: Shop) -> None:
    run_id = shop.waiting()
    session = Session(site)
    reply = session.get(page(run_id))
    assert reply.status == 200
    body = reply.body
    assert 'id="flux-approval" data-step="manager"' in body
    approvers = re.findall(r'<span class="flux-approver">([^<]*)</span>', body)
    assert approvers == ["ann", "lee", "&lt;script&gt;alert(1)&lt;/script&gt;"]
    assert XSS_NAME not in body
    assert "Waiting since" in body and "(timeout 1 h)" in body
    state = shop.engine.get(run_id)
    assert state is not None and state.steps[1].wait_deadline is not None
    deadline = re.search(r'id="flux-approval-deadline" title="([^"]+)"', body)
    assert deadline and deadline.group(1)[:16] == state.steps[1].wait_deadline.isoformat()[:16]
    # Two forms to their own URLs, each with the token and (no login here) a name field.
    for verdict in ("approve", "reject"):
        form = re.search(
            rf'<form method="post" id="flux-{verdict}-form" action="([^"]+)">(.*?)</form>',
            body,
            re.S,
        )
        assert form and form.group(1) == f"/workflows/run/{run_id}/{verdict}"
        assert 'name="_xsrf"' in form.group(2) and 'name="by" required' in form.group(2)
    assert 'name="reason" required' in body
    assert "waiting for a decision" in body
    # The _xsrf cookie is SameSite=Lax: a cross-site POST does not carry it.
    xsrf = [c for c in reply.headers["set-cookie"] if c.startswith("_xsrf=")]
    assert xsrf and "samesite=lax" in xsrf[0].lower()


def test_a_run_waiting_for_a_signal_has_no_forms(site: int, shop: Shop) -> None:
    signal_wf = workflow(f"flowerapp-signal-{uuid.uuid4().hex[:6]}").step(
        "wait", lambda ctx: wait_for("approved")
    )
    run_id = shop.engine.execute(signal_wf).id
    body = Session(site).get(page(run_id)).body
    assert 'id="flux-approval"' not in body and "flux-approve-form" not in body
    assert "waiting for signal <code>approved</code>" in body


# -- deciding ----------------------------------------------------------------------------------
def test_approve_as_an_allowed_user_continues_the_run(site: int, shop: Shop) -> None:
    run_id = shop.waiting()
    session, token = opened(site, run_id)
    reply = session.post(
        f"{page(run_id)}/approve", {"_xsrf": token, "by": "ann", "comment": "budget checked"}
    )
    assert reply.status == 303, reply.body[:300]
    assert reply.header("location") == page(run_id)
    notice = [c for c in reply.headers["set-cookie"] if c.startswith("flux_notice=")]
    assert notice and {"httponly", "samesite=lax", f"path={page(run_id)}"} <= {
        part.strip().lower() for part in notice[0].split(";")
    }
    assert shop.status(run_id) == "completed"
    state = shop.engine.get(run_id)
    assert state is not None
    assert state.step("manager").output["by"] == "ann"
    assert state.step("place").output == {"approved_by": "ann"}
    decided = shop.engine.traces(run_id=run_id, type="approval:decided")
    assert [(e.meta["decision"], e.meta["by"], e.meta["comment"]) for e in decided] == [
        ("approved", "ann", "budget checked")
    ]
    # Get after the redirect: the one-time notice, then the decision in the page.
    after = session.get(reply.header("location"))
    assert after.status == 200
    assert re.search(r'id="flux-notice" data-kind="success"[^>]*>Approved by ann\.', after.body)
    assert "The run is completed." in after.body
    assert 'id="flux-approval"' not in after.body  # nothing to decide any more
    assert 'data-step="manager" data-decision="approved"' in after.body
    assert '<strong class="flux-decided-by">ann</strong>' in after.body
    assert "budget checked" in after.body
    again = session.get(page(run_id))
    assert 'id="flux-notice"' not in again.body  # shown once


def test_a_user_outside_the_approvers_gets_403_and_the_run_still_waits(
    site: int, shop: Shop
) -> None:
    run_id = shop.waiting()
    session, token = opened(site, run_id)
    reply = session.post(
        f"{page(run_id)}/approve", {"_xsrf": token, "by": "bob", "comment": "looks fine"}
    )
    assert reply.status == 403
    assert "Not allowed: &#x27;bob&#x27; may not decide approval step" in reply.body
    assert 'data-kind="danger"' in reply.body
    # The run page again, with the forms and what was typed.
    assert 'id="flux-approval"' in reply.body and 'value="bob"' in reply.body
    assert ">looks fine</textarea>" in reply.body
    assert shop.status(run_id) == "suspended"
    assert "approval:decided" not in event_types(shop.engine, run_id)


def test_reject_fails_the_run_with_the_reason(site: int, shop: Shop) -> None:
    run_id = shop.waiting()
    session, token = opened(site, run_id)
    missing = session.post(f"{page(run_id)}/reject", {"_xsrf": token, "by": "lee"})
    assert missing.status == 400 and "Give a reason to reject" in missing.body
    assert shop.status(run_id) == "suspended"

    reply = session.post(
        f"{page(run_id)}/reject", {"_xsrf": token, "by": "lee", "reason": "over budget"}
    )
    assert reply.status == 303
    state = shop.engine.get(run_id)
    assert state is not None
    assert state.status.value == "rolled_back"  # submit was compensated
    assert state.error == "Rejected: over budget"
    assert state.step("manager").error == "Rejected: over budget"
    assert state.step("manager").attempts == 1  # not retried
    assert run_id in shop.withdrawn
    after = session.get(page(run_id)).body
    assert "Rejected by lee." in after and "The run is rolled back." in after
    assert 'data-step="manager" data-decision="rejected"' in after


def test_a_second_decision_is_409_and_changes_nothing(
    site: int, shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = shop.waiting()
    session, token = opened(site, run_id)
    first = session.post(f"{page(run_id)}/approve", {"_xsrf": token, "by": "ann"})
    assert first.status == 303
    late = session.post(f"{page(run_id)}/reject", {"_xsrf": token, "by": "lee", "reason": "no"})
    assert late.status == 409
    assert "This run is not waiting for a decision" in late.body
    assert shop.status(run_id) == "completed"
    assert event_types(shop.engine, run_id).count("approval:decided") == 1

    # Two at once: the one that loses the guarded write is told so.
    other = shop.waiting()
    session, token = opened(site, other)

    def lost_race(*args: Any, **kwargs: Any) -> Any:
        raise ConcurrentUpdate(f"Run {other} was changed concurrently; approval not applied")

    monkeypatch.setattr(shop.engine, "approve", lost_race)
    reply = session.post(f"{page(other)}/approve", {"_xsrf": token, "by": "ann"})
    assert reply.status == 409 and "Someone else changed this run" in reply.body
    assert shop.status(other) == "suspended"


def test_names_and_comments_are_escaped(site: int, shop: Shop) -> None:
    run_id = shop.waiting()
    session, token = opened(site, run_id)
    reply = session.post(
        f"{page(run_id)}/approve", {"_xsrf": token, "by": XSS_NAME, "comment": XSS_COMMENT}
    )
    assert reply.status == 303
    body = session.get(page(run_id)).body
    assert XSS_NAME not in body and XSS_COMMENT not in body
    assert "Approved by &lt;script&gt;alert(1)&lt;/script&gt;." in body
    assert "&lt;img src=x onerror=alert(2)&gt;" in body
    refused = session.post(
        f"{page(shop.waiting())}/approve",
        {"_xsrf": token, "by": "<b>eve</b>", "comment": XSS_COMMENT},
    )
    assert refused.status == 403
    assert "<b>eve</b>" not in refused.body and XSS_COMMENT not in refused.body


def test_a_missing_name_is_400_and_a_get_goes_back_to_the_page(site: int, shop: Shop) -> None:
    run_id = shop.waiting()
    session, token = opened(site, run_id)
    reply = session.post(f"{page(run_id)}/approve", {"_xsrf": token, "comment": "ok"})
    assert reply.status == 400 and "Give your name" in reply.body
    assert shop.status(run_id) == "suspended"
    moved = session.get(f"{page(run_id)}/approve")
    assert moved.status == 302 and moved.header("location") == page(run_id)
    gone = session.post("/workflows/run/no-such-run/approve", {"_xsrf": token, "by": "ann"})
    assert gone.status == 404


# -- cross-site requests -----------------------------------------------------------------------
def test_a_post_without_the_xsrf_token_is_refused(site: int, shop: Shop) -> None:
    run_id = shop.waiting()
    session, token = opened(site, run_id)
    url = f"{page(run_id)}/approve"
    no_token = session.post(url, {"by": "ann"})
    assert no_token.status == 403 and "_xsrf" in no_token.body
    wrong = session.post(
        url, {"by": "ann", "_xsrf": token_of(Session(site).get(page(run_id)).body)}
    )
    assert wrong.status == 403  # another session's token
    no_cookie = Session(site).post(url, {"by": "ann", "_xsrf": token})
    assert no_cookie.status == 403
    assert shop.status(run_id) == "suspended"
    assert "approval:decided" not in event_types(shop.engine, run_id)


def test_a_cross_origin_post_is_refused_even_with_the_token(site: int, shop: Shop) -> None:
    run_id = shop.waiting()
    session, token = opened(site, run_id)
    url = f"{page(run_id)}/approve"
    form = {"_xsrf": token, "by": "ann"}
    # Another port of the same host is same-site, not same-origin.
    for headers in (
        {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ):
        reply = session.post(url, form, headers=headers)
        assert reply.status == 403, headers
        assert "request refused" in reply.body
    assert shop.status(run_id) == "suspended"
    ok = session.post(
        url, form, headers={"Sec-Fetch-Site": "same-origin", "Origin": f"http://127.0.0.1:{site}"}
    )
    assert ok.status == 303 and shop.status(run_id) == "completed"


def test_the_token_is_checked_even_when_the_app_has_xsrf_cookies_off(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_for = flux_flower._settings_for

    def without_xsrf(options: Any) -> dict[str, Any]:
        return {**settings_for(options), "xsrf_cookies": False}

    monkeypatch.setattr(flux_flower, "_settings_for", without_xsrf)
    with serve(shop.engine, shop.capp) as client:
        run_id = shop.waiting()
        session, token = opened(client.port, run_id)
        refused = session.post(f"{page(run_id)}/approve", {"by": "ann"})
        assert refused.status == 403 and shop.status(run_id) == "suspended"
        ok = session.post(f"{page(run_id)}/approve", {"by": "ann", "_xsrf": token})
        assert ok.status == 303 and shop.status(run_id) == "completed"


# -- Flower's authentication and options -----------------------------------------------------
def test_with_basic_auth_the_login_decides(guarded: int, shop: Shop) -> None:
    run_id = shop.waiting()
    assert Session(guarded).get(page(run_id)).status == 401
    session, token = opened(guarded, run_id, auth="bob:pw-b")
    body = session.get(page(run_id)).body
    assert 'name="by"' not in body  # the login is the name
    assert "You decide as <strong>bob</strong>, who is not among the approvers" in body

    url = f"{page(run_id)}/approve"
    unauthenticated = session.post(url, {"_xsrf": token}, auth=None)
    assert unauthenticated.status == 401
    assert unauthenticated.header("www-authenticate") == 'Basic realm="flower"'
    wrong_password = session.post(url, {"_xsrf": token}, auth="ann:nope")
    assert wrong_password.status == 401
    # A basic-auth browser sends its credentials cross-site too: the token still counts.
    assert session.post(url, {"by": "ann"}).status == 403
    as_bob = session.post(url, {"_xsrf": token, "by": "ann"})  # "by" is ignored: bob decides
    assert as_bob.status == 403 and "&#x27;bob&#x27; may not decide" in as_bob.body
    assert shop.status(run_id) == "suspended"

    ann = Session(guarded, auth="ann:pw-a", cookies=dict(session.cookies))
    assert "You decide as <strong>ann</strong>." in ann.get(page(run_id)).body
    reply = ann.post(url, {"_xsrf": token, "by": "lee", "comment": "mine"})
    assert reply.status == 303
    state = shop.engine.get(run_id)
    assert state is not None and state.step("manager").output["by"] == "ann"


def test_read_only_flower_shows_the_request_without_forms(shop: Shop) -> None:
    with serve(shop.engine, shop.capp, read_only=True) as client:
        run_id = shop.waiting()
        session = Session(client.port)
        body = session.get(page(run_id)).body
        assert 'id="flux-approval"' in body and "flux-approve-form" not in body
        assert "Flower runs read-only" in body
        # A token from the page's own xsrf cookie: refused all the same.
        token = session.cookies["_xsrf"]
        reply = session.post(f"{page(run_id)}/approve", {"_xsrf": token, "by": "ann"})
        assert reply.status == 403 and "Read only mode is enabled" in reply.body
        assert shop.status(run_id) == "suspended"


def test_forms_follow_the_url_prefix(shop: Shop) -> None:
    with serve(shop.engine, shop.capp, url_prefix="flower") as client:
        run_id = shop.waiting()
        session = Session(client.port)
        body = session.get(f"/flower{page(run_id)}").body
        action = f'action="/flower/workflows/run/{run_id}/approve"'
        assert action in body
        reply = session.post(
            f"/flower{page(run_id)}/approve", {"_xsrf": token_of(body), "by": "lee"}
        )
        assert reply.status == 303 and reply.header("location") == f"/flower{page(run_id)}"
        assert "Approved by lee." in session.get(f"/flower{page(run_id)}").body


# -- pure pieces ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("site_header", "origin", "refused"),
    [
        (None, None, False),  # not a browser (curl, the tests)
        ("same-origin", None, False),
        ("same-origin", "http://127.0.0.1:5555", False),
        ("same-site", "http://127.0.0.1:8000", True),
        ("cross-site", "http://evil.example", True),
        ("none", None, True),  # typed or bookmarked: no form sends it
        (None, "http://127.0.0.1:5555", False),
        (None, "http://127.0.0.1:8000", True),
        (None, "http://evil.example", True),
        (None, "null", True),
    ],
)
def test_cross_site(site_header: str | None, origin: str | None, refused: bool) -> None:
    assert (fd.cross_site(site_header, origin, "127.0.0.1:5555") is not None) is refused


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Basic " + base64.b64encode(b"ann:pw").decode(), "ann"),
        ("basic " + base64.b64encode(b"ann:p:w").decode(), "ann"),
        ("Basic " + base64.b64encode(b":pw").decode(), None),
        ("Basic " + base64.b64encode(b"nopassword").decode(), None),
        ("Basic not-base64!", None),
        ("Bearer abc", None),
        ("", None),
    ],
)
def test_basic_user(header: str, name: str | None) -> None:
    assert fd.basic_user(header) == name


@pytest.mark.parametrize(
    ("exc", "status", "start"),
    [
        (NotAllowed("'bob' may not decide"), 403, "Not allowed: "),
        (InvalidTransition("completed", "running"), 409, "This run is not waiting"),
        (ConcurrentUpdate("raced"), 409, "Someone else changed this run"),
        (DefinitionChanged("changed."), 409, "changed."),
        (WorkflowNotFound("purchase", []), 409, "Unknown workflow"),
        (RunNotFound("r1"), 404, "Unknown run"),
        (ValueError("approve: 'by' must name who decides"), 400, "approve: 'by'"),
        (StepTimeout("late"), 400, "late"),
    ],
)
def test_refusal(exc: Exception, status: int, start: str) -> None:
    got = fd.refusal(exc)
    assert got is not None and got[0] == status and got[1].startswith(start), got


@pytest.mark.parametrize(
    ("verdict", "by", "text", "problem"),
    [
        ("approve", "ann", "", None),
        ("approve", "ann", "x" * fd.MAX_TEXT, None),
        ("reject", "ann", "too much", None),
        ("approve", "", "ok", "Give your name"),
        ("approve", "a" * (fd.MAX_BY + 1), "", "Your name is longer"),
        ("reject", "ann", "", "Give a reason to reject"),
        ("approve", "ann", "x" * (fd.MAX_TEXT + 1), "The comment is longer"),
        ("reject", "ann", "x" * (fd.MAX_TEXT + 1), "The reason is longer"),
    ],
)
def test_form_problem(verdict: str, by: str, text: str, problem: str | None) -> None:
    got = fd.form_problem(verdict, by, text)
    assert (got is None) if problem is None else (got or "").startswith(problem), got


def test_refusal_of_a_bug_is_none() -> None:
    assert fd.refusal(KeyError("bug")) is None


STEP = {"name": "manager", "index": 1, "started_at": "2026-01-01T10:00:00+00:00"}


@pytest.mark.parametrize(
    ("requested", "definition", "approvers", "anyone", "since", "deadline"),
    [
        (
            {"ts": "2026-01-01T10:00:01+00:00", "meta": {"approvers": ["ann"], "timeout": 60}},
            {"approvers": "approvers"},
            ["ann"],
            False,
            "2026-01-01T10:00:01+00:00",
            "2026-01-01T10:01:01+00:00",
        ),
        (  # the callable failed when requested: not listed
            {"ts": "2026-01-01T10:00:01+00:00", "meta": {"approvers": None, "timeout": None}},
            {"approvers": "approvers"},
            None,
            False,
            "2026-01-01T10:00:01+00:00",
            None,
        ),
        (  # no approvers: anyone
            {"ts": "2026-01-01T10:00:01+00:00", "meta": {"approvers": None, "timeout": None}},
            {"approvers": None},
            None,
            True,
            "2026-01-01T10:00:01+00:00",
            None,
        ),
        (None, {"approvers": ["lee"]}, ["lee"], False, "2026-01-01T10:00:00+00:00", None),
        (None, None, None, False, "2026-01-01T10:00:00+00:00", None),
    ],
)
def test_pending_request(
    requested: dict[str, Any] | None,
    definition: dict[str, Any] | None,
    approvers: list[str] | None,
    anyone: bool,
    since: str,
    deadline: str | None,
) -> None:
    req = fd.pending_request(STEP, requested, definition)
    assert (req.step, req.index) == ("manager", 1)
    assert (req.approvers, req.anyone, req.since, req.deadline) == (
        approvers,
        anyone,
        since,
        deadline,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "\u2014"),
        (45, "45 s"),
        (90.5, "90.5 s"),
        (3600, "1 h"),
        (5400, "1 h 30 min"),
        (86400, "1 day"),
        (7 * 86400, "7 days"),
        (90000, "1 day 1 h"),
    ],
)
def test_describe_seconds(seconds: float | None, text: str) -> None:
    assert fd.describe_seconds(seconds) == text


def test_may_decide() -> None:
    req = fd.pending_request(STEP, {"meta": {"approvers": ["ann"]}}, None)
    assert fd.ApprovalView(req, decider="ann").may_decide is True
    assert fd.ApprovalView(req, decider="bob").may_decide is False
    assert fd.ApprovalView(req, decider=None).may_decide is None
    anyone = fd.pending_request(STEP, None, {"approvers": None})
    assert fd.ApprovalView(anyone, decider="bob").may_decide is True
