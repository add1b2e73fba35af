"""Where the trace viewer's data comes from, and the pure derivations it shows.

Two sources answer the same ``Source`` protocol: ``FileSource`` reads an NDJSON trace file
(incrementally as it grows; malformed or partial lines are skipped) and ``DbSource`` reads a
fluxcelery database (``FluxEngine`` + ``ops``, values redacted). Runs, steps and attempt bars
are derived from trace events by pure functions, and the query-parameter helpers validate
API input, raising ``HttpError`` (a 400 or 404) with a message that names the parameter.
Nothing here speaks HTTP; ``viewer.py`` serves it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

from .. import ops
from ..core.builder import registered_workflows
from ..core.errors import RunNotFound
from ..core.states import DONE_STEP, TERMINAL_RUN, RunStatus, StepStatus, values
from ..engine import FluxEngine
from ..outline import GROUP_KINDS, step_label
from ..storage.sql import SqlStorage, normalize_url, redact_url
from ..trace.event import EVENT_TYPES, TraceEvent

DONE_VALUES = values(DONE_STEP)

RUN_STATUSES = tuple(s.value for s in RunStatus)
STEP_STATUSES = frozenset(s.value for s in StepStatus)
TERMINAL = frozenset(s.value for s in TERMINAL_RUN)
RUN_EVENTS = 5000  # trace events shown with one run from the database

# -- errors and query parsing ------------------------------------------------------------


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def pending_step(name: Any, index: Any, kind: str) -> dict[str, Any]:
    """A step row for a step that has not run (yet): the same shape as a stored step."""
    return {
        "name": name,
        "index": index,
        "kind": kind,
        "status": "pending",
        "attempts": 0,
        "max_attempts": None,
        "error": None,
        "traceback": None,
        "waiting_for": None,
        "task_id": None,
        "started_at": None,
        "finished_at": None,
        "duration_ms": None,
        "progress": None,
        "branch": None,
        "item": None,
        "parent": None,
    }


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
#: A parallel's or for_each's fan-out and join (SPEC section 11): the group row's own events.
GROUP_START, GROUP_JOIN = "parallel:start", "parallel:join"
_STEP_TYPES = frozenset(t for t in EVENT_TYPES if t.startswith("step:")) | {
    "signal:received",
    "approval:requested",
    "approval:decided",
    GROUP_START,
    GROUP_JOIN,
}
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
        elif e.type in ("workflow:cancel", "workflow:rollback_complete") and e.status:
            status = e.status  # a cancel that compensates: rolling_back, then cancelled
        elif e.type in _RUN_STATUS_OF:
            status = _RUN_STATUS_OF[e.type]
        elif e.type.startswith("step:") and status not in ("rolling_back", "cancelled"):
            status = "running"  # (an attempt that ends after a cancel leaves it cancelled)
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
        **step_counts(steps, steps_total),
        "error": error if status != "completed" else None,
        "executor": None,
        "created_at": _iso(first.ts),
        "updated_at": _iso(last.ts),
        "finished_at": _iso(last.ts) if finished else None,
        "duration_ms": duration if finished and duration is not None else _ms(first.ts, last.ts),
        "events": len(events),
    }


def event_item(e: TraceEvent) -> int | None:
    """The item index of an event of a for_each's item (its ``meta.item``), else None."""
    item = (e.meta or {}).get("item")
    return item if isinstance(item, int) and not isinstance(item, bool) else None


def event_branch(e: TraceEvent) -> str | None:
    """The branch of an event of a parallel's branch step (its ``meta.branch``), else None."""
    branch = (e.meta or {}).get("branch")
    return branch if isinstance(branch, str) else None


def event_row(e: TraceEvent) -> str:
    """The row an event is about, as the pages name it: ``notify[3]`` for an item's."""
    return step_label({"name": e.step, "item": event_item(e)})


def step_counts(steps: Sequence[dict[str, Any]], known: int | None = None) -> dict[str, int]:
    """Steps done and in all (``known``: the definition's count, when larger), and the same
    for the items of for_each steps, which are counted apart (a run of 3 steps can have
    1000 items)."""
    rows = [s for s in steps if s.get("item") is None]
    items = [s for s in steps if s.get("item") is not None]
    return {
        "steps_done": sum(1 for s in rows if s["status"] in DONE_VALUES),
        "steps_total": max(known or 0, len(rows)),
        "items_done": sum(1 for s in items if s["status"] in DONE_VALUES),
        "items_total": len(items),
    }


def derive_steps(events: Iterable[TraceEvent]) -> list[dict[str, Any]]:
    """Steps (status, attempts, duration, task id, error) from a run's events, in order;
    a parallel's branch steps and a for_each's items with their ``branch``/``item`` and
    ``parent`` (the group row's index), as ``StepState.to_dict`` has them."""
    steps: dict[str, dict[str, Any]] = {}
    branch_of: dict[str, Any] = {}  # branch name -> index of the parallel that started it
    for e in events:
        if e.step is None or e.type not in _STEP_TYPES:
            continue
        key = event_row(e)
        s = steps.setdefault(key, pending_step(e.step, e.step_index, e.kind or "step"))
        if e.step_index is not None:
            s["index"] = e.step_index
        branches = (e.meta or {}).get("branches")
        if e.type == GROUP_START and isinstance(branches, list):
            branch_of.update((str(b), e.step_index) for b in branches)
        if event_item(e) is not None:
            s["item"] = event_item(e)
        if event_branch(e) is not None:
            s["branch"] = event_branch(e)
            s["parent"] = branch_of.get(str(s["branch"]), s["parent"])
        if e.status in STEP_STATUSES:
            s["status"] = e.status
        if e.max_attempts:
            s["max_attempts"] = e.max_attempts
        if e.task_id:
            s["task_id"] = e.task_id
        if e.type in ("step:start", GROUP_START):
            s.update(attempts=e.attempt or s["attempts"] + 1, started_at=_iso(e.ts))
            s.update(error=None, finished_at=None, duration_ms=None, progress=None)
        elif e.type == "step:progress":
            s["progress"] = {**(e.meta or {}), "at": _iso(e.ts)}
        elif e.type in ("step:complete", "step:error", "step:skipped", "step:suspend", GROUP_JOIN):
            s.update(finished_at=_iso(e.ts), duration_ms=e.duration_ms)
        if e.type == "step:suspend":
            s["waiting_for"] = (e.meta or {}).get("signal")
        if e.error and e.type in ("step:error", "step:retry", "step:compensate_error"):
            s["error"] = e.error
        elif e.type in ("step:complete", "step:compensate"):
            s["error"] = None
    groups = {s["name"]: s["index"] for s in steps.values() if s["kind"] == "for_each"}
    for s in steps.values():
        if s["item"] is not None and s["parent"] is None:
            s["parent"] = groups.get(s["name"])
    return sorted(steps.values(), key=lambda s: (s["index"] is None, s["index"] or 0))


def attempt_log(events: Sequence[TraceEvent]) -> dict[str, list[dict[str, Any]]]:
    """Per row (``notify[3]`` for an item), its attempts (and compensation attempts) as
    bars: ``start_ms`` from the run's first event, ``duration_ms``, ``outcome`` and
    ``error``. A parallel's or for_each's row has one ``group`` bar per fan-out, from
    ``parallel:start`` to its join (or its failure)."""
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
        bars.setdefault(event_row(e), []).append(item)
        return item

    for e in events:
        if e.step is None or not e.type.startswith(("step:", "parallel:")):
            continue
        key = event_row(e)
        end_ms = _ms(t0, e.ts)
        if e.type in ("step:start", GROUP_START):
            if key in open_:
                open_[key]["outcome"] = "interrupted"
            phase = "group" if e.type == GROUP_START else "run"
            open_[key] = bar(e, phase, "running", end_ms)
        elif e.type == GROUP_JOIN or (e.kind in GROUP_KINDS and e.type in _ATTEMPT_END):
            item = open_.pop(key, None)
            if item is None:  # the step:complete after the join, or an error with no start
                done = bars.get(key, [])
                if done and done[-1]["phase"] == "group" and e.type == "step:error":
                    done[-1].update(outcome="failed", error=e.error)
                continue
            duration = e.duration_ms
            if duration is None:
                duration = max(0, end_ms - item["start_ms"])
            outcome = "failed" if e.type == "step:error" or e.status == "failed" else "completed"
            item.update(outcome=outcome, duration_ms=duration, error=e.error)
        elif e.type in _ATTEMPT_END:
            item = open_.pop(key, None) or bar(e, "run", "", max(0, end_ms - (e.duration_ms or 0)))
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
    from_events = {step_label(s): s for s in derive_steps(events)}
    from_definition = _max_attempts(definition)
    for s in steps:
        s["attempt_log"] = bars.get(step_label(s), [])
        if s.get("max_attempts") is None:
            seen = from_events.get(step_label(s), {}).get("max_attempts")
            s["max_attempts"] = seen or from_definition.get(s["name"])
    compensations = [event_row(e) for e in events if e.type == "step:compensate"]
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
            steps.sort(key=lambda s: (s["item"] is not None, order[s["name"]], s["item"] or 0))
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
    step = pending_step(d["name"], d["index"], d["kind"])
    step.update(branch=d.get("branch"), parent=d.get("parent"))
    return step


class DbSource:
    """Runs, steps and traces from a fluxcelery database; every value is redacted."""

    kind = "db"

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

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

        rows = ops.list_runs(self.engine, workflow, statuses, limit, offset)
        counts = ops.status_counts(self.engine, workflow)
        return {"runs": rows, "counts": counts, "workflows": self.storage.workflow_names()}

    def run(self, run_id: str) -> dict[str, Any] | None:

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
            **step_counts(steps),
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

        newest = self.storage.list_traces(
            run_id=run_id,
            workflow=workflow,
            type=types,
            since=since,
            limit=limit + 1,  # the newest, plus one to see whether there are more
            newest_first=True,
        )
        events = list(reversed(newest[:limit]))
        return ops.trace_rows(events, self.engine), len(newest) > limit

    def close(self) -> None:
        self.engine.close()
