"""What a metrics scrape reports, and the pure rules that derive it from stored rows.

Counters and histograms come from trace events (``classify``: which event counts where;
``bucket_of``: which bucket a step duration falls in); gauges from the runs table. Both
backends fold into the same ``Snapshot``: SQL through the rollup (``metrics/sql.py``), any
other ``Storage`` (memory) by reading every run and event (``snapshot_of``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ..core.states import TERMINAL_RUN, RunStatus
from ..storage.base import Storage
from ..trace.event import TraceEvent

#: Upper bounds (ms) of the step-duration buckets: 5 ms to an hour (steps that wait for an
#: approval or a signal can take days: they land in +Inf).
BUCKETS_MS = (
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
    900_000,
    3_600_000,
)
#: Grouped trace events: ``(workflow, type, status, step, le_ms, count, sum_ms)``.
EventRow = tuple[str, str, str | None, str | None, int, int, int]
#: ``flux_metric_totals`` rows: ``(metric, workflow, step, status, le_ms, count, sum_ms)``.
RollupRow = tuple[str, str, str, str, int, int, int]

#: ``le_ms`` of the bucket above the last bound.
INF = -1
#: ``le_ms`` of an event without a duration (counted by no bucket).
NO_DURATION = 0

# The rollup's kinds of series (``flux_metric_totals.metric``).
STARTED = "started"
FINISHED = "finished"
STEP = "step"

#: The trace event types that count somewhere (``classify``).
COUNTED_TYPES = (
    "workflow:start",
    "workflow:complete",
    "workflow:error",
    "workflow:cancel",
    "workflow:rollback_complete",
    "step:complete",
    "step:error",
    "step:retry",
)
#: Step events whose ``duration_ms`` is an attempt's duration, and the ``status`` label.
STEP_OUTCOMES = {"step:complete": "completed", "step:error": "failed", "step:retry": "retried"}

#: The statuses ``fluxcelery_runs`` counts: all but the final ``completed`` and
#: ``cancelled``, the bulk of a table that only retention bounds (their numbers are in
#: ``fluxcelery_runs_finished_total``). Failed and rolled-back runs stay until retried or
#: pruned, so they are counted.
GAUGE_STATUSES = tuple(
    s.value for s in RunStatus if s not in (RunStatus.COMPLETED, RunStatus.CANCELLED)
)
#: The statuses ``fluxcelery_oldest_run_age_seconds`` reports: runs not finished.
AGE_STATUSES = tuple(s.value for s in RunStatus if s not in TERMINAL_RUN)
_FINAL = frozenset(s.value for s in TERMINAL_RUN)


def classify(type: str, status: str | None) -> tuple[str, str] | None:
    """Where trace event ``type`` (with its ``status``) counts: ``(metric, status label)``,
    or None.

    A run starts at ``workflow:start`` (a retry starts it again). It finishes at
    ``workflow:complete`` or ``workflow:error`` (failed, or rolled back: the
    ``workflow:rollback_complete`` before that error is not counted twice), or when it ends
    ``cancelled`` (``workflow:cancel``, or ``workflow:rollback_complete`` after a cancel
    that compensated). An attempt's duration counts at ``step:complete``, ``step:error``
    and ``step:retry``.
    """
    if type == "workflow:start":
        return STARTED, ""
    if type == "workflow:complete":
        return FINISHED, status or RunStatus.COMPLETED.value
    if type == "workflow:error":
        return FINISHED, status if status in _FINAL else RunStatus.FAILED.value
    if type in ("workflow:cancel", "workflow:rollback_complete"):
        return (FINISHED, status) if status == RunStatus.CANCELLED.value else None
    outcome = STEP_OUTCOMES.get(type)
    return (STEP, outcome) if outcome is not None else None


def bucket_of(duration_ms: int | None) -> int:
    """The ``le_ms`` of the bucket a duration falls in (``NO_DURATION`` for none)."""
    if duration_ms is None:
        return NO_DURATION
    for bound in BUCKETS_MS:
        if duration_ms <= bound:
            return bound
    return INF


@dataclass
class Histogram:
    """One series of step durations: counts per bucket (not cumulative), and their sum."""

    buckets: dict[int, int] = field(default_factory=dict)
    count: int = 0
    sum_ms: int = 0

    def add(self, le_ms: int, count: int, sum_ms: int) -> None:
        self.buckets[le_ms] = self.buckets.get(le_ms, 0) + count
        self.count += count
        self.sum_ms += sum_ms

    def cumulative(self) -> list[tuple[int, int]]:
        """``(bound_ms, count of durations <= bound)`` for each of ``BUCKETS_MS``. A count
        stored under a bound no longer in the list (a release that changed them) goes to
        the next greater bound, or only to +Inf."""
        out = []
        for bound in BUCKETS_MS:
            below = sum(n for le, n in self.buckets.items() if le != INF and le <= bound)
            out.append((bound, below))
        return out


@dataclass
class Totals:
    """The counters and histograms, as counts since counting began."""

    started: dict[str, int] = field(default_factory=dict)
    finished: dict[tuple[str, str], int] = field(default_factory=dict)
    steps: dict[tuple[str, str, str], Histogram] = field(default_factory=dict)

    def add(
        self,
        metric: str,
        workflow: str,
        step: str,
        status: str,
        le_ms: int,
        count: int,
        sum_ms: int,
    ) -> None:
        """Add a rollup row (``flux_metric_totals``'s columns)."""
        if metric == STARTED:
            self.started[workflow] = self.started.get(workflow, 0) + count
        elif metric == FINISHED:
            key = (workflow, status)
            self.finished[key] = self.finished.get(key, 0) + count
        elif metric == STEP and le_ms != NO_DURATION:
            series = self.steps.setdefault((workflow, step, status), Histogram())
            series.add(le_ms, count, sum_ms)

    def add_events(
        self, rows: Iterable[tuple[str, str, str | None, str | None, int, int, int]]
    ) -> None:
        """Add grouped trace events: ``(workflow, type, status, step, le_ms, count,
        sum_ms)`` (``le_ms`` from ``bucket_of``)."""
        for row in rollup_rows(rows):
            self.add(*row)

    def workflows(self) -> set[str]:
        return set(self.started) | {w for w, _ in self.finished} | {w for w, _, _ in self.steps}


def rollup_rows(rows: Iterable[EventRow]) -> list[RollupRow]:
    """Grouped trace events ``(workflow, type, status, step, le_ms, count, sum_ms)`` as
    rollup rows ``(metric, workflow, step, status, le_ms, count, sum_ms)``, merged by key;
    events that count nowhere are left out."""
    merged: dict[tuple[str, str, str, str, int], list[int]] = {}
    for workflow, type, status, step, le_ms, count, sum_ms in rows:
        where = classify(type, status)
        if where is None:
            continue
        metric, label = where
        if metric != STEP:
            key = (metric, workflow, "", label, NO_DURATION)
            sum_ms = 0
        elif le_ms == NO_DURATION:
            continue
        else:
            key = (metric, workflow, step or "", label, le_ms)
        total = merged.setdefault(key, [0, 0])
        total[0] += count
        total[1] += sum_ms
    return [(*key, count, sum_ms) for key, (count, sum_ms) in merged.items()]


@dataclass(frozen=True)
class RunGroup:
    """Stored runs of one workflow in one status; ``oldest``: the earliest time one of
    them last changed (a pending run: since it was due), for ``AGE_STATUSES``."""

    workflow: str
    status: str
    count: int
    oldest: datetime | None = None


@dataclass
class Snapshot:
    """Everything one scrape reports."""

    now: datetime
    totals: Totals
    runs: list[RunGroup]
    #: Trace events stored but not counted yet (a scrape reads a bounded number of new
    #: events; the next scrapes catch up).
    backlog: int = 0

    def age_seconds(self, group: RunGroup) -> float | None:
        if group.oldest is None:
            return None
        return max(0.0, (self.now - group.oldest).total_seconds())


def group_events(
    events: Iterable[TraceEvent],
) -> list[tuple[str, str, str | None, str | None, int, int, int]]:
    """Trace events as grouped rows, the way the SQL rollup reads them."""
    rows: dict[tuple[str, str, str | None, str | None, int], list[int]] = {}
    for e in events:
        if e.type not in COUNTED_TYPES:
            continue
        le = bucket_of(e.duration_ms) if e.type in STEP_OUTCOMES else NO_DURATION
        total = rows.setdefault((e.workflow, e.type, e.status, e.step, le), [0, 0])
        total[0] += 1
        total[1] += e.duration_ms or 0
    return [(*key, count, sum_ms) for key, (count, sum_ms) in rows.items()]


def snapshot_of(storage: Storage, now: datetime) -> Snapshot:
    """A snapshot read through the ``Storage`` protocol: every stored event and every run
    in ``GAUGE_STATUSES`` (for ``MemoryStorage``, and any store without SQL). Counters
    drop what the store no longer holds (pruned runs, a trace cap)."""
    totals = Totals()
    totals.add_events(group_events(storage.list_traces(limit=None)))
    groups: dict[tuple[str, str], list[datetime | None]] = {}
    for run in storage.list_runs(status=GAUGE_STATUSES, limit=None):
        status = run.status.value
        since: datetime | None = run.updated_at
        if status == RunStatus.PENDING.value and run.not_before is not None:
            since = run.not_before if run.not_before <= now else None  # not due: not waiting
        groups.setdefault((run.workflow, status), []).append(since)
    runs = []
    for (workflow, status), times in sorted(groups.items()):
        known = [t for t in times if t is not None]
        oldest = min(known) if known and status in AGE_STATUSES else None
        runs.append(RunGroup(workflow, status, len(times), oldest))
    return Snapshot(now=now, totals=totals, runs=runs)
