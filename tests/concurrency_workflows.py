"""Workflows and process entry points for ``tests/test_concurrency.py`` and
``tests/test_migrations.py``.

Spawned processes import this module by name (``tests/`` is on ``sys.path`` under pytest and
spawn passes ``sys.path`` on), so everything a child needs lives at module level here.
"""

from __future__ import annotations

import os
import queue
import time
from typing import Any

from fluxcelery import Backoff, FluxEngine, FluxError, SqlStorage, Workflow, wait_for, workflow

ZERO_BACKOFF = Backoff(base=0.0, factor=1.0, max=0.0, jitter=False)


def _no_sleep(_seconds: float) -> None:
    return None


def prepare(ctx: Any) -> dict[str, Any]:
    return {"prepared": True}


def approve(ctx: Any) -> Any:
    return wait_for("go")


def after(ctx: Any) -> dict[str, Any]:
    """The step after the wait: appends one line per call to the counter file in the input."""
    with open(ctx.input["counter"], "a", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()}\n")
    return {"by": os.getpid()}


def define_signal_workflow(name: str) -> Workflow:
    """prepare -> approve (waits for "go") -> after (counts its calls in a file)."""
    return workflow(name).step("prepare", prepare).step("approve", approve).step("after", after)


def signal_from_process(
    url: str, run_id: str, workflow_name: str, barrier: Any, results: Any
) -> None:
    """One 'process' of the race: its own engine and storage, then ``signal`` at the barrier."""
    define_signal_workflow(workflow_name)
    engine = FluxEngine(storage=SqlStorage(url), backoff=ZERO_BACKOFF, sleep=_no_sleep)
    try:
        engine.get(run_id)  # connect and migrate-check before the race starts
        barrier.wait(timeout=60)
        try:
            engine.signal(run_id, "go", {"by": os.getpid()})
        except FluxError as exc:
            results.put((os.getpid(), type(exc).__name__))
        except Exception as exc:  # anything else is a test failure, reported to the parent
            results.put((os.getpid(), f"unexpected {type(exc).__name__}: {exc}"))
        else:
            results.put((os.getpid(), "ok"))
    finally:
        engine.close()


def upgrade_from_process(url: str, barrier: Any, results: Any) -> None:
    """One 'worker' starting at the same time as others on a fresh database: migrate."""
    from fluxcelery.storage.migrate import upgrade

    storage = SqlStorage(url, auto_migrate=False)
    try:
        with storage.engine.connect():
            pass
        barrier.wait(timeout=60)
        try:
            before, after_rev = upgrade(storage)
        except Exception as exc:
            results.put((os.getpid(), f"error {type(exc).__name__}: {exc}"))
        else:
            results.put((os.getpid(), (before, after_rev)))
    finally:
        storage.close()


def collect_results(results: Any, procs: list[Any], timeout: float) -> list[Any]:
    """(Parent side) one result per process; returns early, with fewer, if processes die
    without reporting."""
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < len(procs) and time.monotonic() < deadline:
        try:
            out.append(results.get(timeout=0.2))
        except queue.Empty:
            if all(p.exitcode is not None for p in procs) and results.empty():
                break
    return out
