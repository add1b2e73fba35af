"""Trace events and sinks."""

from .event import EVENT_TYPES, TraceEvent, TraceSink
from .fanout import TraceFanout
from .otel import OpenTelemetrySink
from .sinks import ConsoleLogger, JsonFileTraceSink, SqlTraceSink, read_ndjson

__all__ = [
    "EVENT_TYPES",
    "ConsoleLogger",
    "JsonFileTraceSink",
    "OpenTelemetrySink",
    "SqlTraceSink",
    "TraceEvent",
    "TraceFanout",
    "TraceSink",
    "read_ndjson",
]
