"""What each Celery pool does with a step's timeout and with ``cancel --terminate``: the facts
behind the warning a worker logs at start (app.py) and the Pools table of docs/celery.md,
each checked on a real worker by tests/integration/test_pools.py.

Only prefork enforces Celery's time limits (gevent only the hard one, 10 s after the step's
timeout). On the other pools fluxcelery's own timer (runner/invoke.py) decides what a timeout
does: a sync handler off the main thread is abandoned on a helper thread (a greenlet under
gevent) and runs on to its end, while in the main thread (solo) a ``SIGALRM`` interrupts it;
an ``async def`` handler is cancelled on every pool. A timed-out attempt's writes are
discarded either way.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolLimits:
    """How one pool treats a running step."""

    #: The pool's name for ``celery worker -P``.
    name: str
    #: Celery's soft time limit interrupts a handler at its timeout (fluxcelery then lets
    #: the handler run in the pool process's main thread, where the limit reaches it).
    celery_limits: bool
    #: What happens to a sync handler at its timeout (after "a sync handler is").
    at_timeout: str
    #: What ``cancel --terminate`` does to a running attempt (after "cancel --terminate").
    terminate: str


POOLS: dict[str, PoolLimits] = {
    "prefork": PoolLimits(
        "prefork",
        True,
        "interrupted by Celery's soft time limit (the hard limit, 10 s later, replaces the "
        "process)",
        "stops the pool process running it (SIGTERM); the worker starts another",
    ),
    "threads": PoolLimits(
        "threads",
        False,
        "abandoned on a helper thread: it runs on to its end, and its writes are discarded",
        "cannot stop a running attempt: it runs to its end and its outcome is discarded",
    ),
    "solo": PoolLimits(
        "solo",
        False,
        "interrupted by a SIGALRM timer in the worker's main thread (there is no hard limit: "
        "code that never returns to Python holds the worker)",
        "cannot stop a running attempt (a busy solo worker reads no control message): it "
        "runs to its end and its outcome is discarded",
    ),
    "gevent": PoolLimits(
        "gevent",
        False,
        "abandoned on a helper greenlet: it runs on to its end, and its writes are discarded; "
        "code that never yields (CPU-bound) blocks every greenlet and is not stopped at all",
        "kills the task's greenlet, but the handler's helper greenlet runs on to its end; "
        "its writes are discarded",
    ),
}

#: Step task names listed per timeout in the warning; the rest are counted.
SHOWN = 3


def pool_name(pool_cls: type) -> str:
    """The ``-P`` name of a pool class (``celery.concurrency.thread.TaskPool``: threads)."""
    module = pool_cls.__module__.rsplit(".", 1)[-1]
    return "threads" if module == "thread" else module


def timeout_warning(pool: str, timeouts: Mapping[str, float]) -> str | None:
    """The warning a worker on ``pool`` logs at start, or None (prefork, or no step task
    with a timeout). ``timeouts``: step and compensation task names to their timeout."""
    limits = POOLS.get(pool)
    if (limits is not None and limits.celery_limits) or not timeouts:
        return None
    if limits is None:
        at_timeout = "abandoned on a helper thread, or interrupted by SIGALRM in a main thread"
        terminate = "may not stop a running attempt"
    else:
        at_timeout, terminate = limits.at_timeout, limits.terminate
    return (
        f"fluxcelery: the {pool} pool does not enforce Celery's time limits; fluxcelery's own "
        f"timer enforces the timeouts of {len(timeouts)} step tasks "
        f"({_by_timeout(timeouts)}). At its timeout a sync handler is {at_timeout}. An async "
        f"handler is cancelled. cancel --terminate {terminate}. Steps that must be stopped "
        "belong on a prefork worker (docs/celery.md, Pools)"
    )


def psycopg_blocks_gevent() -> bool:
    """psycopg was imported before gevent's monkey-patching (a worker started from code that
    imported it first), so it waits for PostgreSQL in C and blocks every greenlet. psycopg
    3.1.14+ imported after the patching (``celery worker -P gevent`` patches first) waits
    through gevent's hub."""
    waiting = sys.modules.get("psycopg.waiting")
    wait_c = getattr(waiting, "wait_c", None)
    return wait_c is not None and getattr(waiting, "wait", None) is wait_c


def _by_timeout(timeouts: Mapping[str, float]) -> str:
    """``1s: flux.a.x; 30s: flux.a.y, flux.a.z and 4 more``."""
    groups: dict[float, list[str]] = {}
    for name, seconds in timeouts.items():
        groups.setdefault(seconds, []).append(name)
    parts = []
    for seconds in sorted(groups):
        names = sorted(groups[seconds])
        shown = ", ".join(names[:SHOWN])
        more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
        parts.append(f"{seconds:g}s: {shown}{more}")
    return "; ".join(parts)
