"""Imported by a test worker (FLUX_WORKFLOWS=it_workflows,otel_setup): an OpenTelemetry SDK
provider that appends every finished span to the JSON-lines file OTEL_TEST_SPANS, with the
pid of the process that made it. Stands in for a user's own OpenTelemetry setup."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(
            json.dumps(
                {
                    "name": s.name,
                    "trace_id": s.context.trace_id if s.context else None,
                    "parent_span_id": s.parent.span_id if s.parent else None,
                    "start": s.start_time,
                    "end": s.end_time,
                    "attributes": dict(s.attributes or {}),
                    "pid": os.getpid(),
                }
            )
            + "\n"
            for s in spans
        )
        with open(self.path, "a") as f:  # one write per batch: whole lines across processes
            f.write(lines)
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["OTEL_TEST_SPANS"])))
trace.set_tracer_provider(provider)
