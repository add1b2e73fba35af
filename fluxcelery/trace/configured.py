"""The sinks a process gets from its settings (``FLUX_TRACE_FILE``, ``FLUX_TRACE_OTEL``)."""

from __future__ import annotations

import logging
from typing import Any

from ..settings import Settings
from .otel import OpenTelemetrySink
from .sinks import JsonFileTraceSink

log = logging.getLogger("fluxcelery.trace")


def sinks_from_settings(settings: Settings) -> list[Any]:
    """A sink that cannot be made is logged and left out: a trace sink never fails a run
    (``fluxcelery doctor`` reports it)."""
    sinks: list[Any] = []
    if settings.trace_file:
        try:
            sinks.append(JsonFileTraceSink(settings.trace_file))
        except OSError as exc:  # its directory cannot be made: on workers, every task
            # would otherwise retry as if the database were down
            log.error("FLUX_TRACE_FILE=%s ignored: %s", settings.trace_file, exc)
    if settings.trace_otel:
        try:
            sinks.append(OpenTelemetrySink())
        except ImportError as exc:
            log.error("FLUX_TRACE_OTEL=1 ignored: %s", exc)
    return sinks
