"""Testing workflows with pytest (SPEC section 18; docs/testing.md).

Install ``fluxcelery[testing]``; the plugin (``fluxcelery.testing.plugin``, registered by
entry point) gives the fixtures ``flux_clock``, ``flux_engine`` and ``flux_worker`` and the
option ``--flux-broker``. The names here work without pytest too: a ``FluxClock`` for an
engine of your own, the trace assertions, and the worker pieces the fixtures are made of.
"""

from __future__ import annotations

from .clock import FluxClock
from .traces import assert_trace, trace_of
from .worker import ClockDispatcher, FluxWorker, TimeSkippingCelery, build_test_app

__all__ = [
    "FluxClock",
    "FluxWorker",
    "assert_trace",
    "trace_of",
    "ClockDispatcher",
    "TimeSkippingCelery",
    "build_test_app",
]
