"""Calling user code (handlers, conditions, compensators, hooks) with a timeout.

- ``async def``: runs on a background event loop; a timeout cancels the coroutine.
- plain function in the main thread: a ``SIGALRM`` timer interrupts it (real cancellation,
  as Celery's soft time limit does on prefork).
- plain function elsewhere: runs on a helper thread and is abandoned at the timeout.

In every case a timed-out attempt's writes to ``ctx.data`` are discarded, because the attempt
works on a private copy that is only persisted on success.

``interrupt`` (``engine.cancel(terminate=True)`` in this process) stops the two kinds this
process waits on, a coroutine (cancelled) and a helper thread (abandoned), as a timeout does;
a function called directly in the caller's thread runs to its end.

``cpu`` (a ``CpuMeter``, usage.py) adds up the CPU time of the handler where it actually
runs, read for that thread (two reads a call, a few µs): the caller's thread for a direct
call (a prefork child's main thread), the helper thread for a threaded one, the loop thread
for ``async def`` (there the time of other coroutines interleaved on the same loop is
counted too, an upper bound; an async step waits, it rarely computes). Process CPU time
would be simpler but is wrong on a threads pool, where other tasks' work counts too; and a
gevent pool runs every greenlet on one thread, so there a handler's time includes what the
others ran while it waited. An attempt abandoned on its helper thread at a timeout reports
no CPU time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

try:  # ``signal.getsignal`` converts to an enum by raising ValueError: too slow per step
    from _signal import getsignal as _getsignal
except ImportError:  # pragma: no cover - other Pythons
    _getsignal = signal.getsignal

from ..core.errors import AttemptInterrupted, StepTimeout
from .interrupts import Interrupt
from .usage import CpuMeter, thread_clock

_native_time_limits = False


def use_native_time_limits(enabled: bool = True) -> None:
    """In a prefork pool child Celery's soft time limit interrupts the main thread, so sync
    handlers run there directly and are really stopped (not abandoned) at the timeout."""
    global _native_time_limits
    _native_time_limits = enabled


class _DeadlinePassed(Exception):
    """Our deadline for an ``async def`` handler passed (not the handler's own timeout)."""


class _AlarmTimeout(BaseException):
    """Raised inside a handler by the timer. A ``BaseException`` so that a handler's
    ``except Exception`` cannot swallow it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _AlarmTimeout()


class Invoker:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- public ---------------------------------------------------------------------------
    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        what: str = "step",
        interrupt: Interrupt | None = None,
        cpu: CpuMeter | None = None,
    ) -> Any:
        """Call ``fn(*args)``; raise ``StepTimeout`` if it runs past ``timeout`` seconds,
        ``AttemptInterrupted`` when ``interrupt`` is set while this process waits for it.
        ``cpu``: add the CPU time the call used to it (see the module's docstring)."""
        try:
            return self._call(fn, args, timeout, what, interrupt, cpu)
        except SoftTimeLimitExceeded:
            # Celery's soft time limit on prefork: the backstop for code our timer missed.
            raise StepTimeout(f"{what} exceeded the worker's soft time limit") from None

    def _call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None,
        what: str,
        interrupt: Interrupt | None = None,
        cpu: CpuMeter | None = None,
    ) -> Any:
        if _is_coroutine_function(fn):
            return self._await(fn(*args), timeout, what, interrupt, cpu)
        on_main = threading.current_thread() is threading.main_thread()
        if timeout is None or (_native_time_limits and on_main):
            out = _measured(fn, args, cpu) if cpu is not None else fn(*args)
            if out is not None and inspect.isawaitable(out):
                return self._await(out, None, what, interrupt, cpu)
            return out
        if on_main and _alarm_usable():
            return self._call_with_alarm(fn, args, timeout, what, cpu)
        return self._call_in_thread(fn, args, timeout, what, interrupt, cpu)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- implementations ------------------------------------------------------------------
    def _call_with_alarm(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float,
        what: str,
        cpu: CpuMeter | None = None,
    ) -> Any:
        if _getsignal(signal.SIGALRM) is not _on_alarm:
            signal.signal(signal.SIGALRM, _on_alarm)  # installed once, kept
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                out = _measured(fn, args, cpu) if cpu is not None else fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _AlarmTimeout:
            raise StepTimeout(f"{what} timed out after {timeout:g}s") from None
        if out is not None and inspect.isawaitable(out):
            return self._await(out, timeout, what, None, cpu)
        return out

    def _call_in_thread(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float,
        what: str,
        interrupt: Interrupt | None = None,
        cpu: CpuMeter | None = None,
    ) -> Any:
        if cpu is not None:
            future = self._executor().submit(_measured, fn, args, cpu)
        else:
            future = self._executor().submit(fn, *args)
        try:
            out = _result(future, timeout, interrupt)
        except concurrent.futures.TimeoutError:
            if future.done():
                raise  # the handler's own TimeoutError (a socket timeout, say): not ours
            future.cancel()
            raise StepTimeout(f"{what} timed out after {timeout:g}s (attempt abandoned)") from None
        except _Interrupted:
            future.cancel()
            raise AttemptInterrupted(f"{what} was interrupted (attempt abandoned)") from None
        if inspect.isawaitable(out):
            return self._await(out, timeout, what, interrupt, cpu)
        return out

    def _await(
        self,
        awaitable: Any,
        timeout: float | None,
        what: str,
        interrupt: Interrupt | None = None,
        cpu: CpuMeter | None = None,
    ) -> Any:
        async def runner() -> Any:
            scope = asyncio.timeout(timeout)
            began = thread_clock() if cpu is not None else (0, None)
            try:
                async with scope:
                    return await awaitable
            except TimeoutError:
                if scope.expired():
                    raise _DeadlinePassed() from None
                raise  # the handler's own TimeoutError: not ours
            finally:
                if cpu is not None:
                    cpu.since(began)

        future = asyncio.run_coroutine_threadsafe(runner(), self._event_loop())
        try:
            return _result(future, None, interrupt)
        except _DeadlinePassed:
            raise StepTimeout(f"{what} timed out after {timeout:g}s (cancelled)") from None
        except _Interrupted:
            future.cancel()  # cancels the coroutine on the loop
            raise AttemptInterrupted(f"{what} was interrupted (cancelled)") from None
        except BaseException:
            # The wait itself was stopped (Celery's soft time limit before our deadline on
            # prefork, a greenlet killed by a revoke on gevent): stop the coroutine too.
            future.cancel()
            raise

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="flux-async", daemon=True).start()
                self._loop = loop
            return self._loop

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=64, thread_name_prefix="flux-step"
                )
            return self._pool


class _Interrupted(Exception):
    """``interrupt`` was set while we waited."""


#: How often a wait looks at its ``interrupt`` event.
_POLL = 0.05


def _result(
    future: concurrent.futures.Future[Any], timeout: float | None, interrupt: Interrupt | None
) -> Any:
    """``future.result(timeout)``, raising ``_Interrupted`` as soon as ``interrupt`` is set."""
    if interrupt is None:
        return future.result(timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = _POLL if deadline is None else max(0.0, min(_POLL, deadline - time.monotonic()))
        try:
            return future.result(timeout=wait)
        except concurrent.futures.TimeoutError:
            if future.done():
                raise
            if interrupt.is_set():
                raise _Interrupted() from None
            if deadline is not None and time.monotonic() >= deadline:
                raise


def _measured(fn: Callable[..., Any], args: tuple[Any, ...], cpu: CpuMeter) -> Any:
    """``fn(*args)``, adding what it used on this thread to ``cpu``."""
    began = thread_clock()
    try:
        return fn(*args)
    finally:
        cpu.since(began)


def _alarm_usable() -> bool:
    """Only take SIGALRM when nobody else uses it."""
    current = _getsignal(signal.SIGALRM)
    return current is _on_alarm or current in (signal.SIG_DFL, signal.SIG_IGN, None)


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    """``async def`` functions, and objects whose ``__call__`` is ``async def``."""
    try:
        return _is_coroutine_cached(fn)
    except TypeError:  # not hashable
        return _inspect_coroutine(fn)


def _inspect_coroutine(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or (
        not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)
    )


# Asked for every step and hook: handlers are few and long-lived, so remember the answer.
_is_coroutine_cached = functools.lru_cache(maxsize=4096)(_inspect_coroutine)
