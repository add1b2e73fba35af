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

from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import make_conninfo

from ..core.errors import StorageError
from .connections import ThreadConnections


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
    """Per-thread autocommit connections (storage/connections.py: closed when their thread
    ends, never across a fork)."""

    def __init__(self, url: str, redacted: str, connect_timeout: int) -> None:
        self._connect_timeout = connect_timeout
        self._conninfo = conninfo(url)
        self._redacted = redacted
        self.connections: ThreadConnections[psycopg.Connection[Any]] = ThreadConnections(
            self._connect, _close
        )

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
        )

    def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction and return its rows."""
        conn = None
        try:
            conn = self.connections.get()
            if conn.closed:
                self.connections.drop()
                conn = self.connections.get()
            return conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            if conn is not None and (conn.closed or conn.broken):
                self.connections.drop()
            raise StorageError(f"database error ({self._redacted}): {exc}") from exc

    def close(self) -> None:
        """Close the connections this process opened (in every thread)."""
        self.connections.close()


def _close(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.close()
    except psycopg.Error:
        pass
