"""Approve / Reject on the Flower run page (SPEC sections 9 and 16).

When a run waits on an approval step, its page shows the request (the step, who may decide,
since when, the deadline) and two forms that POST to ``/workflows/run/<run_id>/approve`` and
``/workflows/run/<run_id>/reject``. The handlers call ``engine.approve`` / ``engine.reject``
on Flower's executor, then redirect to the run page (Post/Redirect/Get) with a one-time
notice; a refused decision (``NotAllowed`` 403, ``InvalidTransition`` or
``ConcurrentUpdate`` 409, a missing reason 400) is shown on the run page and nothing changed.

Who decides: the name Flower authenticated (the OAuth e-mail with ``--auth``, else the user
name of ``--basic-auth``); without authentication a "your name" field, which is a claim
nobody checks. Every POST must be authenticated like Flower's pages, same-origin
(``Sec-Fetch-Site`` / ``Origin``) and carry tornado's ``_xsrf`` token matching its cookie,
whether or not auth is on and whatever ``xsrf_cookies`` says (Flower checks the token only
with OAuth, and nothing without auth). ``--read_only`` refuses decisions (403).

The handler is a mixin: the run page's handler (``flower.RunView``) supplies ``engine``,
``read``, ``checked_run_id`` and ``show(run_id, notice, form)``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import tornado.web
from flower.views import BaseHandler
from tornado.web import HTTPError

from ..core.errors import (
    ConcurrentUpdate,
    DefinitionChanged,
    FluxError,
    InvalidTransition,
    NotAllowed,
    RunNotFound,
    WorkflowNotFound,
)
from ..engine import FluxEngine
from ..ops import trace_rows

__all__ = [
    "ApprovalRequest",
    "ApprovalView",
    "DecisionForms",
    "Notice",
    "Outcome",
    "basic_user",
    "cross_site",
    "decide",
    "describe_seconds",
    "form_problem",
    "pending_request",
    "read_request",
    "refusal",
]

VERDICTS = ("approve", "reject")
#: Longest comment or reason the forms take (characters).
MAX_TEXT = 2000
#: Longest name the "your name" field takes (``engine.approve`` refuses longer).
MAX_BY = 200
#: The signed, one-time cookie that carries a decision's notice across the redirect.
NOTICE_COOKIE = "flux_notice"
NOTICE_MAX_AGE_DAYS = 1 / 24 / 12  # 5 minutes


@dataclass(frozen=True)
class ApprovalRequest:
    """An approval the run waits for, as the run page shows it."""

    step: str
    index: int
    #: Who may decide; None when not known (see ``anyone``).
    approvers: list[str] | None
    #: The step has no approvers: anyone who can open the page may decide.
    anyone: bool
    #: When the approval was requested (ISO 8601), and its timeout in seconds.
    since: str | None
    timeout: float | None
    #: ``since + timeout``: after it the step fails (``StepTimeout``).
    deadline: str | None

    @property
    def timeout_text(self) -> str:
        """The timeout as ``7 days``, ``1 h 30 min``, ``45 s``."""
        return describe_seconds(self.timeout)


@dataclass(frozen=True)
class Notice:
    """A one-line message at the top of the run page: ``success`` or ``danger``."""

    kind: str
    text: str


@dataclass(frozen=True)
class Outcome:
    """What a decision POST did: ``status`` 303 when it landed, else the refusal's."""

    status: int
    notice: Notice


@dataclass(frozen=True)
class ApprovalView:
    """Everything ``flux_approval.html`` shows."""

    request: ApprovalRequest | None = None
    #: Step index -> its decision ``{decision, by, comment, at}`` (``ctx.results``).
    decisions: dict[int, dict[str, Any]] = field(default_factory=dict)
    notice: Notice | None = None
    #: The authenticated name decisions are made as; None: the forms ask for a name.
    decider: str | None = None
    read_only: bool = False
    #: The values the forms had when a decision was refused (shown again).
    form: Mapping[str, str] = field(default_factory=dict)

    @property
    def may_decide(self) -> bool | None:
        """Whether ``decider`` is among the approvers (None: not known before trying)."""
        req = self.request
        if req is None or self.decider is None:
            return None
        if req.anyone:
            return True
        return None if req.approvers is None else self.decider in req.approvers


# -- pure decisions ---------------------------------------------------------------------------
def describe_seconds(seconds: float | None) -> str:
    """``7 days``, ``1 day 2 h``, ``1 h 30 min``, ``90 s``; an em dash for None."""
    if seconds is None:
        return "\u2014"
    total = round(seconds)
    if total < 120:
        return f"{seconds:g} s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = []
    if days:
        parts.append(f"{days} day{'' if days == 1 else 's'}")
    if hours:
        parts.append(f"{hours} h")
    if minutes and not days:
        parts.append(f"{minutes} min")
    return " ".join(parts) or f"{total} s"


def pending_request(
    step: Mapping[str, Any],
    requested: Mapping[str, Any] | None,
    definition: Mapping[str, Any] | None,
) -> ApprovalRequest:
    """The request of a suspended approval ``step`` (a ``run_detail`` row) from its latest
    ``approval:requested`` event (a trace row: ``meta.approvers`` were evaluated when the
    approval was requested) and, when the event is missing or listed nobody, the step's
    definition (a ``describe()`` row; a callable's name there means "not listed")."""
    meta = (requested or {}).get("meta") or {}
    approvers = meta.get("approvers")
    names = [str(n) for n in approvers] if isinstance(approvers, list) else None
    anyone = False
    if names is None and definition is not None:
        described = definition.get("approvers")
        if isinstance(described, list):
            names = [str(n) for n in described]
        anyone = described is None
    timeout = meta.get("timeout")
    timeout = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else None
    since = (requested or {}).get("ts") or step.get("started_at")
    deadline = None
    if since and timeout is not None:
        try:
            at = datetime.fromisoformat(str(since).replace("Z", "+00:00"))
            deadline = (at + timedelta(seconds=timeout)).isoformat()
        except (ValueError, OverflowError):
            deadline = None
    return ApprovalRequest(
        step=str(step["name"]),
        index=int(step["index"]),
        approvers=names,
        anyone=anyone,
        since=str(since) if since else None,
        timeout=timeout,
        deadline=deadline,
    )


def refusal(exc: BaseException) -> tuple[int, str] | None:
    """The HTTP status and message for a decision the engine refused (nothing changed);
    None for an error that is a bug (a 500)."""
    if isinstance(exc, NotAllowed):
        return 403, f"Not allowed: {exc}"
    if isinstance(exc, InvalidTransition):
        return 409, (
            "This run is not waiting for a decision (any more): it was decided, cancelled or "
            f"timed out meanwhile. Nothing changed. ({exc})"
        )
    if isinstance(exc, ConcurrentUpdate):
        return 409, (
            "Someone else changed this run at the same moment; your decision was not applied. "
            "Reload the page to see what happened."
        )
    if isinstance(exc, DefinitionChanged):
        return 409, f"{exc} Nothing changed (decide with the CLI and --force)."
    if isinstance(exc, WorkflowNotFound):
        return 409, (
            f"{exc}. This Flower does not know the workflow, so it cannot continue the run: "
            "set FLUX_WORKFLOWS for it, or decide with the CLI. Nothing changed."
        )
    if isinstance(exc, RunNotFound):
        return 404, f"Unknown run: {exc}"
    if isinstance(exc, (ValueError, FluxError)):
        return 400, f"{exc} Nothing changed."
    return None


def form_problem(verdict: str, by: str, text: str) -> str | None:
    """What is wrong with a decision form (None: nothing): ``by`` is who decides, ``text``
    the comment (approve) or the reason (reject)."""
    if not by:
        return "Give your name: it is recorded as who decided."
    if len(by) > MAX_BY:
        return f"Your name is longer than {MAX_BY} characters."
    if verdict == "reject" and not text:
        return "Give a reason to reject: it becomes the step's error."
    if len(text) > MAX_TEXT:
        what = "comment" if verdict == "approve" else "reason"
        return f"The {what} is longer than {MAX_TEXT} characters."
    return None


def cross_site(sec_fetch_site: str | None, origin: str | None, host: str) -> str | None:
    """Why a POST looks cross-site (None: same origin, or no browser headers at all).
    ``Sec-Fetch-Site`` must be ``same-origin`` (another port of the same host is
    ``same-site`` and refused); without it, an ``Origin`` must name this host and port."""
    if sec_fetch_site:
        if sec_fetch_site != "same-origin":
            return f"Cross-site request refused (Sec-Fetch-Site: {sec_fetch_site})"
        return None
    if origin is not None and urlparse(origin).netloc.lower() != host.lower():
        return f"Cross-origin request refused (Origin: {origin})"
    return None


def basic_user(authorization: str) -> str | None:
    """The user name of a ``Basic`` ``Authorization`` header (None for anything else)."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, _ = text.partition(":")
    return name.strip() or None if sep else None


# -- I/O (on Flower's executor) ---------------------------------------------------------------
def read_request(engine: FluxEngine, detail: Mapping[str, Any]) -> ApprovalRequest | None:
    """The approval a run (``ops.run_detail``) waits for; None when it waits for none."""
    if detail.get("status") != "suspended":
        return None
    index = detail.get("current_step")
    step = next((s for s in detail["steps"] if s["index"] == index and s.get("item") is None), None)
    if step is None or step["kind"] != "approval" or step["status"] != "suspended":
        return None
    events = engine.traces(
        run_id=detail["id"], type="approval:requested", newest_first=True, limit=20
    )
    rows = trace_rows([e for e in events if e.step == step["name"]][:1], engine)
    defined = (detail.get("definition") or {}).get("steps") or []
    match = [d for d in defined if d.get("index") == index and d.get("name") == step["name"]]
    return pending_request(step, rows[0] if rows else None, match[0] if match else None)


def decisions_of(detail: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Step index -> decision, for the run's decided approval steps (their output)."""
    out: dict[int, dict[str, Any]] = {}
    for s in detail["steps"]:
        result = s.get("output")
        if (
            s.get("kind") == "approval"
            and isinstance(result, dict)
            and result.get("decision") in ("approved", "rejected")
        ):
            out[int(s["index"])] = {**result, "step": s["name"]}
    return out


def decide(engine: FluxEngine, run_id: str, verdict: str, by: str, text: str | None) -> Outcome:
    """Approve (``text``: the comment) or reject (``text``: the reason) as ``by``."""
    try:
        if verdict == "approve":
            engine.approve(run_id, by, text)
        else:
            engine.reject(run_id, by, text or "")
    except Exception as exc:
        refused = refusal(exc)
        if refused is None:
            raise
        return Outcome(refused[0], Notice("danger", refused[1]))
    state = engine.get(run_id)
    now = f" The run is {state.status.value.replace('_', ' ')}." if state else ""
    done = "Approved" if verdict == "approve" else "Rejected"
    return Outcome(303, Notice("success", f"{done} by {by}.{now}"))


# -- the handler ------------------------------------------------------------------------------
def decider_name(handler: Any) -> str | None:
    """Who Flower authenticated: the OAuth e-mail, else the basic-auth user name."""
    options = handler.application.options
    user = handler.current_user
    if options.auth and isinstance(user, str) and user:
        return user
    if options.basic_auth:
        return basic_user(handler.request.headers.get("Authorization", ""))
    return None


def take_notice(handler: Any, run_id: str) -> Notice | None:
    """The notice a decision left for this run's page (read once, then cleared)."""
    raw = handler.get_signed_cookie(NOTICE_COOKIE, max_age_days=NOTICE_MAX_AGE_DAYS)
    if raw is None:
        return None
    handler.clear_cookie(NOTICE_COOKIE, path=handler.reverse_url("flux-run", run_id))
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("run") != run_id:
        return None
    return Notice(str(value.get("kind", "success")), str(value.get("text", "")))


async def approval_view(
    handler: Any,
    engine: FluxEngine,
    detail: Mapping[str, Any],
    notice: Notice | None = None,
    form: Mapping[str, str] | None = None,
) -> ApprovalView:
    """What the run page shows about approvals, for the user of ``handler``."""
    request = None
    if detail.get("status") == "suspended":
        request = await handler.read("show approval", read_request, engine, detail)
    return ApprovalView(
        request=request,
        decisions=decisions_of(detail),
        notice=notice,
        decider=decider_name(handler),
        read_only=bool(handler.application.options.read_only),
        form=dict(form or {}),
    )


class DecisionForms(BaseHandler):
    """``POST /workflows/run/<run_id>/(approve|reject)``: form fields ``_xsrf``, ``by``
    (only without authentication), ``comment`` (approve) or ``reason`` (reject, required).
    A GET of these URLs redirects to the run page."""

    def check_xsrf_cookie(self) -> None:
        """Authenticated like Flower's pages (401 on bad basic-auth credentials, 403 without
        an OAuth login), same-origin, and the ``_xsrf`` token: all three, always."""
        if not self.current_user:
            raise HTTPError(403, "Log in to decide")
        refused = cross_site(
            self.request.headers.get("Sec-Fetch-Site"),
            self.request.headers.get("Origin"),
            self.request.host,
        )
        if refused:
            raise HTTPError(403, refused)
        tornado.web.RequestHandler.check_xsrf_cookie(self)  # Flower's override skips it

    def prepare(self) -> Any:
        if self.request.method == "POST" and not self.settings.get("xsrf_cookies"):
            self.check_xsrf_cookie()  # tornado did not: the app has xsrf_cookies off
        return super().prepare()

    @tornado.web.authenticated
    def get(self, run_id: str, verdict: str) -> None:
        self.redirect(self.reverse_url("flux-run", self.checked_run_id(run_id)))

    @tornado.web.authenticated
    async def post(self, run_id: str, verdict: str) -> None:
        run_id = self.checked_run_id(run_id)
        if verdict not in VERDICTS:
            raise HTTPError(404)
        if self.application.options.read_only:
            raise HTTPError(403, "Read only mode is enabled")
        field_name = "comment" if verdict == "approve" else "reason"
        text = self.get_body_argument(field_name, "", strip=True)
        given = self.get_body_argument("by", "", strip=True)
        by = decider_name(self) or given
        form = {"verdict": verdict, "by": given, field_name: text}
        problem = form_problem(verdict, by, text)
        if problem:
            outcome = Outcome(400, Notice("danger", f"{problem} Nothing changed."))
        else:
            outcome = await self.read(
                f"{verdict} run", decide, self.engine, run_id, verdict, by, text or None
            )
        if outcome.status == 404:
            raise HTTPError(404, f"Unknown run {run_id!r}")
        if outcome.status == 303:
            page = self.reverse_url("flux-run", run_id)
            value = json.dumps({"run": run_id, **asdict(outcome.notice)})
            self.set_secure_cookie(NOTICE_COOKIE, value, expires_days=None, path=page)
            self.redirect(page, status=303)
            return
        self.set_status(outcome.status)
        await self.show(run_id, outcome.notice, form)
