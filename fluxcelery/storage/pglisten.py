"""Waking ``RunHandle.get`` when its run settles (PostgreSQL ``LISTEN``/``NOTIFY``).

The write that settles a run (finished, or suspended) also sends a ``NOTIFY flux_settled``
in its transaction (``postgres.SETTLE_SQL``), so the notification arrives only if the write
committed, and no earlier than it. Its payload is the run as that write left it, when the
run is small (``postgres.settled_from_payload``), and the waiter returns that without
reading the run again; else the run id, and the waiter reads it. Each process keeps ONE
listening connection, on a daemon thread, however many threads wait: a waiter is an
``Event`` in a dict by run id. Polling stays as the fallback: a waiter whose process is not
listening (the connection failed, or is still opening) polls as before, and every waiter
re-reads the run at least once a second in case a notification was lost while the listener
reconnected."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import psycopg

from ..core.records import RunState
from .postgres import settled_from_payload

log = logging.getLogger("fluxcelery.storage")

CHANNEL = "flux_settled"  # postgres.SETTLE_SQL notifies it
LISTEN_SQL = "LISTEN flux_settled"
#: How the listening connections show in ``pg_stat_activity``.
APPLICATION_NAME = "fluxcelery-listen"
#: How long a first waiter waits for the listener to be listening before it polls instead.
READY_TIMEOUT = 2.0
#: Longest pause between reconnect attempts after the listening connection failed.
MAX_BACKOFF = 5.0
#: Seconds without a waiter after which the listening connection closes (the next waiter
#: opens it again): a process that waited once does not go on receiving every run's
#: notification, and PostgreSQL's notification queue is not held back by a listener that
#: nobody needs.
IDLE_CLOSE = 30.0


class Waiter:
    """One ``RunHandle.get`` waiting for its run: ``wait`` returns early when notified."""

    __slots__ = ("_event", "_hub", "handed", "run_id")

    def __init__(self, hub: SettleHub, run_id: str) -> None:
        self._hub = hub
        self.run_id = run_id
        self._event = threading.Event()
        #: The run as the settling write left it, when the notification carried it.
        self.handed: RunState | None = None

    @property
    def listening(self) -> bool:
        return self._hub.listening

    def wait(self, timeout: float) -> bool:
        """Sleep until a notification for this run (True) or ``timeout`` (False)."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def wake(self, settled: RunState | None = None) -> None:
        self.handed = settled
        self._event.set()

    def close(self) -> None:
        self._hub.remove(self)


class SettleHub:
    """The process's listening connection and the waiters it wakes."""

    def __init__(self, conninfo: str, connect_timeout: int) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._idle_since = time.monotonic()

    @property
    def listening(self) -> bool:
        return self._ready.is_set()

    def waiter(self, run_id: str) -> Waiter:
        """Register a waiter BEFORE reading the run, so that a settle between the read and
        the wait is not missed."""
        w = Waiter(self, run_id)
        with self._lock:
            self._waiters.setdefault(run_id, set()).add(w)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._listen, name="fluxcelery-listen", daemon=True
                )
                self._thread.start()
        self._ready.wait(READY_TIMEOUT)  # the first waiter only: later ones find it set
        return w

    def remove(self, w: Waiter) -> None:
        with self._lock:
            waiting = self._waiters.get(w.run_id)
            if waiting is not None:
                waiting.discard(w)
                if not waiting:
                    del self._waiters[w.run_id]
                    if not self._waiters:
                        self._idle_since = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _end_if_idle(self) -> bool:
        """True (and the thread is to end) when nobody has waited for IDLE_CLOSE seconds;
        decided under the lock, so that a waiter arriving now starts a new thread."""
        with self._lock:
            if self._waiters or time.monotonic() - self._idle_since < IDLE_CLOSE:
                return False
            self._thread = None
            self._ready.clear()
            return True

    def _wake(self, run_id: str | None) -> None:
        """Wake the waiters of ``run_id`` (None: every waiter) to read the run."""
        with self._lock:
            found = (
                [w for ws in self._waiters.values() for w in ws]
                if run_id is None
                else list(self._waiters.get(run_id, ()))
            )
        for w in found:
            w.wake()

    def _notified(self, payload: str) -> None:
        if not self._waiters:  # nobody waits in this process: no need to decode
            return
        run_id, state = settled_from_payload(payload)
        with self._lock:
            found = list(self._waiters.get(run_id, ()))
        for i, w in enumerate(found):  # each its own copy: results are not shared by threads
            w.wake(state if i == 0 else settled_from_payload(payload)[1])

    def _listen(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=self._connect_timeout,
                    application_name=APPLICATION_NAME,
                )
                conn.execute(LISTEN_SQL)
                self._ready.set()
                self._wake(None)  # re-read: a settle may have landed before LISTEN took
                backoff = 0.1
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        self._notified(note.payload)
                    if self._end_if_idle():
                        return
            except Exception as exc:  # the database went away: waiters poll meanwhile
                was_listening = self._ready.is_set()
                self._ready.clear()
                self._wake(None)
                if was_listening:
                    log.warning("fluxcelery: run notifications lost (%s); polling", exc)
                if self._end_if_idle():
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # pragma: no cover - closing a broken connection
                        pass


_HUBS: dict[tuple[int, str], SettleHub] = {}
_HUBS_LOCK = threading.Lock()


def hub_for(conninfo: str, connect_timeout: int) -> SettleHub:
    """The listening hub of this process for this database (a forked child makes its own:
    the parent's thread and connection do not exist there)."""
    key = (os.getpid(), conninfo)
    with _HUBS_LOCK:
        hub = _HUBS.get(key)
        if hub is None:
            hub = _HUBS[key] = SettleHub(conninfo, connect_timeout)
        return hub
