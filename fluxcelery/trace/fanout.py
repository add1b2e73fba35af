"""Sends each event to every sink; a failing or slow sink never fails a run."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Sequence
from typing import Any

from .event import TraceEvent

log = logging.getLogger("fluxcelery.trace")


class TraceFanout:
    def __init__(self, sinks: Sequence[Any] = ()) -> None:
        for sink in sinks:
            if not callable(getattr(sink, "emit", None)):
                raise TypeError(f"trace sink {sink!r} has no emit(event) method")
        self.sinks = list(sinks)
        self.errors = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def emit_all(self, events: Sequence[TraceEvent]) -> None:
        for sink in self.sinks:
            many = getattr(sink, "emit_many", None)
            if many is not None:  # a batch per state change (one write for a file sink)
                try:
                    many(events)
                except Exception as exc:  # a sink must never fail a run
                    self._count(sink, exc)
                continue
            for event in events:
                try:
                    out = sink.emit(event)
                    if inspect.isawaitable(out):
                        self._schedule(out)
                except Exception as exc:
                    self._count(sink, exc)

    def _count(self, sink: Any, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            n = self.errors
        if n <= 10 or n % 1000 == 0:
            log.warning("trace sink %r failed (%d errors so far): %s", sink, n, exc)

    def _schedule(self, awaitable: Any) -> None:
        loop = self._background_loop()

        async def guarded() -> None:
            try:
                await awaitable
            except Exception as exc:
                self._count("async sink", exc)

        asyncio.run_coroutine_threadsafe(guarded(), loop)

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="flux-trace-loop", daemon=True
                ).start()
                self._loop = loop
            return self._loop
