"""``fluxcelery flower``: Flower 2.2 with a **Workflows** tab.

Flower has no plugin hook, so ``main`` does what ``celery flower`` does (``FLOWER_*``
variables, the ``--conf`` file, command-line options), builds Flower's application on the
fluxcelery Celery app, then adds these routes ahead of Flower's catch-all:

- ``/workflows``: runs with counts per status, filters (status, workflow name or prefix, run
  id or prefix, creation time range) kept in the query string, paging;
- ``/workflows/run/<run_id>``: a run's steps, each linked to Flower's ``/task/<task_id>``
  page, with the traceback of a failed step, and its trace events; a parallel's branches
  and a for_each's items grouped under it (``fluxcelery.outline``; many items folded
  behind a "show all"); when the run waits on an approval step, the request with Approve /
  Reject forms that POST to ``/workflows/run/<run_id>/approve|reject``
  (``flower_decisions.py``: Flower's auth, a same-origin check and the ``_xsrf`` token);
- ``/workflows/schedules`` (a Schedules tab) and ``/api/flux/schedules``: the declared
  schedules with their next tick and newest run (``flower_schedules.py``);
- ``/api/flux/runs``, ``/api/flux/runs/<run_id>``, ``/api/flux/runs/<run_id>/traces`` and
  ``/api/flux/counts``: the same data as JSON (``fluxcelery.ops`` shapes);
- ``/api/flux/metrics``: the store's Prometheus metrics (``flower_metrics.py``).

Pages obey Flower's ``--basic_auth``/``--auth`` options and ``--url_prefix``. Like Flower's
own API, the JSON routes answer 401 unless authentication is configured or
``FLOWER_UNAUTHENTICATED_API=true`` is set. SQL reads run on Flower's executor, never on the
IOLoop. Both pages have an auto-refresh switch (``?refresh=1``), off unless asked for.
Importing ``fluxcelery`` never imports this module (it needs the ``flower`` extra).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import flower
import flower.options  # defines Flower's command-line options
import tornado.web
from flower.api import BaseApiHandler
from flower.app import Flower, rewrite_handler
from flower.urls import settings as flower_settings
from flower.utils import prepend_url
from flower.views import BaseHandler
from tornado import template
from tornado.ioloop import IOLoop
from tornado.options import Error as OptionsError
from tornado.options import options as tornado_options
from tornado.web import HTTPError, url

from ..core.errors import RunNotFound
from ..core.records import describe_progress
from ..core.states import ACTIVE_RUN, values
from ..defaults import default_app, default_engine
from ..engine import FluxEngine
from ..ops import RUN_STATUSES, RunFilter, find_runs, run_detail, status_counts, trace_rows
from ..outline import (
    Line,
    describe_counts,
    items_of,
    outline,
    own_traceback,
    step_label,
    summarize,
)
from ..settings import is_loopback
from .flower_decisions import DecisionForms, Notice, approval_view, take_notice
from .flower_metrics import MetricsApi
from .flower_schedules import SchedulesApi, SchedulesView

__all__ = [
    "ChainLoader",
    "build",
    "flux_handlers",
    "flower_options",
    "main",
    "make_app",
    "navbar_with_workflows",
]

log = logging.getLogger("fluxcelery.flower")

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
FLOWER_TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(flower.__file__)), "templates")
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
TRACE_LIMIT = 1000
MAX_TRACE_LIMIT = 5000
MAX_RUN_ID = 64
MAX_NAME = 200
#: Seconds between reloads when a page's auto-refresh switch is on.
REFRESH_SECONDS = 5
#: The filters of the runs list and ``/api/flux/runs`` (besides ``status``), in link order.
FILTERS = ("workflow", "workflow_prefix", "run_id", "created_from", "created_to")

#: Statuses of runs that have not settled for good (the "Active" card).
ACTIVE = values(ACTIVE_RUN)
#: Bootstrap badge class per run or step status (Flower's own palette).
BADGES = {
    "pending": "text-bg-secondary",
    "running": "task-state-started",
    "suspended": "text-bg-info",
    "completed": "text-bg-success",
    "rolling_back": "text-bg-warning",
    "rolled_back": "text-bg-warning",
    "failed": "text-bg-danger",
    "cancelled": "text-bg-dark",
    "skipped": "text-bg-light border",
    "compensating": "text-bg-warning",
    "compensated": "text-bg-warning",
    "compensation_failed": "text-bg-danger",
}


# -- templates ----------------------------------------------------------------------------
NAV_ANCHOR = '<ul class="app-nav navbar-nav">'
NAV_ITEM = """  <li class="nav-item">
          <a class="nav-link{% if active_tab == 'workflows' %} active{% end %}"
            href="{{ reverse_url('flux-workflows') }}"
            {% if active_tab == 'workflows' %}aria-current="page"{% end %}>Workflows</a>
        </li>
        <li class="nav-item">
          <a class="nav-link{% if active_tab == 'schedules' %} active{% end %}"
            href="{{ reverse_url('flux-schedules') }}"
            {% if active_tab == 'schedules' %}aria-current="page"{% end %}>Schedules</a>
        </li>
      """


def navbar_with_workflows(source: str) -> str:
    """Flower's ``navbar.html`` source with a Workflows tab after its own tabs.

    When Flower's markup no longer has the expected list, the source is returned unchanged
    (Flower's pages then lack the tab; ``/workflows`` still works) and a warning is logged.
    """
    start = source.find(NAV_ANCHOR)
    end = source.find("</ul>", start) if start >= 0 else -1
    if end < 0:
        log.warning(
            "fluxcelery: Flower's navbar.html has an unknown layout; Flower's own pages "
            "show no Workflows tab (open /workflows directly)"
        )
        return source
    return source[:end] + NAV_ITEM + source[end:]


class ChainLoader(template.BaseLoader):
    """Loads each template from the first directory that has it, so fluxcelery's pages can
    extend Flower's ``base.html``. ``navbar.html`` gets a Workflows tab (on every page)."""

    def __init__(self, directories: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)  # autoescape stays on (xhtml_escape)
        self.directories = [os.path.abspath(d) for d in directories]

    def resolve_path(self, name: str, parent_path: str | None = None) -> str:
        return name

    def _create_template(self, name: str) -> template.Template:
        source = self._source(name)
        if name == "navbar.html":
            source = navbar_with_workflows(source)
        return template.Template(source, name=name, loader=self)

    def _source(self, name: str) -> str:
        for root in self.directories:
            path = os.path.abspath(os.path.join(root, name))
            if os.path.commonpath([root, path]) == root and os.path.isfile(path):
                with open(path, encoding="utf-8") as fh:
                    return fh.read()
        raise FileNotFoundError(f"template {name!r} is in none of {self.directories}")


def format_ms(ms: int | None) -> str:
    """``850 ms``, ``1.25 s``, ``2m 03s``; an em dash when unknown."""
    if ms is None:
        return "\u2014"
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def format_ts(value: str | None, precise: bool = False, time_only: bool = False) -> str:
    """An ISO timestamp as ``2025-01-31 12:00:00 UTC`` (with milliseconds when ``precise``,
    without the date when ``time_only``); an em dash when unknown."""
    if not value:
        return "\u2014"
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    text = dt.strftime("%H:%M:%S.%f")[:-3] if precise else f"{dt:%H:%M:%S}"
    if not time_only:
        text = f"{dt:%Y-%m-%d} {text}"
    return text + (" UTC" if dt.utcoffset() == timedelta(0) else "")


def short_id(value: str) -> str:
    """A uuid-like id cut to 8 characters (its full value goes in the link's title)."""
    return value if len(value) <= 13 else value[:8] + "\u2026"


def event_class(event_type: str) -> str:
    if event_type.endswith("error"):
        return "flux-ev-error"
    if event_type.endswith("complete"):
        return "flux-ev-ok"
    if event_type.endswith(("retry", "rollback_start", "compensate", "suspend", "cancel")):
        return "flux-ev-warn"
    return ""


def event_step(event: Mapping[str, Any]) -> str:
    """An event's step as the steps table names it: ``notify[3]`` for an item's event."""
    meta = event.get("meta")
    item = meta.get("item") if isinstance(meta, dict) else None
    if event.get("step") is None:
        return ""
    if not isinstance(item, int) or isinstance(item, bool):
        return str(event["step"])
    return step_label({"name": event["step"], "item": item})


def branch_summary(steps: Sequence[Mapping[str, Any]], line: Line) -> str | None:
    """``2 steps completed``: the steps of the branch a label line stands for."""
    rows = [s for s in steps if s.get("parent") == line.parent and s.get("branch") == line.branch]
    return summarize([s for s in rows if s.get("item") is None], "step")


def items_summary(steps: Sequence[Mapping[str, Any]], step: Mapping[str, Any]) -> str | None:
    """``1000 items: 985 completed, 5 failed``: the items of a for_each row."""
    return summarize(items_of(steps, step.get("index")))


def step_blocks(steps: Sequence[Mapping[str, Any]]) -> list[list[Line]]:
    """The outline of a run's steps cut before each top-level row: one ``<tbody>`` each,
    so that a for_each's "show all" opens its own folded items only."""
    blocks: list[list[Line]] = []
    for line in outline(steps):
        if line.depth == 0 or not blocks:
            blocks.append([])
        blocks[-1].append(line)
    return blocks


def to_json(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=True, default=str)


#: Functions every fluxcelery page can call (prefixed: Flower asserts no name clashes).
HELPERS: dict[str, Callable[..., Any]] = {
    "flux_badge": lambda status: BADGES.get(status or "", "text-bg-secondary"),
    "flux_label": lambda status: (status or "").replace("_", " ").capitalize(),
    "flux_ms": format_ms,
    "flux_ts": format_ts,
    "flux_event_class": event_class,
    "flux_short": short_id,
    "flux_json": to_json,
    "flux_progress": describe_progress,
    "flux_event_step": event_step,
    "flux_branch_summary": branch_summary,
    "flux_items_summary": items_summary,
    "flux_counts": describe_counts,
    "flux_traceback": own_traceback,
}


def parse_time(raw: str, name: str) -> datetime:
    """``2025-06-01``, ``2025-06-01T12:00`` (a ``datetime-local`` input) or full ISO 8601;
    a time without an offset is UTC, like every time the pages show."""
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise HTTPError(400, f"{name} must be an ISO 8601 time like 2025-06-01T12:00, got {raw!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def input_time(value: datetime | None) -> str:
    """A UTC time as a ``datetime-local`` input's value (seconds only when not zero)."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S" if value.second else "%Y-%m-%dT%H:%M")


# -- reads (run on the executor) ------------------------------------------------------------
def _detail(engine: FluxEngine, run_id: str) -> dict[str, Any] | None:
    try:
        return run_detail(engine, run_id, trace_limit=TRACE_LIMIT)
    except RunNotFound:
        return None


def _traces(
    engine: FluxEngine, run_id: str, limit: int, offset: int
) -> list[dict[str, Any]] | None:
    if engine.get(run_id) is None:
        return None
    return trace_rows(engine.traces(run_id=run_id, limit=limit, offset=offset), engine)


# -- handlers -------------------------------------------------------------------------------
class FluxHandler(BaseHandler):
    """Shared by the pages and the API: the engine, argument checks, reads off the IOLoop."""

    engine: FluxEngine

    def initialize(self, engine: FluxEngine) -> None:
        self.engine = engine

    async def read(self, what: str, func: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking database read on Flower's executor (at most 5 at a time)."""
        return await self.application.blocking_runner.run(what, "fluxcelery database", func, *args)

    def text_arg(self, name: str) -> str:
        # Flower's get_argument HTML-escapes by default; pages escape on output instead.
        return str(self.get_argument(name, "", escape=False) or "").strip()

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.text_arg(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise HTTPError(400, f"{name} must be an integer, got {raw!r}")
        if not low <= value <= high:
            raise HTTPError(400, f"{name} must be between {low} and {high}, got {value}")
        return value

    def statuses_arg(self) -> list[str]:
        """``?status=failed&status=rolled_back`` or ``?status=failed,rolled_back``."""
        values = [v.strip() for raw in self.get_arguments("status") for v in raw.split(",")]
        values = [v for v in values if v]
        unknown = [v for v in values if v not in RUN_STATUSES]
        if unknown:
            raise HTTPError(
                400, f"unknown status {unknown[0]!r}; statuses are {', '.join(RUN_STATUSES)}"
            )
        return list(dict.fromkeys(values))

    def filter_args(self) -> tuple[RunFilter, dict[str, str]]:
        """The runs filter from ``?workflow=&workflow_prefix=&run_id=&created_from=
        &created_to=``, and the given values as text (for links and the form)."""
        raw = {name: self.text_arg(name) for name in FILTERS}
        for name in ("workflow", "workflow_prefix"):
            if len(raw[name]) > MAX_NAME:
                raise HTTPError(400, f"{name} is longer than {MAX_NAME} characters")
        if len(raw["run_id"]) > MAX_RUN_ID:
            raise HTTPError(400, f"run_id is longer than {MAX_RUN_ID} characters")
        start, end = (
            parse_time(raw[n], n) if raw[n] else None for n in ("created_from", "created_to")
        )
        if start is not None and end is not None and start >= end:
            raise HTTPError(400, "created_from must be earlier than created_to")
        where = RunFilter(
            workflow=raw["workflow"] or None,
            workflow_prefix=raw["workflow_prefix"] or None,
            run_id=raw["run_id"] or None,
            created_from=start,
            created_to=end,
        )
        return where, raw

    def refresh_arg(self) -> bool:
        return self.text_arg("refresh") == "1"

    def checked_run_id(self, run_id: str) -> str:
        if not run_id or len(run_id) > MAX_RUN_ID:
            raise HTTPError(404, f"Unknown run {run_id[:MAX_RUN_ID]!r}")
        return run_id


class WorkflowsView(FluxHandler):
    """``/workflows``: the runs table."""

    @tornado.web.authenticated
    async def get(self) -> None:
        statuses = self.statuses_arg()
        if len(statuses) > 1:
            raise HTTPError(400, "the page filters on one status; the API takes several")
        status = statuses[0] if statuses else ""
        where, given = self.filter_args()
        refresh = self.refresh_arg()
        limit = self.int_arg("limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        page = self.int_arg("page", 1, 1, 10**9)
        offset = (page - 1) * limit

        def page_url(**change: Any) -> str:
            query: dict[str, Any] = {"status": status, **given, "limit": limit, "page": page}
            query["refresh"] = "1" if refresh else ""
            query.update(change)
            if query["limit"] == PAGE_SIZE:
                query["limit"] = ""
            if query["page"] == 1:
                query["page"] = ""
            pairs = [(k, v) for k, v in query.items() if v not in ("", None)]
            base = self.reverse_url("flux-workflows")
            return f"{base}?{urlencode(pairs)}" if pairs else base

        if any(not v.strip() for vs in self.request.query_arguments.values() for v in vs):
            self.redirect(page_url())  # the filter form's empty fields: a clean, linkable URL
            return
        found = await self.read("list runs", find_runs, self.engine, where, statuses, limit, offset)
        names = set(self.engine.workflows) | {r["workflow"] for r in found.runs}
        counts = found.counts
        self.render(
            "flux_workflows.html",
            runs=found.runs,
            counts=counts,
            statuses=RUN_STATUSES,
            status=status,
            given=given,
            filtered=any(given.values()),
            time_inputs={
                "created_from": input_time(where.created_from),
                "created_to": input_time(where.created_to),
            },
            workflow_names=sorted(names),
            scanned=found.scanned,
            truncated=found.truncated,
            total=found.total,
            all_total=sum(counts.values()),
            active_total=sum(counts[s] for s in ACTIVE),
            failed_total=counts["failed"] + counts["rolled_back"],
            page=page,
            pages=max(1, math.ceil(found.total / limit)),
            offset=offset,
            page_url=page_url,
            refresh=refresh,
            refresh_seconds=REFRESH_SECONDS,
            **HELPERS,
        )


class RunView(FluxHandler):
    """``/workflows/run/<run_id>``: steps and trace of one run."""

    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        run_id = self.checked_run_id(run_id)
        await self.show(run_id, take_notice(self, run_id))

    async def show(
        self, run_id: str, notice: Notice | None = None, form: Mapping[str, str] | None = None
    ) -> None:
        """Render the page; ``notice`` and ``form``: what a decision did (Approve/Reject)."""
        detail = await self.read("show run", _detail, self.engine, run_id)
        if detail is None:
            raise HTTPError(404, f"Unknown run {run_id!r}")
        approvals = await approval_view(self, self.engine, detail, notice, form)
        self.render(
            "flux_run.html",
            run=detail,
            approvals=approvals,
            step_blocks=step_blocks(detail["steps"]),
            step_count=sum(1 for s in detail["steps"] if s.get("item") is None),
            item_count=sum(1 for s in detail["steps"] if s.get("item") is not None),
            trace_limit=TRACE_LIMIT,
            workflow_url=self.reverse_url("flux-workflows")
            + "?"
            + urlencode({"workflow": detail["workflow"]}),
            refresh=self.refresh_arg(),
            refresh_seconds=REFRESH_SECONDS,
            **HELPERS,
        )


class DecideView(DecisionForms, RunView):
    """``POST /workflows/run/<run_id>/approve|reject`` (``flower_decisions``): the run page
    again when a decision is refused."""


class FluxApiHandler(FluxHandler, BaseApiHandler):
    """JSON routes: 401 without configured auth unless ``FLOWER_UNAUTHENTICATED_API``."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")


class RunsApi(FluxApiHandler):
    """``GET /api/flux/runs?status=&workflow=&workflow_prefix=&run_id=&created_from=
    &created_to=&limit=&offset=``."""

    @tornado.web.authenticated
    async def get(self) -> None:
        statuses = self.statuses_arg()
        where, given = self.filter_args()
        limit = self.int_arg("limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        offset = self.int_arg("offset", 0, 0, 10**12)
        found = await self.read("list runs", find_runs, self.engine, where, statuses, limit, offset)
        self.write(
            {
                "runs": found.runs,
                "total": found.total,
                "limit": limit,
                "offset": offset,
                "status": statuses or None,
                **{name: value or None for name, value in given.items()},
                "scanned": found.scanned,
                "truncated": found.truncated,
            }
        )


class RunApi(FluxApiHandler):
    """``GET /api/flux/runs/<run_id>``: ``ops.run_detail`` (steps, definition, traces)."""

    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        run_id = self.checked_run_id(run_id)
        detail = await self.read("show run", _detail, self.engine, run_id)
        if detail is None:
            raise HTTPError(404, f"Unknown run {run_id!r}")
        self.write(detail)


class TracesApi(FluxApiHandler):
    """``GET /api/flux/runs/<run_id>/traces?limit=&offset=``."""

    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        run_id = self.checked_run_id(run_id)
        limit = self.int_arg("limit", TRACE_LIMIT, 1, MAX_TRACE_LIMIT)
        offset = self.int_arg("offset", 0, 0, 10**12)
        rows = await self.read("list traces", _traces, self.engine, run_id, limit, offset)
        if rows is None:
            raise HTTPError(404, f"Unknown run {run_id!r}")
        self.write({"run_id": run_id, "traces": rows, "limit": limit, "offset": offset})


class CountsApi(FluxApiHandler):
    """``GET /api/flux/counts?workflow=&workflow_prefix=&run_id=&created_from=&created_to=``:
    runs per status."""

    @tornado.web.authenticated
    async def get(self) -> None:
        where, given = self.filter_args()
        if where.scans:
            found = await self.read("count runs", find_runs, self.engine, where, [], 0, 0)
            counts, extra = found.counts, {"scanned": found.scanned, "truncated": found.truncated}
        else:
            counts = await self.read("count runs", status_counts, self.engine, where.workflow)
            extra = {}
        self.write(
            {
                **{name: value or None for name, value in given.items()},
                "counts": counts,
                "total": sum(counts.values()),
                **extra,
            }
        )


# -- application ----------------------------------------------------------------------------
def flux_handlers(engine: FluxEngine, url_prefix: str | None = None) -> list[Any]:
    """The fluxcelery routes (named ``flux-*``), rewritten under ``url_prefix``."""
    kw = {"engine": engine}
    sched = {"engine": engine, "helpers": HELPERS, "refresh_seconds": REFRESH_SECONDS}
    routes = [
        url(r"/workflows", WorkflowsView, kw, name="flux-workflows"),
        url(r"/workflows/schedules", SchedulesView, sched, name="flux-schedules"),
        url(r"/api/flux/schedules", SchedulesApi, sched, name="flux-api-schedules"),
        url(r"/workflows/run/([^/]+)", RunView, kw, name="flux-run"),
        url(r"/workflows/run/([^/]+)/(approve|reject)", DecideView, kw, name="flux-decide"),
        url(r"/api/flux/runs", RunsApi, kw, name="flux-api-runs"),
        url(r"/api/flux/runs/([^/]+)/traces", TracesApi, kw, name="flux-api-traces"),
        url(r"/api/flux/runs/([^/]+)", RunApi, kw, name="flux-api-run"),
        url(r"/api/flux/counts", CountsApi, kw, name="flux-api-counts"),
        url(r"/api/flux/metrics", MetricsApi, kw, name="flux-api-metrics"),
    ]
    if url_prefix:
        routes = [rewrite_handler(r, url_prefix) for r in routes]
    return routes


def build(
    capp: Any,
    options: Any,
    settings: Mapping[str, Any],
    engine: FluxEngine,
    io_loop: IOLoop | None = None,
) -> Any:
    """Flower's application with the fluxcelery templates and routes added (not started)."""
    settings = dict(settings)
    # Tornado caches loaders per template_path: our own path keeps our loader apart from a
    # stock Flower app's in the same process.
    settings["template_path"] = TEMPLATE_DIR
    settings["template_loader"] = ChainLoader([TEMPLATE_DIR, FLOWER_TEMPLATE_DIR])
    # The _xsrf cookie (Flower's and the Approve/Reject forms'): not sent with cross-site POSTs.
    settings.setdefault("xsrf_cookie_kwargs", {"samesite": "Lax"})
    app = Flower(capp=capp, options=options, io_loop=io_loop, **settings)
    # Inserted ahead of Flower's own rule list, whose last entry is the 404 catch-all.
    app.add_handlers(r".*", flux_handlers(engine, options.url_prefix))
    return app


def flower_options(overrides: Mapping[str, Any] | None = None) -> SimpleNamespace:
    """A copy of Flower's options (current values) with ``overrides`` applied."""
    values = tornado_options.as_dict()
    for name, value in (overrides or {}).items():
        if name not in values:
            raise ValueError(f"unknown Flower option {name!r}")
        if name == "basic_auth" and isinstance(value, str):
            value = [value]
        values[name] = value
    return SimpleNamespace(**values)


def _settings_for(options: Any) -> dict[str, Any]:
    """What ``flower.command.extract_settings`` derives, without touching its globals."""
    settings = {
        "template_path": flower_settings["template_path"],
        "static_path": flower_settings["static_path"],
        "cookie_secret": options.cookie_secret or flower_settings["cookie_secret"],
        "static_url_prefix": "/static/",
        "login_url": "/login",
        "xsrf_cookies": True,
        "debug": bool(options.debug),
    }
    if options.url_prefix:
        for name in ("login_url", "static_url_prefix"):
            settings[name] = prepend_url(settings[name], options.url_prefix)
    if options.auth:
        settings["oauth"] = {
            "key": options.oauth2_key or os.environ.get("FLOWER_OAUTH2_KEY"),
            "secret": options.oauth2_secret or os.environ.get("FLOWER_OAUTH2_SECRET"),
            "redirect_uri": options.oauth2_redirect_uri
            or os.environ.get("FLOWER_OAUTH2_REDIRECT_URI"),
        }
    return settings


def make_app(
    capp: Any = None,
    options_overrides: Mapping[str, Any] | None = None,
    engine: FluxEngine | None = None,
    *,
    io_loop: IOLoop | None = None,
) -> Any:
    """The configured Flower application, not started (for tests and embedding).

    ``capp`` defaults to ``fluxcelery.defaults.default_app()``, ``engine`` to the default
    engine, options to Flower's (e.g. ``{"basic_auth": ["user:pass"], "url_prefix": "f"}``).
    Shut ``app.executor`` down when done.
    """
    if capp is None:
        capp = default_app()
    if engine is None:
        engine = default_engine()
    options = flower_options(options_overrides)
    return build(capp, options, _settings_for(options), engine, io_loop=io_loop)


def _normalize_argv(argv: Sequence[str]) -> list[str]:
    """Accept ``--port 5555`` as well as tornado's ``--port=5555``."""
    known = getattr(tornado_options, "_options", {})
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.lstrip("-").replace("_", "-")
        option = known.get(name) if arg.startswith("--") and "=" not in arg else None
        takes_value = option is not None and option.type is not bool
        if takes_value and i + 1 < len(args) and not args[i + 1].startswith("-"):
            out.append(f"{arg}={args[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def bind_address(options: Any, *, insecure: bool) -> str | None:
    """Flower's own default is every interface, with the Workflows pages open when no auth
    option is given. Without ``--address`` bind 127.0.0.1; refuse another address without
    ``--basic-auth``/``--auth`` unless ``--insecure``. Returns the refusal, or None."""
    if not options.address:
        options.address = "127.0.0.1"
        return None
    if is_loopback(options.address) or options.basic_auth or options.auth or insecure:
        return None
    return (
        f"refusing to serve on {options.address} without authentication: give "
        "--basic-auth=user:password (or --auth), bind --address=127.0.0.1, or pass "
        "--insecure to serve it open"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``fluxcelery flower [flower options]``: serve Flower plus the Workflows tab.
    Binds 127.0.0.1 unless ``--address`` is given (see ``bind_address``)."""
    from flower import command

    args = _normalize_argv(sys.argv[1:] if argv is None else argv)
    insecure = "--insecure" in args
    args = [a for a in args if a != "--insecure"]
    ignored = [a for a in args if not command.is_flower_option(a)]
    if ignored:
        print(f"fluxcelery flower: ignoring {' '.join(ignored)}", file=sys.stderr)
    try:
        command.apply_env_options()
        command.apply_options("fluxcelery flower", args)
        command.extract_settings()  # exits on an invalid --auth or --broker_api
    except (OptionsError, ValueError) as exc:  # an unknown option, a value of the wrong type
        print(f"fluxcelery flower: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, or Flower refused an option
        return exc.code if isinstance(exc.code, int) else 1
    refused = bind_address(tornado_options, insecure=insecure)
    if refused:
        print(f"fluxcelery flower: {refused}", file=sys.stderr)
        return 2
    command.setup_logging()

    capp = default_app()
    app = build(capp, tornado_options, flower_settings, default_engine())
    atexit.register(app.stop)
    signal.signal(signal.SIGTERM, command.sigterm_handler)
    port = app.start_http_server()
    command.print_banner(capp, "ssl_options" in flower_settings, port)
    prefix = f"/{tornado_options.url_prefix.strip('/')}" if tornado_options.url_prefix else ""
    log.info("Workflows tab: %s/workflows", prefix)
    try:
        app.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
