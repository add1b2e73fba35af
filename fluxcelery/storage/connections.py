"""One connection per thread, closed when its thread ends: the cache behind the hot paths of
SQLite (storage/sqlite.py) and PostgreSQL (storage/pgdirect.py).

A pool checkout and its reset cost a tenth of a step, so each thread keeps a plain
connection. Threads come and go (the viewer's threading server, wait timers, a user's thread
pool): a thread's connection is closed as soon as the thread ends, when Python drops the
thread's ``threading.local`` data. A forked child (a prefork worker) opens its own and never
closes or finalizes one it inherited: closing a PostgreSQL connection sends the server a
goodbye on the socket the parent still uses. Inherited connections stay referenced for the
child's life (at most the parent's count at the fork).
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

C = TypeVar("C")

#: Connections inherited across a fork: referenced so that nothing ever finalizes them.
_INHERITED: list[Any] = []
_tokens = itertools.count()


class _Held:
    """A thread's connection, owned by that thread's ``threading.local`` data."""

    __slots__ = ("__weakref__", "conn", "generation", "pid", "token")

    def __init__(self, conn: Any, pid: int, generation: int, token: int) -> None:
        self.conn = conn
        self.pid = pid
        self.generation = generation
        self.token = token


class ThreadConnections(Generic[C]):
    """``get()`` returns this thread's connection, made by ``connect()`` on first use;
    ``close_one(conn)`` closes one (errors are the caller's to swallow)."""

    def __init__(self, connect: Callable[[], C], close_one: Callable[[C], None]) -> None:
        self._connect = connect
        self._close_one = close_one
        self._local = threading.local()
        self._lock = threading.Lock()
        self._generation = 0
        #: This process's open connections by token, for ``close()`` from any thread.
        self._open: dict[int, tuple[int, C]] = {}

    def get(self) -> C:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.pid == os.getpid() and held.generation == self._generation:
            return held.conn
        conn = self._connect()
        pid = os.getpid()
        token = next(_tokens)
        fresh = _Held(conn, pid, self._generation, token)
        with self._lock:
            self._open[token] = (pid, conn)
        # When the thread ends its local data goes, and with it ``fresh``: close the
        # connection then (in the process that opened it only).
        weakref.finalize(fresh, self._release, token)
        self._local.held = fresh
        return conn

    def drop(self) -> None:
        """Close this thread's connection (broken, say); the next ``get`` makes a new one."""
        held: _Held | None = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None:
            self._release(held.token)

    def _release(self, token: int) -> None:
        with self._lock:
            entry = self._open.pop(token, None)
        if entry is None:
            return
        pid, conn = entry
        if pid != os.getpid():
            _INHERITED.append(conn)  # a forked child: never finalize the parent's
            return
        try:
            self._close_one(conn)
        except Exception:
            pass

    def open_count(self) -> int:
        """Connections this process has open through this cache (tests, diagnostics)."""
        pid = os.getpid()
        with self._lock:
            return sum(1 for owner, _ in self._open.values() if owner == pid)

    def close(self) -> None:
        """Close every connection this process opened through this cache, in every thread;
        threads that go on get new ones."""
        pid = os.getpid()
        with self._lock:
            self._generation += 1
            mine = [t for t, (owner, _) in self._open.items() if owner == pid]
        for token in mine:
            self._release(token)
        self._local = threading.local()
