"""Attempts running in this process, by run: ``engine.cancel(terminate=True)`` interrupts
them here (on Celery, a revoke with ``terminate`` does it in the pool process)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupts:
    """One event per run with an attempt running in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    @contextmanager
    def attempt(self, run_id: str) -> Iterator[threading.Event]:
        """The event that is set when this attempt must stop, while it runs."""
        event = threading.Event()
        with self._lock:
            self._events[run_id] = event
        try:
            yield event
        finally:
            with self._lock:
                if self._events.get(run_id) is event:
                    del self._events[run_id]

    def interrupt(self, run_id: str) -> bool:
        """Ask the attempt of ``run_id`` running in this process to stop; False if none."""
        with self._lock:
            event = self._events.get(run_id)
        if event is None:
            return False
        event.set()
        return True
