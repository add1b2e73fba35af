"""``RunHandle``: what ``start``/``delay``/``signal``/``retry`` return."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .core.errors import RunNotFound
from .core.records import FluxResult, RunState
from .core.states import SETTLED_RUN

if TYPE_CHECKING:
    from .engine import FluxEngine
    from .storage.pglisten import Waiter


class RunTimeout(TimeoutError):
    """``RunHandle.get`` waited ``timeout`` seconds and the run had not settled."""


class RunHandle:
    """A run in progress. ``get()`` waits on the SQL state, not on a Celery result backend."""

    def __init__(self, engine: FluxEngine, run_id: str) -> None:
        self.engine = engine
        self.id = run_id

    def __repr__(self) -> str:
        return f"<RunHandle {self.id}>"

    def state(self) -> RunState:
        state = self.engine.get(self.id)
        if state is None:
            raise RunNotFound(self.id)
        return state

    @property
    def status(self) -> str:
        return self.state().status.value

    def get(self, timeout: float | None = 60.0, interval: float = 0.02) -> FluxResult:
        """Wait until the run finishes or suspends; raise ``RunTimeout`` after ``timeout``.

        On PostgreSQL the write that settles the run wakes this wait (``LISTEN``/``NOTIFY``,
        one listening connection per process); elsewhere, or while that connection is down,
        it polls with a backoff from ``interval``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(interval, 0.005)
        waiter = _waiter(self.engine, self.id) if self.engine.push_get else None
        try:
            while True:
                state = self.state()
                if state.status in SETTLED_RUN:
                    return FluxResult.from_state(state)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise RunTimeout(
                        f"run {self.id} still {state.status.value} after {timeout}s "
                        f"(step {state.current_step}); are workers running?"
                    )
                if waiter is not None and waiter.listening:
                    # Woken by the settling write; re-read at least once a second anyway
                    # (a notification sent while the listener reconnected is lost).
                    waiter.wait(PUSH_RECHECK if left is None else min(left, PUSH_RECHECK))
                    if waiter.handed is not None and waiter.handed.status in SETTLED_RUN:
                        return FluxResult.from_state(waiter.handed)  # carried by the notice
                    continue
                time.sleep(delay if left is None else min(delay, left))
                delay = min(delay * 2, interval * 10, 0.25)
        finally:
            if waiter is not None:
                waiter.close()


#: With push (PostgreSQL), the longest a wait goes without reading the run.
PUSH_RECHECK = 1.0


def _waiter(engine: FluxEngine, run_id: str) -> Waiter | None:
    settle_waiter = getattr(engine.storage, "settle_waiter", None)
    if settle_waiter is None:
        return None
    try:
        waiter: Waiter | None = settle_waiter(run_id)
        return waiter
    except Exception:  # no listener (driver missing, database down): poll
        return None
