"""Per-thread psycopg connections for the PostgreSQL hot path (load, create, save).

Each of those is one statement in autocommit. Through SQLAlchemy every one of them also paid
for a pool checkout, isolation-level switching and a result wrapper: about a third of a
step's client time. Here a thread keeps one plain connection, and psycopg prepares the
statements on the server after their first few runs.

A connection that fails (database restarted, network cut) is dropped; the error comes out as
``StorageError`` naming the database (no password), which step tasks treat as an outage and
retry. Connections opened by a parent process are never used or closed by a forked child (a
prefork worker): closing one would end the parent's session.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import make_conninfo

from ..errors import StorageError

CONNECT_TIMEOUT_S = 10


def conninfo(url: str) -> str:
    """libpq ``key=value`` connection parameters from a SQLAlchemy URL. Built from its parts
    rather than re-rendered as a URL: SQLAlchemy writes a space in ``options`` as ``+``,
    which libpq does not read back as a space."""
    parsed = sa.engine.make_url(url)
    params: dict[str, Any] = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    for key, value in parsed.query.items():
        params[key] = value[-1] if isinstance(value, tuple) else value
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


class DirectConnections:
    def __init__(self, url: str, redacted: str) -> None:
        self._conninfo = conninfo(url)
        self._redacted = redacted
        self._local = threading.local()
        # Every connection ever opened, by process: kept referenced so that a child never
        # finalizes (and so terminates) a connection it inherited.
        self._opened: dict[int, list[psycopg.Connection[Any]]] = {}
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection[Any]:
        pid = os.getpid()
        held = getattr(self._local, "conn", None)
        if held is not None and held[0] == pid and not held[1].closed:
            return held[1]
        conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        with self._lock:
            self._opened.setdefault(pid, []).append(conn)
        self._local.conn = (pid, conn)
        return conn

    def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction and return its rows."""
        try:
            conn = self._connection()
            return conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            self._drop_if_broken()
            raise StorageError(f"database error ({self._redacted}): {exc}") from exc

    def _drop_if_broken(self) -> None:
        held = getattr(self._local, "conn", None)
        if held is None or held[0] != os.getpid():
            return
        conn = held[1]
        if conn.closed or conn.broken:
            self._forget(conn)
            self._local.conn = None

    def _forget(self, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.close()
        except psycopg.Error:
            pass
        with self._lock:
            mine = self._opened.get(os.getpid(), [])
            if conn in mine:
                mine.remove(conn)

    def close(self) -> None:
        """Close the connections this process opened (in every thread)."""
        with self._lock:
            mine = self._opened.pop(os.getpid(), [])
        for conn in mine:
            try:
                conn.close()
            except psycopg.Error:
                pass
        self._local = threading.local()
