"""Trace events as OpenTelemetry spans (``pip install "fluxcelery[otel]"``).

A run's events come from many processes (the producer, a worker per step task), so the sink
keeps no span open between events: each span is made whole from one event that knows its
duration. A step attempt's span comes from its outcome (``step:complete``, ``step:error``,
``step:retry``, ``step:suspend``, ``step:compensate``, ``step:compensate_error``), the run's
from its end (``workflow:complete``, ``workflow:error``), and the events between
(``signal:received``, ``approval:*``, ``step:skipped``, ``workflow:cancel``,
``workflow:rollback_*``, ``hook:error``) are zero-length spans. ``workflow:start`` and
``step:start`` add nothing the later span does not show.

Every span of a run joins one trace, whichever process sends it: the trace id and the parent
span id are derived from the run id. That parent is not a span any process exports (a span's
own id cannot be chosen through the API), so a trace view shows the run span and its step
spans side by side under a parent it does not have.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from ..version import __version__
from .event import FIELDS, TraceEvent

#: Events whose span is the step attempt (or compensation) that just ended.
STEP_OUTCOMES = frozenset(
    {
        "step:complete",
        "step:error",
        "step:retry",
        "step:suspend",
        "step:compensate",
        "step:compensate_error",
    }
)
RUN_ENDS = frozenset({"workflow:complete", "workflow:error"})
#: Events that are spans of their own (zero-length): the rest are covered by a later span.
POINTS = frozenset(
    {
        "signal:received",
        "approval:requested",
        "approval:decided",
        "step:skipped",
        "workflow:cancel",
        "workflow:rollback_start",
        "workflow:rollback_complete",
        "hook:error",
    }
)
FAILURES = frozenset({"step:error", "step:compensate_error", "workflow:error", "hook:error"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The fields that are span attributes as they are (the span has its own times and name).
_ATTRIBUTE_FIELDS = tuple(f for f in FIELDS if f not in ("id", "ts", "type", "meta"))


def run_trace_ids(run_id: str) -> tuple[int, int]:
    """The trace id (128 bits) and parent span id (64 bits) of every span of ``run_id``."""
    digest = hashlib.sha256(run_id.encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1  # zero is the invalid id
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


def _ns(ts: datetime) -> int:
    """Nanoseconds since the epoch, exactly (a float timestamp loses the microseconds)."""
    return (ts - _EPOCH) // timedelta(microseconds=1) * 1000


def span_name(event: TraceEvent) -> str:
    """The Celery task name of a step attempt (``flux.<workflow>.<step>``, ``….compensate``),
    ``flux.<workflow>`` for the run, and ``flux.<workflow> <event type>`` for the rest."""
    if event.type in STEP_OUTCOMES and event.step:
        suffix = ".compensate" if event.type.startswith("step:compensate") else ""
        return f"flux.{event.workflow}.{event.step}{suffix}"
    if event.type in RUN_ENDS:
        return f"flux.{event.workflow}"
    return f"flux.{event.workflow} {event.type}"


def span_attributes(event: TraceEvent) -> dict[str, Any]:
    """The event's fields as ``flux.*`` attributes (``meta`` as JSON text; it is redacted)."""
    attrs: dict[str, Any] = {"flux.event": event.type, "flux.event_id": event.id}
    for key in _ATTRIBUTE_FIELDS:
        value = getattr(event, key)
        if value is not None:
            attrs[f"flux.{key}"] = value
    if event.meta:
        attrs["flux.meta"] = json.dumps(event.meta, default=str, ensure_ascii=False)
    return attrs


class OpenTelemetrySink:
    """Trace events as OpenTelemetry spans, through ``tracer_provider`` (default: the global
    one, which ``opentelemetry-instrument`` or your own SDK setup configures). Workers get it
    with ``FLUX_TRACE_OTEL=1``."""

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode
        except ImportError:
            raise ImportError(
                'OpenTelemetrySink needs OpenTelemetry: pip install "fluxcelery[otel]"'
            ) from None

        self._trace = trace
        self._parent_span = NonRecordingSpan
        self._span_context = SpanContext
        self._status = Status
        self._error = StatusCode.ERROR
        self._sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        self.tracer = trace.get_tracer("fluxcelery", __version__, tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        return "OpenTelemetrySink()"

    def emit(self, event: TraceEvent) -> None:
        if event.type in STEP_OUTCOMES or event.type in RUN_ENDS:
            duration = (event.duration_ms or 0) * 1_000_000
        elif event.type in POINTS:
            duration = 0
        else:
            return
        end = _ns(event.ts)
        span = self.tracer.start_span(
            span_name(event),
            context=self._run_context(event.run_id),
            attributes=span_attributes(event),
            start_time=end - duration,
        )
        if event.type in FAILURES or event.type == "step:retry":  # the attempt raised
            span.set_status(self._status(self._error, event.error or event.type))
        span.end(end_time=end)

    def _run_context(self, run_id: str) -> Any:
        trace_id, span_id = run_trace_ids(run_id)
        parent = self._span_context(
            trace_id=trace_id, span_id=span_id, is_remote=True, trace_flags=self._sampled
        )
        return self._trace.set_span_in_context(self._parent_span(parent))
