"""``fluxcelery profile``: how each step behaves, read from the stored trace (SPEC section 17).

Per workflow and step: attempts, runs, attempt wall time (``duration_ms``: p50, p95, max),
retry and failure rates, queue wait, and the CPU time of the attempts against their wall time
(``meta.cpu_ms`` of each attempt's outcome, measured on the thread that ran the handler: see
runner/usage.py), which tells CPU-bound steps from I/O-bound ones. The judgement leaves out
the time a handler was ready but waited for a core (``meta.run_delay_ms``, where the OS
tells): on an oversubscribed host that wait stretches a CPU-bound step's wall time until it
looks I/O-bound. ``sizing.py`` turns the profile into a recommendation per Celery queue.

The analysis is pure (events in, numbers out; table-tested); ``read_events`` at the bottom is
the only I/O: bounded pages of ``Storage.list_traces``, newest first, up to a cap.

Queue wait is measured from the moment a step became due to its ``step:start`` (the worker
took its task), and is an approximation: the due moment is the latest event of the run that
lets a step go — the previous step's completion (or skip), a signal, an approval's decision,
a group's fan-out (``parallel:start``), a retry's due time (``step:retry`` ts +
``meta.delay_s``), and for a run's first step the run's own due time (``Storage.due_times``:
``created_at``, or ``not_before`` after a countdown), since ``workflow:start`` is written by
the worker that takes it. A branch step is due at its branch's previous step or the fan-out;
a for_each item at the latest fan-out or sibling completion (when a slot freed). Redelivered
attempts (a worker died) are left out. Clocks of different hosts add their skew.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .trace.event import TraceEvent

if TYPE_CHECKING:
    from .storage.base import Storage

#: The outcome of an attempt: each carries the attempt's ``duration_ms`` and ``meta.cpu_ms``.
OUTCOMES = ("step:complete", "step:retry", "step:error", "step:suspend")
#: Events after which a step may be due (see the module's docstring).
DUE_EVENTS = (
    "workflow:start",
    "step:complete",
    "step:skipped",
    "signal:received",
    "approval:decided",
    "parallel:start",
)
#: Every event type the profile reads.
READ_TYPES = tuple(dict.fromkeys(("step:start", *OUTCOMES, *DUE_EVENTS)))
#: Steps that fan out: they run no handler (their rows do), so they are not profiled.
GROUP_KINDS = frozenset({"parallel", "for_each"})

#: An attempt that spends at least this share of its wall time on the CPU is CPU-bound.
CPU_BOUND = 0.5
#: Attempts shorter than this (mean wall time) are too short to judge: ``fast``.
FAST_MS = 5.0
#: Events read at most (the newest ones); the output says when the cap was reached.
DEFAULT_CAP = 200_000
#: Events per query while reading.
PAGE = 5_000


# -- the math --------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated between the two
    nearest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * min(max(q, 0.0), 100.0) / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def cpu_ratio(cpu_ms: float, wall_ms: float) -> float:
    """CPU time over wall time (1.0 for CPU time with no wall time: attempts under 1 ms)."""
    if wall_ms <= 0:
        return 0.0 if cpu_ms <= 0 else 1.0
    return min(1.0, cpu_ms / wall_ms)


def classify(ratio: float | None, mean_ms: float) -> str | None:
    """``"cpu"`` (CPU-bound: CPU time over wall time at least ``CPU_BOUND``), ``"io"``
    (I/O-bound: it mostly waits), ``"fast"`` (attempts of ``mean_ms`` under ``FAST_MS``,
    too short to judge: they weigh on no pool), or None (no CPU time recorded)."""
    if ratio is None:
        return None
    if mean_ms < FAST_MS:
        return "fast"
    return "cpu" if ratio >= CPU_BOUND else "io"


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def rate_of(part: float, whole: float) -> float | None:
    return min(1.0, part / whole) if whole > 0 else None


def ms_between(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000


# -- per step --------------------------------------------------------------------------------
@dataclass
class StepProfile:
    """What the trace says of one step of one workflow (durations in milliseconds)."""

    workflow: str
    step: str
    kind: str | None = None
    #: Its place in the workflow (the lowest row index seen).
    index: int | None = None
    #: Runs in which the step had an attempt.
    runs: int = 0
    #: Attempts that ended (an outcome event each).
    attempts: int = 0
    completed: int = 0
    #: Attempts that failed and were retried (``step:retry``).
    retried: int = 0
    #: Times the step failed for good (``step:error``).
    failed: int = 0
    #: Attempts that returned ``wait_for`` (``step:suspend``).
    suspended: int = 0
    durations: list[float] = field(default_factory=list, repr=False)
    waits: list[float] = field(default_factory=list, repr=False)
    #: CPU and wall time of the attempts that recorded their CPU time, and of those the
    #: time spent waiting for a core (where it was recorded).
    cpu_ms: float = 0.0
    cpu_wall_ms: float = 0.0
    cpu_attempts: int = 0
    run_delay_ms: float = 0.0
    run_ids: set[str] = field(default_factory=set, repr=False)

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.durations, 50)

    @property
    def p95_ms(self) -> float | None:
        return percentile(self.durations, 95)

    @property
    def max_ms(self) -> float | None:
        return max(self.durations) if self.durations else None

    @property
    def total_ms(self) -> float:
        return sum(self.durations)

    @property
    def ready_total_ms(self) -> float:
        """``total_ms`` less the time spent waiting for a core (what the attempts would
        take on a host with a core free for each)."""
        return max(self.cpu_ms, self.total_ms - self.run_delay_ms)

    @property
    def retry_rate(self) -> float | None:
        """Share of attempts that failed and were retried."""
        return rate(self.retried, self.attempts)

    @property
    def failure_rate(self) -> float | None:
        """Share of the step's executions that ended (completed, suspended or failed for
        good) that failed for good."""
        return rate(self.failed, self.completed + self.suspended + self.failed)

    @property
    def cpu_ratio(self) -> float | None:
        """CPU time over wall time of the attempts."""
        return cpu_ratio(self.cpu_ms, self.cpu_wall_ms) if self.cpu_attempts else None

    @property
    def run_delay_share(self) -> float | None:
        """Share of the attempts' wall time spent waiting for a core."""
        return rate_of(self.run_delay_ms, self.cpu_wall_ms) if self.cpu_attempts else None

    @property
    def ready_ratio(self) -> float | None:
        """CPU time over the wall time not spent waiting for a core: what ``bound`` is
        judged by."""
        if not self.cpu_attempts:
            return None
        return cpu_ratio(self.cpu_ms, max(self.cpu_ms, self.cpu_wall_ms - self.run_delay_ms))

    @property
    def bound(self) -> str | None:
        if not self.cpu_attempts:
            return None
        return classify(self.ready_ratio, self.cpu_wall_ms / self.cpu_attempts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "step": self.step,
            "kind": self.kind,
            "index": self.index,
            "runs": self.runs,
            "attempts": self.attempts,
            "completed": self.completed,
            "retried": self.retried,
            "failed": self.failed,
            "suspended": self.suspended,
            "p50_ms": _round(self.p50_ms),
            "p95_ms": _round(self.p95_ms),
            "max_ms": _round(self.max_ms),
            "retry_rate": _round(self.retry_rate, 4),
            "failure_rate": _round(self.failure_rate, 4),
            "queue_wait_p50_ms": _round(percentile(self.waits, 50)),
            "queue_wait_p95_ms": _round(percentile(self.waits, 95)),
            "queue_waits": len(self.waits),
            "cpu_ms": _round(self.cpu_ms),
            "cpu_attempts": self.cpu_attempts,
            "cpu_ratio": _round(self.cpu_ratio, 3),
            "run_delay_share": _round(self.run_delay_share, 3),
            "ready_ratio": _round(self.ready_ratio, 3),
            "bound": self.bound,
        }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _meta(event: TraceEvent) -> Mapping[str, Any]:
    return event.meta if isinstance(event.meta, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def chronological(events: Iterable[TraceEvent]) -> list[TraceEvent]:
    """By time, keeping the stored order of events with the same time."""
    return sorted(events, key=lambda e: e.ts)


def profile_steps(
    events: Iterable[TraceEvent], due: Mapping[str, datetime] | None = None
) -> dict[tuple[str, str], StepProfile]:
    """Every step's profile, by (workflow, step), from trace events (any order: they are
    sorted by time first). ``due``: when each run's first step was due
    (``Storage.due_times``); without it a first step waits from its ``workflow:start``."""
    steps: dict[tuple[str, str], StepProfile] = {}
    open_starts: set[tuple[str, int | None, int | None]] = set()
    clock = DueClock(due or {})
    for e in chronological(events):
        if e.step is None or e.kind in GROUP_KINDS:
            clock.see(e)
            continue
        key = (e.workflow, e.step)
        if e.type in ("step:start", *OUTCOMES) and e.step_index is not None:
            p = steps.setdefault(key, StepProfile(e.workflow, e.step, e.kind))
            p.index = e.step_index if p.index is None else min(p.index, e.step_index)
        if e.type == "step:start":
            wait = clock.wait(e)
            p = steps.setdefault(key, StepProfile(e.workflow, e.step, e.kind))
            if wait is not None:
                p.waits.append(wait)
            open_starts.add((e.run_id, e.step_index, e.attempt))
        elif e.type in OUTCOMES:
            p = steps.setdefault(key, StepProfile(e.workflow, e.step, e.kind))
            started = (e.run_id, e.step_index, e.attempt) in open_starts
            open_starts.discard((e.run_id, e.step_index, e.attempt))
            _count_outcome(p, e, started)
        clock.see(e)
    for p in steps.values():
        p.runs = len(p.run_ids)
    return steps


def _count_outcome(p: StepProfile, e: TraceEvent, started: bool) -> None:
    """Count one outcome event. A ``step:error`` is an attempt's outcome when its start was
    read or it has a CPU time; otherwise the step failed outside an attempt (an expired
    wait, a lost worker) and only the failure counts."""
    p.kind = p.kind or e.kind
    meta = _meta(e)
    cpu = _number(meta.get("cpu_ms"))
    if e.type == "step:complete":
        p.completed += 1
    elif e.type == "step:retry":
        p.retried += 1
    elif e.type == "step:suspend":
        p.suspended += 1
    else:
        p.failed += 1
        if not started and cpu is None:
            return
    p.attempts += 1
    p.run_ids.add(e.run_id)
    if e.duration_ms is None:
        return
    p.durations.append(float(e.duration_ms))
    if cpu is not None:
        p.cpu_ms += cpu
        p.cpu_wall_ms += float(e.duration_ms)
        p.cpu_attempts += 1
        p.run_delay_ms += _number(meta.get("run_delay_ms")) or 0.0


class DueClock:
    """When the next step of each run (branch, item) became due, as events go by in time
    order; ``wait`` is a ``step:start``'s queue wait in milliseconds (see the module's
    docstring), or None when its due moment was not read or the attempt was redelivered."""

    def __init__(self, due: Mapping[str, datetime]) -> None:
        self.first_due = due
        self.run: dict[str, datetime] = {}
        self.branch: dict[tuple[str, Any], datetime] = {}
        self.fanout: dict[str, datetime] = {}
        self.retry: dict[tuple[str, int | None], datetime] = {}

    def see(self, e: TraceEvent) -> None:
        meta = _meta(e)
        if e.type == "step:retry":
            delay = _number(meta.get("delay_s")) or 0.0
            self.retry[(e.run_id, e.step_index)] = e.ts + timedelta(seconds=delay)
        elif e.type == "workflow:start":
            first = None if meta.get("retry") else self.first_due.get(e.run_id)
            self.run[e.run_id] = min(first, e.ts) if first is not None else e.ts
        elif e.type == "parallel:start":
            self.run[e.run_id] = self.fanout[e.run_id] = e.ts
        elif e.type in DUE_EVENTS:
            if meta.get("branch") is not None:
                self.branch[(e.run_id, meta["branch"])] = e.ts
            else:
                self.run[e.run_id] = e.ts

    def wait(self, start: TraceEvent) -> float | None:
        meta = _meta(start)
        if meta.get("redelivered"):
            return None
        due = self.retry.pop((start.run_id, start.step_index), None)
        if due is None or (start.attempt or 1) <= 1:
            due = self._due(start.run_id, meta.get("branch"))
        if due is None:
            return None
        return max(0.0, ms_between(due, start.ts))

    def _due(self, run_id: str, branch: Any) -> datetime | None:
        if branch is None:
            return self.run.get(run_id)
        known = [t for t in (self.branch.get((run_id, branch)), self.fanout.get(run_id)) if t]
        return max(known) if known else None


# -- per workflow ----------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkflowProfile:
    """One workflow: its runs seen, the rate they came at, and its steps (in their order
    in the workflow)."""

    workflow: str
    runs: int
    #: Runs per second between the first and the last event read of this workflow.
    observed_rate: float | None
    steps: tuple[StepProfile, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "runs": self.runs,
            "observed_rate": _round(self.observed_rate, 3),
            "steps": [s.to_dict() for s in self.steps],
        }


def profile_workflows(
    events: Sequence[TraceEvent], due: Mapping[str, datetime] | None = None
) -> list[WorkflowProfile]:
    """Every workflow in ``events``, sorted by name, with its steps' profiles."""
    steps = profile_steps(events, due)
    runs: dict[str, set[str]] = defaultdict(set)
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    for e in events:
        runs[e.workflow].add(e.run_id)
        first[e.workflow] = min(first.get(e.workflow, e.ts), e.ts)
        last[e.workflow] = max(last.get(e.workflow, e.ts), e.ts)
    out = []
    for name in sorted(runs):
        span = (last[name] - first[name]).total_seconds()
        n = len(runs[name])
        own = tuple(
            sorted(
                (p for (wf, _), p in steps.items() if wf == name),
                key=lambda p: (p.index if p.index is not None else 1 << 30, p.step),
            )
        )
        out.append(WorkflowProfile(name, n, n / span if span > 0 else None, own))
    return out


# -- reading (the only I/O) ------------------------------------------------------------------
@dataclass(frozen=True)
class Read:
    """What ``read_events`` read: the events in time order, and whether it stopped at the
    cap (then only the newest ``cap`` events were read)."""

    events: list[TraceEvent]
    capped: bool
    cap: int


def read_events(
    storage: Storage,
    *,
    workflow: str | None = None,
    since: datetime | None = None,
    cap: int = DEFAULT_CAP,
    page: int = PAGE,
    on_page: Callable[[int], None] | None = None,
) -> Read:
    """The events the profile needs, newest first in pages of ``page`` until ``cap``
    (``on_page(read so far)`` after each). Events written while this reads shift the pages;
    the ones seen twice are dropped by id."""
    seen: dict[str, TraceEvent] = {}
    offset = 0
    capped = False
    while True:
        size = min(page, cap - len(seen))
        if size <= 0:
            capped = True
            break
        batch = storage.list_traces(
            workflow=workflow,
            type=READ_TYPES,
            since=since,
            limit=size,
            offset=offset,
            newest_first=True,
        )
        offset += len(batch)
        for e in batch:
            seen.setdefault(e.id, e)
        if on_page is not None:
            on_page(len(seen))
        if len(batch) < size:
            break
    events = list(seen.values())
    events.reverse()  # written order, oldest first
    return Read(chronological(events), capped, cap)


def first_starts(events: Iterable[TraceEvent]) -> list[str]:
    """Runs whose first start (``workflow:start`` not of a retry) is in ``events``: those
    whose due time ``Storage.due_times`` is asked for."""
    return [e.run_id for e in events if e.type == "workflow:start" and not _meta(e).get("retry")]
