"""The trace viewer behind ``fluxcelery dev``: a standard-library HTTP server and a JSON API.

Data comes from an NDJSON trace file (read incrementally as it grows; malformed or partial
lines are skipped) or from a database (``FluxEngine`` + ``ops``, values redacted). The page
in ``static/`` builds every element with DOM APIs, so step names and errors taken from traces
are always shown as text, never parsed as markup.

Routes: ``GET /`` (the page), ``/static/<file>``, ``/api/runs?workflow=&status=&limit=&offset=``,
``/api/runs/<run_id>`` and ``/api/events?run=&workflow=&type=&since=&limit=``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import webbrowser
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from ..builder import registered_workflows
from ..states import TERMINAL_RUN, RunStatus, StepStatus
from ..trace.event import EVENT_TYPES, FIELDS, TraceEvent

log = logging.getLogger("fluxcelery.web")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
RUN_STATUSES = tuple(s.value for s in RunStatus)
STEP_STATUSES = frozenset(s.value for s in StepStatus)
TERMINAL = frozenset(s.value for s in TERMINAL_RUN)
MAX_RUNS, MAX_EVENTS, RUN_EVENTS = 1000, 5000, 5000

# -- errors and query parsing ------------------------------------------------------------


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> HttpError:
    return HttpError(400, message)


def not_found(message: str) -> HttpError:
    return HttpError(404, message)


def parse_query(query: str, allowed: Sequence[str]) -> dict[str, str]:
    """Query parameters as a dict; unknown, repeated or control-character values are a 400.
    Empty values mean "no filter" and are dropped."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=len(allowed) + 4)
    except ValueError:
        raise bad_request("malformed query string") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            raise bad_request(f"unknown query parameter {key!r}; allowed: {', '.join(allowed)}")
        if key in out:
            raise bad_request(f"query parameter {key!r} is given more than once")
        if len(value) > 500 or any(ord(c) < 32 for c in value):
            raise bad_request(f"query parameter {key!r} is too long or has control characters")
        out[key] = value.strip()
    return {k: v for k, v in out.items() if v}


def _choices(raw: str | None, allowed: Sequence[str], name: str) -> list[str] | None:
    if raw is None:
        return None
    values = [v.strip() for v in raw.split(",") if v.strip()]
    for v in values:
        if v not in allowed:
            raise bad_request(f"unknown {name} {v!r}; one of: {', '.join(allowed)}")
    return values or None


def _int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}, got {value}")
    return value


def _since(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise bad_request(f"since must be an ISO 8601 time (2024-05-01T12:00:00Z), got {raw!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _text(raw: str | None, name: str, max_len: int) -> str | None:
    if raw is not None and len(raw) > max_len:
        raise bad_request(f"{name} is longer than {max_len} characters")
    return raw


# -- deriving runs, steps and attempts from trace events (pure) ---------------------------

_RUN_STATUS_OF = {
    "workflow:start": "running",
    "workflow:complete": "completed",
    "workflow:cancel": "cancelled",
    "workflow:rollback_start": "rolling_back",
    "workflow:rollback_complete": "rolled_back",
    "step:suspend": "suspended",
    "signal:received": "running",
    "step:compensate": "rolling_back",
    "step:compensate_error": "rolling_back",
}
_STEP_TYPES = frozenset(t for t in EVENT_TYPES if t.startswith("step:")) | {"signal:received"}
_ATTEMPT_END = {
    "step:complete": "completed",
    "step:retry": "retry",
    "step:error": "failed",
    "step:suspend": "suspended",
}


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat().replace("+00:00", "Z")


def _ms(start: datetime, end: datetime) -> int:
    return max(0, round((end - start).total_seconds() * 1000))


def derive_run_status(events: Iterable[TraceEvent]) -> str:
    """A run's status from its events, as the engine would have stored it."""
    status = "pending"
    for e in events:
        if e.type == "workflow:error":
            status = e.status if e.status in ("failed", "rolled_back") else "failed"
        elif e.type in _RUN_STATUS_OF:
            status = _RUN_STATUS_OF[e.type]
        elif e.type.startswith("step:") and status != "rolling_back":
            status = "running"
    return status


def summarize_run(events: Sequence[TraceEvent], steps_total: int | None = None) -> dict[str, Any]:
    """One runs-table row (the shape of ``ops.run_row``) built from a run's events."""
    first, last = events[0], events[-1]
    status = derive_run_status(events)
    error = duration = None
    for e in events:
        if e.type in ("workflow:start", "workflow:complete"):
            error = None
        elif e.type in ("workflow:error", "workflow:cancel", "workflow:rollback_start"):
            error = e.error or error
        if e.type in ("workflow:complete", "workflow:error") and e.duration_ms is not None:
            duration = e.duration_ms
    steps = derive_steps(events)
    current = next((e.step for e in reversed(events) if e.step is not None), None)
    finished = status in TERMINAL
    return {
        "id": first.run_id,
        "workflow": first.workflow,
        "version": None,
        "status": status,
        "current_step": current,
        "steps_done": sum(1 for s in steps if s["status"] in ("completed", "skipped")),
        "steps_total": max(steps_total or 0, len(steps)),
        "error": error if status != "completed" else None,
        "executor": None,
        "created_at": _iso(first.ts),
        "updated_at": _iso(last.ts),
        "finished_at": _iso(last.ts) if finished else None,
        "duration_ms": duration if finished and duration is not None else _ms(first.ts, last.ts),
        "events": len(events),
    }


def derive_steps(events: Iterable[TraceEvent]) -> list[dict[str, Any]]:
    """Steps (status, attempts, duration, task id, error) from a run's events, in order."""
    steps: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.step is None or e.type not in _STEP_TYPES:
            continue
        s = steps.setdefault(
            e.step,
            {
                "name": e.step,
                "index": e.step_index,
                "kind": e.kind or "step",
                "status": "pending",
                "attempts": 0,
                "max_attempts": None,
                "error": None,
                "waiting_for": None,
                "task_id": None,
                "started_at": None,
                "finished_at": None,
                "duration_ms": None,
            },
        )
        if e.step_index is not None:
            s["index"] = e.step_index
        if e.status in STEP_STATUSES:
            s["status"] = e.status
        if e.max_attempts:
            s["max_attempts"] = e.max_attempts
        if e.task_id:
            s["task_id"] = e.task_id
        if e.type == "step:start":
            s.update(attempts=e.attempt or s["attempts"] + 1, started_at=_iso(e.ts))
            s.update(error=None, finished_at=None, duration_ms=None)
        elif e.type in ("step:complete", "step:error", "step:skipped", "step:suspend"):
            s.update(finished_at=_iso(e.ts), duration_ms=e.duration_ms)
        if e.type == "step:suspend":
            s["waiting_for"] = (e.meta or {}).get("signal")
        if e.error and e.type in ("step:error", "step:retry", "step:compensate_error"):
            s["error"] = e.error
        elif e.type in ("step:complete", "step:compensate"):
            s["error"] = None
    return sorted(steps.values(), key=lambda s: (s["index"] is None, s["index"] or 0))


def attempt_log(events: Sequence[TraceEvent]) -> dict[str, list[dict[str, Any]]]:
    """Per step, its attempts (and compensation attempts) as bars: ``start_ms`` from the
    run's first event, ``duration_ms``, ``outcome`` and ``error``."""
    if not events:
        return {}
    t0 = events[0].ts
    bars: dict[str, list[dict[str, Any]]] = {}
    open_: dict[str, dict[str, Any]] = {}

    def bar(e: TraceEvent, phase: str, outcome: str, start_ms: int) -> dict[str, Any]:
        item = {
            "phase": phase,
            "attempt": e.attempt,
            "max_attempts": e.max_attempts,
            "outcome": outcome,
            "start_ms": start_ms,
            "duration_ms": None,
            "error": None,
        }
        bars.setdefault(str(e.step), []).append(item)
        return item

    for e in events:
        if e.step is None or not e.type.startswith("step:"):
            continue
        end_ms = _ms(t0, e.ts)
        if e.type == "step:start":
            if e.step in open_:
                open_[e.step]["outcome"] = "interrupted"
            open_[e.step] = bar(e, "run", "running", end_ms)
        elif e.type in _ATTEMPT_END:
            item = open_.pop(e.step, None) or bar(
                e, "run", "", max(0, end_ms - (e.duration_ms or 0))
            )
            duration = e.duration_ms
            if duration is None:
                duration = max(0, end_ms - item["start_ms"])
            item.update(outcome=_ATTEMPT_END[e.type], duration_ms=duration, error=e.error)
            item["max_attempts"] = item["max_attempts"] or e.max_attempts
        elif e.type == "step:skipped":
            bar(e, "run", "skipped", end_ms)["duration_ms"] = 0
        elif e.type in ("step:compensate", "step:compensate_error"):
            outcome = "compensated" if e.type == "step:compensate" else e.status or "failed"
            item = bar(e, "compensate", outcome, max(0, end_ms - (e.duration_ms or 0)))
            item.update(duration_ms=e.duration_ms, error=e.error)
    if open_ and derive_run_status(events) in TERMINAL:
        for item in open_.values():
            item["outcome"] = "interrupted"
    return bars


def _max_attempts(definition: dict[str, Any] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for step in (definition or {}).get("steps", []):
        if isinstance(step.get("retries"), int):
            out[step["name"]] = step["retries"] + 1
    return out


def build_detail(
    run: dict[str, Any],
    steps: list[dict[str, Any]],
    events: Sequence[TraceEvent],
    rows: list[dict[str, Any]],
    definition: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ``/api/runs/<id>`` document, the same for both sources."""
    bars = attempt_log(events)
    from_events = {s["name"]: s for s in derive_steps(events)}
    from_definition = _max_attempts(definition)
    for s in steps:
        s["attempt_log"] = bars.get(s["name"], [])
        if s.get("max_attempts") is None:
            seen = from_events.get(s["name"], {}).get("max_attempts")
            s["max_attempts"] = seen or from_definition.get(s["name"])
    compensations = [e.step for e in events if e.type == "step:compensate"]
    return {
        "run": run,
        "steps": steps,
        "events": rows,
        "compensations": compensations,
        "definition": definition,
    }


def _definition_for(name: str, step_names: Iterable[str]) -> dict[str, Any] | None:
    """The registered definition of a workflow, when the run's steps all belong to it."""
    wf = registered_workflows().get(name)
    if wf is None:
        return None
    try:
        desc = wf.describe()
    except Exception:
        return None
    known = {s["name"] for s in desc["steps"]}
    return desc if set(step_names) <= known else None


# -- data sources ------------------------------------------------------------------------


class Source(Protocol):
    kind: str
    label: str

    def runs(
        self, workflow: str | None, statuses: list[str] | None, limit: int, offset: int
    ) -> dict[str, Any]: ...

    def run(self, run_id: str) -> dict[str, Any] | None: ...

    def events(
        self,
        run_id: str | None,
        workflow: str | None,
        types: list[str] | None,
        since: datetime | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], bool]: ...

    def close(self) -> None: ...


_INT_FIELDS = ("step_index", "attempt", "max_attempts", "duration_ms")
_STR_FIELDS = ("id", "status", "step", "kind", "error", "task_id", "worker")


def parse_trace_line(raw: bytes) -> TraceEvent | None:
    """One NDJSON line as an event, or None when it is not a well-formed trace event."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("ts"), str):
        return None
    if not all(isinstance(obj.get(k), str) and obj[k] for k in ("run_id", "workflow", "type")):
        return None
    for key in _INT_FIELDS:
        v = obj.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            return None
    if any(obj.get(k) is not None and not isinstance(obj[k], str) for k in _STR_FIELDS):
        return None
    if obj.get("meta") is not None and not isinstance(obj["meta"], dict):
        return None
    try:
        return TraceEvent.from_dict(obj)
    except (ValueError, TypeError, AttributeError):
        return None


def _steps_known(events: Sequence[TraceEvent]) -> int | None:
    steps = {e.step for e in events if e.step is not None and e.type in _STEP_TYPES}
    definition = _definition_for(events[0].workflow, steps)
    return len(definition["steps"]) if definition else None


class _Snapshot:
    """The events of a trace file at one moment, grouped by run; summaries made once."""

    def __init__(self, events: list[TraceEvent], by_run: dict[str, list[TraceEvent]]) -> None:
        self.events = events
        self.by_run = by_run
        self._rows: list[dict[str, Any]] | None = None

    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = [summarize_run(evs, _steps_known(evs)) for evs in self.by_run.values()]
        return self._rows


class FileSource:
    """Runs derived from an NDJSON trace file, re-read incrementally when it changes.

    Only whole lines are consumed; a trailing line still being written is shown if it parses
    and read again once complete. A truncated or replaced file is read from the start.
    """

    kind = "file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.label = str(path)  # as given (relative paths stay short in the page)
        self.path = Path(path).expanduser().absolute()  # a later chdir changes nothing
        self._lock = threading.Lock()
        self._reset(None)

    def _reset(self, ident: tuple[int, int] | None) -> None:
        self._ident = ident
        self._events: list[TraceEvent] = []
        self._tail: TraceEvent | None = None
        self._offset = 0
        self._head = b""
        self._seen: tuple[int, int] | None = None
        self._cache: _Snapshot | None = None

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            self._refresh()
            if self._cache is None:
                events = self._events + ([self._tail] if self._tail else [])
                by_run: dict[str, list[TraceEvent]] = {}
                for e in events:
                    by_run.setdefault(e.run_id, []).append(e)
                self._cache = _Snapshot(events, by_run)
            return self._cache

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            ident = (st.st_dev, st.st_ino)
            if ident == self._ident and (st.st_size, st.st_mtime_ns) == self._seen:
                return
            if ident != self._ident or st.st_size < self._offset:
                self._reset(ident)
            self._seen = (st.st_size, st.st_mtime_ns)
            with self.path.open("rb") as f:
                if self._head and f.read(len(self._head)) != self._head:
                    self._reset(ident)  # rewritten in place (reset=True, then appended)
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            if self._ident is not None:
                self._reset(None)
            return
        if self._offset == 0:
            self._head = chunk[:256]
        cut = chunk.rfind(b"\n") + 1
        if cut:
            parsed = (parse_trace_line(line) for line in chunk[:cut].splitlines())
            self._events.extend(e for e in parsed if e is not None)
            self._offset += cut
            self._cache = None
        tail = parse_trace_line(chunk[cut:]) if chunk[cut:].strip() else None
        if tail != self._tail:
            self._tail, self._cache = tail, None

    def runs(
        self, workflow: str | None, statuses: list[str] | None, limit: int, offset: int
    ) -> dict[str, Any]:
        rows = list(self._snapshot().rows())
        workflows = sorted({r["workflow"] for r in rows})
        if workflow is not None:
            rows = [r for r in rows if r["workflow"] == workflow]
        counts = dict.fromkeys(RUN_STATUSES, 0)
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        if statuses is not None:
            rows = [r for r in rows if r["status"] in statuses]
        rows.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        return {"runs": rows[offset : offset + limit], "counts": counts, "workflows": workflows}

    def run(self, run_id: str) -> dict[str, Any] | None:
        events = self._snapshot().by_run.get(run_id)
        if not events:
            return None
        steps = derive_steps(events)
        definition = _definition_for(events[0].workflow, (s["name"] for s in steps))
        if definition is not None:  # steps not reached yet are shown as pending
            seen = {s["name"] for s in steps}
            for d in definition["steps"]:
                if d["name"] not in seen:
                    steps.append(_pending_step(d))
            order = {d["name"]: d["index"] for d in definition["steps"]}
            steps.sort(key=lambda s: order[s["name"]])
        run = summarize_run(events, len(definition["steps"]) if definition else None)
        start = next((e for e in events if e.type == "workflow:start"), None)
        run["input"] = (start.meta or {}).get("input") if start is not None else None
        run["data"] = None
        rows = [e.to_dict() for e in events]
        return build_detail(run, steps, events, rows, definition)

    def events(
        self,
        run_id: str | None,
        workflow: str | None,
        types: list[str] | None,
        since: datetime | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], bool]:
        snap = self._snapshot()
        chosen: Iterable[TraceEvent] = snap.by_run.get(run_id, []) if run_id else snap.events
        picked = [
            e
            for e in chosen
            if (workflow is None or e.workflow == workflow)
            and (types is None or e.type in types)
            and (since is None or e.ts > since)
        ]
        return [e.to_dict() for e in picked[-limit:]], len(picked) > limit

    def close(self) -> None:
        return None


def _pending_step(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": d["name"],
        "index": d["index"],
        "kind": d["kind"],
        "status": "pending",
        "attempts": 0,
        "max_attempts": None,
        "error": None,
        "waiting_for": None,
        "task_id": None,
        "started_at": None,
        "finished_at": None,
        "duration_ms": None,
    }


class DbSource:
    """Runs, steps and traces from a fluxcelery database; every value is redacted."""

    kind = "db"

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        from ..engine import FluxEngine
        from ..storage.sql import SqlStorage, normalize_url, redact_url

        self.label = redact_url(url)
        try:
            parsed = sa.engine.make_url(normalize_url(url))
        except sa.exc.ArgumentError:
            raise ValueError(f"not a database URL: {self.label!r}") from None
        db = parsed.database
        local = parsed.drivername.startswith("sqlite") and db and db != ":memory:"
        if local and not Path(str(db)).expanduser().exists():
            raise FileNotFoundError(f"no SQLite database at {db} (from {self.label})")
        self.storage = SqlStorage(url)
        self.engine = FluxEngine(storage=self.storage)

    def runs(
        self, workflow: str | None, statuses: list[str] | None, limit: int, offset: int
    ) -> dict[str, Any]:
        import sqlalchemy as sa

        from .. import ops
        from ..storage import schema

        rows = ops.list_runs(self.engine, workflow, statuses, limit, offset)
        counts = ops.status_counts(self.engine, workflow)
        q = sa.select(schema.runs.c.workflow).distinct().order_by(schema.runs.c.workflow)
        with self.storage.engine.connect() as conn:
            workflows = list(conn.execute(q).scalars())
        return {"runs": rows, "counts": counts, "workflows": workflows}

    def run(self, run_id: str) -> dict[str, Any] | None:
        from .. import ops
        from ..errors import RunNotFound

        try:
            d = ops.run_detail(self.engine, run_id, trace_limit=RUN_EVENTS)
        except RunNotFound:
            return None
        steps = d["steps"]
        index = d["current_step"]
        keys = "id workflow status error executor created_at updated_at finished_at duration_ms"
        run = {k: d[k] for k in (*keys.split(), "input", "data")}
        run.update(
            version=d["workflow_version"],
            current_step=steps[index]["name"] if index < len(steps) else None,
            steps_done=sum(1 for s in steps if s["status"] in ("completed", "skipped")),
            steps_total=len(steps),
            events=len(d["traces"]),
        )
        events = [TraceEvent.from_dict(row) for row in d["traces"]]
        return build_detail(run, steps, events, d["traces"], d["definition"])

    def events(
        self,
        run_id: str | None,
        workflow: str | None,
        types: list[str] | None,
        since: datetime | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], bool]:
        import sqlalchemy as sa

        from .. import ops
        from ..storage import schema

        t = schema.traces
        q = sa.select(t)
        if run_id is not None:
            q = q.where(t.c.run_id == run_id)
        if workflow is not None:
            q = q.where(t.c.workflow == workflow)
        if types is not None:
            q = q.where(t.c.type.in_(types))
        if since is not None:
            q = q.where(t.c.ts > since)
        q = q.order_by(t.c.seq.desc()).limit(limit + 1)  # the newest, plus one to see more
        with self.storage.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        events = [_event_from_row(r) for r in reversed(rows[:limit])]
        return ops.trace_rows(events, self.engine), len(rows) > limit

    def close(self) -> None:
        self.engine.close()


def _event_from_row(row: Any) -> TraceEvent:
    values = {k: row[k] for k in FIELDS}
    ts = values.pop("ts")
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return TraceEvent(ts=ts, **values)


# -- HTTP --------------------------------------------------------------------------------


def json_bytes(value: Any) -> bytes:
    """Compact JSON with ``<``, ``>`` and ``&`` escaped (still the same JSON values)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _server_error(exc: Exception) -> tuple[int, dict[str, str]]:
    """503 when the database is unreachable (its message names no password), else 500."""
    from sqlalchemy.exc import OperationalError

    from ..errors import StorageError

    if isinstance(exc, StorageError):
        return 503, {"error": str(exc)}
    if isinstance(exc, OperationalError):
        return 503, {"error": "database unavailable (see the server log)"}
    return 500, {"error": "internal error (see the server log)", "type": type(exc).__name__}


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "fluxcelery-viewer"
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections are closed

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _not_allowed(self) -> None:
        self._send(405, json_bytes({"error": "method not allowed; use GET"}), head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _handle(self, head: bool) -> None:
        try:
            if not self.server.host_allowed(self.headers.get("Host")):
                raise HttpError(403, "host not allowed (the viewer only answers to localhost)")
            url = urlsplit(self.path)
            path = url.path
            if path in ("/", "/index.html"):
                self._static("index.html", head)
            elif path.startswith("/static/") and path[8:] in STATIC_FILES:
                self._static(path[8:], head)
            elif path.startswith("/api/"):
                status, body = self.server.api(path.rstrip("/"), url.query)
                self._send(status, json_bytes(body), head)
            else:
                raise not_found(f"no such path: {path}")
        except HttpError as exc:
            self._send(exc.status, json_bytes({"error": exc.message}), head)
        except Exception as exc:
            log.exception("viewer request %s failed", self.path)
            status, body = _server_error(exc)
            self._send(status, json_bytes(body), head)

    def _static(self, name: str, head: bool) -> None:
        body = (STATIC_DIR / name).read_bytes()
        self._send(200, body, head, content_type=STATIC_FILES[name])

    def _send(
        self, status: int, body: bytes, head: bool, content_type: str = "application/json"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        if status == 405:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found while parsing a request are JSON too."""
        self.close_connection = True
        text = message or HTTPStatus(code).phrase
        self._send(code, json_bytes({"error": text}), head=self.command == "HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class ViewerServer(ThreadingHTTPServer):
    """The viewer's HTTP server; ``url`` is where it listens, ``source`` what it shows."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], source: Source) -> None:
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.source = source
        self.check_host = host in LOOPBACK
        self._hosts = LOOPBACK | {host.lower()}
        super().__init__(address, ViewerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def host_allowed(self, header: str | None) -> bool:
        """Refuse other ``Host`` names on a loopback bind (DNS rebinding)."""
        if not self.check_host or not header:
            return True
        name = header.strip().lower()
        if name.startswith("["):
            name = name[1 : name.find("]")]
        elif name.count(":") == 1:
            name = name.split(":")[0]
        return name in self._hosts

    def api(self, path: str, query: str) -> tuple[int, Any]:
        """Answer one API request: (status, JSON body); raises ``HttpError``."""
        src = self.source
        if path == "/api/runs":
            q = parse_query(query, ("workflow", "status", "limit", "offset"))
            workflow = _text(q.get("workflow"), "workflow", 200)
            statuses = _choices(q.get("status"), RUN_STATUSES, "status")
            limit = _int(q.get("limit"), "limit", 200, 1, MAX_RUNS)
            offset = _int(q.get("offset"), "offset", 0, 0, 10**9)
            body = src.runs(workflow, statuses, limit, offset)
            body["source"] = {"kind": src.kind, "label": src.label}
            return 200, body
        if path.startswith("/api/runs/"):
            parse_query(query, ())
            run_id = unquote(path[len("/api/runs/") :])
            detail = src.run(run_id) if 0 < len(run_id) <= 64 and "/" not in run_id else None
            if detail is None:
                raise not_found(f"run {run_id!r} not found")
            return 200, detail
        if path == "/api/events":
            q = parse_query(query, ("run", "workflow", "type", "since", "limit"))
            events, truncated = src.events(
                _text(q.get("run"), "run", 64),
                _text(q.get("workflow"), "workflow", 200),
                _choices(q.get("type"), EVENT_TYPES, "type"),
                _since(q.get("since")),
                _int(q.get("limit"), "limit", 500, 1, MAX_EVENTS),
            )
            return 200, {"events": events, "truncated": truncated}
        raise not_found(f"no such API path: {path}")

    def server_close(self) -> None:
        super().server_close()
        self.source.close()


def create_server(
    trace_file: str | os.PathLike[str] | None = None,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 4280,
) -> ViewerServer:
    """A viewer server for a trace file or a database (exactly one); not yet serving.

    ``port=0`` picks a free port (see ``server.url``). A SQLite URL whose file does not
    exist raises ``FileNotFoundError`` rather than creating an empty database.
    """
    if (trace_file is None) == (db_url is None):
        raise ValueError("give exactly one of trace_file (an NDJSON trace) or db_url")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer between 0 and 65535, got {port!r}")
    source: Source = FileSource(trace_file) if trace_file is not None else DbSource(str(db_url))
    try:
        return ViewerServer((host, port), source)
    except BaseException:
        source.close()
        raise


def serve(
    trace_file: str | os.PathLike[str] | None = None,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 4280,
    open_browser: bool = False,
) -> None:
    """Serve the viewer until Ctrl-C, printing its URL first."""
    server = create_server(trace_file=trace_file, db_url=db_url, host=host, port=port)
    what = "trace file" if trace_file is not None else "database"
    print(f"fluxcelery trace viewer: {server.url}  ({what}: {server.source.label})", flush=True)
    if host not in LOOPBACK:
        print(f"warning: listening on {host}; anyone who can reach it can read the traces")
    print("Press Ctrl-C to stop.", flush=True)
    if open_browser:
        webbrowser.open(server.url)
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops cleanly too
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


__all__ = ["ViewerServer", "attempt_log", "create_server", "derive_run_status", "serve"]
