"""``RunHandle``: what ``start``/``delay``/``signal``/``retry`` return."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .core.errors import RunNotFound
from .core.records import FluxResult, RunState
from .core.states import SETTLED_RUN

if TYPE_CHECKING:
    from .engine import FluxEngine


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
        """Wait until the run finishes or suspends; raise ``RunTimeout`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(interval, 0.005)
        while True:
            state = self.state()
            if state.status in SETTLED_RUN:
                return FluxResult.from_state(state)
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(
                    f"run {self.id} still {state.status.value} after {timeout}s "
                    f"(step {state.current_step}); are workers running?"
                )
            time.sleep(delay)
            delay = min(delay * 2, interval * 10, 0.25)
