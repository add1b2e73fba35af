"""The sinks a process gets from its settings (``FLUX_TRACE_FILE``, ``FLUX_TRACE_OTEL``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..settings import Settings


def sinks_from_settings(settings: Settings) -> list[Any]:
    sinks: list[Any] = []
    if settings.trace_file:
        from .sinks import JsonFileTraceSink

        sinks.append(JsonFileTraceSink(settings.trace_file))
    if settings.trace_otel:
        from .otel import OpenTelemetrySink

        sinks.append(OpenTelemetrySink())
    return sinks
