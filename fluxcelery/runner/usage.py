"""What a step's handler used: its CPU time, and the time it was ready to run but waited for
a CPU core (``meta.cpu_ms`` and ``meta.run_delay_ms`` of the attempt's outcome event; the
``profile`` command tells CPU-bound from I/O-bound steps by them).

Both are read for the thread that runs the handler (``Invoker`` measures where the handler
actually runs: see invoke.py). On Linux one ``pread`` of ``/proc/thread-self/schedstat``
gives both (time on a CPU, time waiting on a run queue, in ns), on a descriptor kept open
per thread: about 1.5 µs per read, two per attempt. Without it (another OS, no schedstat)
``time.thread_time_ns()`` gives the CPU time alone.

Why the run-queue wait: on a host with more busy threads than cores (an oversubscribed
prefork pool, a busy machine) a CPU-bound handler's wall time stretches with its wait for a
core, and its CPU time over wall time falls as an I/O-bound handler's would; without that
wait it does not.
"""

from __future__ import annotations

import os
import threading
import time

SCHEDSTAT = "/proc/thread-self/schedstat"


class _Schedstat:
    """A descriptor on the schedstat of the thread that opened it, closed with it."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        self.fd = os.open(SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC)

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class _PerThread(threading.local):
    stat: _Schedstat | None = None


_local = _PerThread()
_schedstat = os.path.exists(SCHEDSTAT)


def _forget() -> None:
    """In a forked child: the descriptors inherited are the parent's threads'."""
    global _local
    _local = _PerThread()


os.register_at_fork(after_in_child=_forget)


def thread_clock() -> tuple[int, int | None]:
    """(CPU time, run-queue wait or None when unknown) of the calling thread, in ns."""
    global _schedstat
    if _schedstat:
        try:
            stat = _local.stat
            if stat is None:
                stat = _local.stat = _Schedstat()
            on_cpu, waited, _ = os.pread(stat.fd, 64, 0).split()
            return int(on_cpu), int(waited)
        except (OSError, ValueError):
            _schedstat = False  # not readable here: the CPU time alone from now on
    return time.thread_time_ns(), None


class CpuMeter:
    """What one handler call used (``Invoker.call(cpu=...)``): CPU time, and the time it
    waited for a core where known; None until measured."""

    __slots__ = ("cpu_ns", "delay_ns")

    def __init__(self) -> None:
        self.cpu_ns: int | None = None
        self.delay_ns: int | None = None

    def since(self, began: tuple[int, int | None]) -> None:
        """Add what this thread used since ``began`` (a ``thread_clock()``)."""
        cpu, delay = thread_clock()
        self.cpu_ns = (self.cpu_ns or 0) + cpu - began[0]
        if delay is not None and began[1] is not None:
            self.delay_ns = (self.delay_ns or 0) + delay - began[1]

    @property
    def usage(self) -> dict[str, float] | None:
        """``{"cpu_ms": …, "run_delay_ms": …}`` to 0.01 ms (the second where known), as
        traced on the attempt's outcome; None when nothing was measured."""
        if self.cpu_ns is None:
            return None
        out = {"cpu_ms": round(self.cpu_ns / 1e6, 2)}
        if self.delay_ns is not None:
            out["run_delay_ms"] = round(self.delay_ns / 1e6, 2)
        return out
