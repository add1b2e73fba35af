"""The Prometheus side: a ``prometheus_client`` collector that reads the store on each scrape.

Nothing is counted in the process: every value comes from the database when Prometheus
asks, so ``fluxcelery metrics`` on one host and the Flower tab on another report the same
numbers, and a restart resets nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..core.records import utcnow
from ..storage.base import Storage
from ..storage.sql import SqlStorage
from . import sql
from .model import AGE_STATUSES, GAUGE_STATUSES, Snapshot, snapshot_of

#: name, type, labels, help: one line per metric (docs/operations.md lists the same).
METRICS = (
    (
        "fluxcelery_runs_started_total",
        "counter",
        ("workflow",),
        "Runs started (a retry starts a run again).",
    ),
    (
        "fluxcelery_runs_finished_total",
        "counter",
        ("workflow", "status"),
        "Runs finished, by final status: completed, failed, rolled_back, cancelled.",
    ),
    (
        "fluxcelery_step_duration_seconds",
        "histogram",
        ("workflow", "step", "status"),
        "Duration of step attempts; status: completed, failed (for good), retried.",
    ),
    (
        "fluxcelery_runs",
        "gauge",
        ("workflow", "status"),
        "Stored runs by status, except completed and cancelled ones "
        "(see fluxcelery_runs_finished_total).",
    ),
    (
        "fluxcelery_oldest_run_age_seconds",
        "gauge",
        ("workflow", "status"),
        "Seconds since the oldest run in this status last changed; a pending run: since "
        "it was due.",
    ),
    (
        "fluxcelery_metrics_backlog_events",
        "gauge",
        (),
        "Trace events stored but not yet in the counters (the next scrapes catch up).",
    ),
)


def _family(name: str) -> Metric:
    _, kind, labels, help_text = next(m for m in METRICS if m[0] == name)
    base = name.removesuffix("_total")
    if kind == "counter":
        return CounterMetricFamily(base, help_text, labels=labels)
    if kind == "histogram":
        return HistogramMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


def families(snapshot: Snapshot) -> list[Metric]:
    """The metric families of one snapshot, in ``METRICS`` order, series sorted."""
    totals = snapshot.totals
    started = _family("fluxcelery_runs_started_total")
    for workflow, count in sorted(totals.started.items()):
        started.add_metric([workflow], count)  # type: ignore[attr-defined]
    finished = _family("fluxcelery_runs_finished_total")
    for (workflow, status), count in sorted(totals.finished.items()):
        finished.add_metric([workflow, status], count)  # type: ignore[attr-defined]
    durations = _family("fluxcelery_step_duration_seconds")
    for labels, series in sorted(totals.steps.items()):
        buckets = [(floatToGoString(ms / 1000), n) for ms, n in series.cumulative()]
        buckets.append(("+Inf", series.count))
        durations.add_metric(list(labels), buckets, series.sum_ms / 1000)  # type: ignore[attr-defined]
    runs = _family("fluxcelery_runs")
    ages = _family("fluxcelery_oldest_run_age_seconds")
    counted = {(g.workflow, g.status): g for g in snapshot.runs}
    # Every workflow seen gets a series per status, zero included: a panel or an alert
    # sees 0, not "no data", when the last suspended run of a workflow resumed.
    workflows = sorted(totals.workflows() | {w for w, _ in counted})
    for workflow in workflows:
        for status in GAUGE_STATUSES:
            group = counted.get((workflow, status))
            runs.add_metric([workflow, status], group.count if group else 0)  # type: ignore[attr-defined]
            age = snapshot.age_seconds(group) if group else None
            if age is not None and status in AGE_STATUSES:
                ages.add_metric([workflow, status], age)  # type: ignore[attr-defined]
    backlog = _family("fluxcelery_metrics_backlog_events")
    backlog.add_metric([], snapshot.backlog)  # type: ignore[attr-defined]
    return [started, finished, durations, runs, ages, backlog]


def read_snapshot(storage: Storage, now: datetime, limits: sql.Limits | None = None) -> Snapshot:
    """One scrape's values: the SQL rollup on a SQL store, every stored row otherwise."""
    if isinstance(storage, SqlStorage):
        return sql.read_snapshot(storage, now, limits or sql.Limits())
    return snapshot_of(storage, now)


class StoreCollector(Collector):
    """Reads ``storage`` on each ``collect`` (each scrape). ``clock``: the time ages are
    measured against (tests pass a fixed one)."""

    def __init__(
        self,
        storage: Storage,
        *,
        clock: Callable[[], datetime] = utcnow,
        limits: sql.Limits | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.limits = limits

    def collect(self) -> Iterator[Metric]:
        yield from families(read_snapshot(self.storage, self.clock(), self.limits))

    def describe(self) -> Iterator[Metric]:
        # The names without values: registering never reads the database.
        for name, *_ in METRICS:
            yield _family(name)


def registry_for(
    storage: Storage,
    *,
    clock: Callable[[], datetime] = utcnow,
    limits: sql.Limits | None = None,
) -> CollectorRegistry:
    """A registry holding only the store's metrics (no process or Python ones)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(storage, clock=clock, limits=limits))
    return registry


def exposition(
    storage: Storage,
    accept: str | None = None,
    *,
    clock: Callable[[], datetime] = utcnow,
    limits: sql.Limits | None = None,
) -> tuple[bytes, str]:
    """One scrape as ``(body, content type)``: Prometheus' text format, or OpenMetrics when
    ``accept`` (an HTTP ``Accept`` header) asks for it."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry_for(storage, clock=clock, limits=limits)), content_type
