"""A workflow with a CPU-bound step and an I/O-bound one, for ``fluxcelery profile`` (unit
tests run it in process; tests/integration/test_profile_worker.py on a prefork worker, which
imports this module through ``FLUX_WORKFLOWS``)."""

from __future__ import annotations

import time
from typing import Any

from fluxcelery import workflow

#: Seconds each step takes: CPU time for ``crunch``, a sleep for ``fetch``.
WORK_S = 0.03


def crunch(ctx: Any) -> int:
    """Busy until this thread has used ``WORK_S`` of CPU time (not wall time: on a busy
    host the loop takes longer, and still computes the whole time it runs)."""
    end = time.thread_time() + float(ctx.input.get("work_s", WORK_S))
    n = 0
    while time.thread_time() < end:
        n += 1
    return n


def fetch(ctx: Any) -> str:
    """Waits like a network call."""
    time.sleep(float(ctx.input.get("work_s", WORK_S)))
    return "fetched"


profiled = workflow("it-profile").step("crunch", crunch, timeout=20).step("fetch", fetch)
