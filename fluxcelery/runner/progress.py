"""``ctx.progress`` for one attempt of one step: throttled, guarded, never failing the step.

A report updates the step in memory at once (the attempt's outcome is saved with the newest
one) and is stored out of band at most every ``INTERVAL`` (``Storage.record_progress``: no
version bump, so a report can never turn the attempt's own outcome into a concurrent
update). When the attempt ends, the newest report not yet stored is stored. A commit step's
reports wait for its outcome instead: its handler's transaction may hold the database (SQLite
takes the write lock), and a second connection writing beside it would wait on it.

On Celery, a task that has a result backend passes ``listener`` (``update_state``) through
``LISTENER``: it gets each stored report.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from ..core import transitions as t
from ..core.transitions import Transition
from .change import Change
from .runtime import Runtime

log = logging.getLogger("fluxcelery.progress")

#: How often a step's reports are stored at most.
INTERVAL = timedelta(seconds=0.5)
#: Set by a Celery step task with a result backend: receives each stored report.
LISTENER: ContextVar[Callable[[dict[str, Any]], None] | None] = ContextVar(
    "fluxcelery_progress_listener", default=None
)


class ProgressReporter:
    """Receives one attempt's ``ctx.progress`` calls (from the handler's thread, or a
    thread the attempt was abandoned in: those after ``close`` are dropped)."""

    def __init__(
        self,
        rt: Runtime,
        change: Change,
        index: int,
        *,
        deferred: bool,
        max_attempts: int | None = None,
    ) -> None:
        self.rt = rt
        self.max_attempts = max_attempts
        self.change = change
        self.index = index
        self.attempt = change.state.steps[index].attempts
        self.deferred = deferred
        self.listener = LISTENER.get()
        self._lock = threading.Lock()
        self._stored_at: datetime | None = None
        self._pending: Transition | None = None
        self._closed = False

    def __call__(self, done: float, total: float | None, message: str | None) -> None:
        with self._lock:
            if self._closed:
                return
            now = self.rt.clock()
            self._pending = t.report_progress(
                self.change.state,
                self.index,
                done=done,
                total=total,
                message=message,
                at=now,
                max_attempts=self.max_attempts,
            )
            if self._stored_at is not None and now - self._stored_at < INTERVAL:
                return
            self._stored_at = now
            if not self.deferred:
                self._write(self._pending)
                self._pending = None
            self._notify()

    def close(self) -> Transition | None:
        """The attempt ended: store the newest report not stored yet. A commit step's comes
        back instead, for the caller to save with the outcome."""
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, None
            if pending is None or self.deferred:
                return pending
            self._write(pending)
            self._notify()
            return None

    def _write(self, report: Transition) -> None:
        state = self.change.state
        try:
            self.rt.storage.record_progress(
                state.id, self.index, self.attempt, self._progress(), report.events
            )
        except Exception as exc:  # progress is best effort: the step goes on
            log.warning("progress of step %s of run %s not stored: %s", self.index, state.id, exc)

    def _notify(self) -> None:
        if self.listener is not None:
            try:
                self.listener(self._progress())
            except Exception as exc:
                log.warning("progress listener failed: %s", exc)

    def _progress(self) -> dict[str, Any]:
        return self.change.state.steps[self.index].progress or {}
