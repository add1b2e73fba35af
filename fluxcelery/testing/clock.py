"""``FluxClock``: the time of a test, moved on by hand (``advance``) or by the waits a run
takes (retry backoff, countdowns), never by waiting.

An engine built with ``clock=flux_clock, sleep=flux_clock.sleep, timer=flux_clock.call_later``
stamps every transition with the clock's time, skips its backoff sleeps (the clock moves on by
the delay instead) and times its waits on the clock. ``advance(seconds)`` then fires what falls
due: the timers, and the waits (``wait_for`` timeouts, approval timeouts) of the runs of every
engine the clock ``watch``es, in the order of their deadlines, each at its deadline.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from ..core.records import utcnow
from ..core.states import RunStatus, StepStatus
from ..engine import FluxEngine

#: At most this many timers and waits fire in one ``advance`` (a loop that keeps scheduling
#: work that is due at once stops here, with an error naming it).
MAX_FIRED = 10_000


class FluxClock:
    """A controllable clock: ``now()`` (or calling the clock) gives its time, which moves
    only when told to.

    ``start``: its first time (default: the real time when it was made, in UTC).
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError(f"FluxClock(start=...) needs an aware datetime, got {start!r}")
        self._now = start or utcnow()
        self._lock = threading.RLock()
        self._timers: list[tuple[datetime, int, Callable[[], Any]]] = []
        self._seq = itertools.count()
        self._engines: list[FluxEngine] = []
        self._fired: set[tuple[int, str, int, datetime]] = set()
        #: Every delay passed to ``sleep`` (the backoff an engine skipped), in order.
        self.sleeps: list[float] = []

    def __repr__(self) -> str:
        return f"<FluxClock {self.now().isoformat()}>"

    # -- reading ------------------------------------------------------------------------
    def now(self) -> datetime:
        """The clock's time (aware, UTC)."""
        with self._lock:
            return self._now

    def __call__(self) -> datetime:
        """The clock's time: the clock itself can be an engine's ``clock``."""
        return self.now()

    # -- what engines call --------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        """An engine's ``sleep``: returns at once, the clock having moved on by ``seconds``
        (recorded in ``sleeps``). Nothing fires here: timers and waits that fall due meanwhile
        fire at the next ``advance``."""
        with self._lock:
            self.sleeps.append(seconds)
            self._now += timedelta(seconds=max(0.0, seconds))

    def call_later(self, seconds: float, callback: Callable[[], Any]) -> None:
        """An engine's ``timer``: call ``callback`` when ``advance`` moves the clock to
        ``seconds`` from now (or past it)."""
        with self._lock:
            due = self._now + timedelta(seconds=max(0.0, seconds))
            heapq.heappush(self._timers, (due, next(self._seq), callback))

    def pass_to(self, when: datetime) -> None:
        """Move the clock on to ``when`` if it is earlier (a countdown that passed at once
        runs at its due time); nothing fires."""
        with self._lock:
            if when > self._now:
                self._now = when

    def watch(self, engine: FluxEngine) -> FluxEngine:
        """Let ``advance`` fail the waits of ``engine``'s runs (in its storage, whatever runs
        them: this process or Celery workers) whose deadline it passes. Returns ``engine``."""
        with self._lock:
            if engine not in self._engines:
                self._engines.append(engine)
        return engine

    # -- moving on ----------------------------------------------------------------------
    def advance(self, seconds: float) -> datetime:
        """Move the clock on by ``seconds``, firing what falls due on the way, earliest first,
        each with the clock at its due time: the timers, and the waits of the watched engines'
        runs (the waiting step fails with ``StepTimeout`` and the run's failure path follows;
        in this process, on the run's own workers otherwise). Returns the new time."""
        if seconds < 0:
            raise ValueError(f"advance(seconds): time does not go back, got {seconds!r}")
        with self._lock:
            target = self._now + timedelta(seconds=seconds)
        for _ in range(MAX_FIRED):
            fire = self._next_due(target)
            if fire is None:
                break
            fire()
        else:
            raise RuntimeError(
                f"FluxClock.advance fired {MAX_FIRED} timers and waits and more are due: "
                "something schedules work that is always due at once"
            )
        self.pass_to(target)
        return self.now()

    def _next_due(self, target: datetime) -> Callable[[], Any] | None:
        """The earliest timer or watched wait due by ``target``, the clock moved to its due
        time; None when nothing is due."""
        with self._lock:
            timer_due = self._timers[0][0] if self._timers else None
            engines = list(self._engines)
        wait = _earliest_wait(engines, target, self._fired)
        if timer_due is not None and timer_due <= target and (wait is None or timer_due <= wait[0]):
            with self._lock:
                due, _, callback = heapq.heappop(self._timers)
            self.pass_to(due)
            return callback
        if wait is None:
            return None
        deadline, engine, run_id, index = wait
        self._fired.add((id(engine), run_id, index, deadline))
        self.pass_to(deadline)
        now = self.now()
        return lambda: engine.expire_wait(run_id, index, now)


def _earliest_wait(
    engines: list[FluxEngine], target: datetime, fired: set[tuple[int, str, int, datetime]]
) -> tuple[datetime, FluxEngine, str, int] | None:
    """The suspended step with the earliest wait deadline by ``target`` among the engines'
    runs, not fired before."""
    best: tuple[datetime, FluxEngine, str, int] | None = None
    for engine in engines:
        for state in engine.storage.expired_waits(target, limit=1000):
            if state.status != RunStatus.SUSPENDED:
                continue
            for step in state.steps:
                deadline = step.wait_deadline
                if step.status != StepStatus.SUSPENDED or deadline is None or deadline > target:
                    continue
                if (id(engine), state.id, step.index, deadline) in fired:
                    continue
                if best is None or deadline < best[0]:
                    best = (deadline, engine, state.id, step.index)
    return best
