"""Stopping the query of a commit step whose timeout (or a terminate) stopped its handler
half-way: PostgreSQL would otherwise run it to its end, holding its locks, and the
connection could not even take the ROLLBACK that discards the attempt's writes. See
docs/celery.md, Pools: what each pool does at a step's timeout."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

log = logging.getLogger("fluxcelery.storage")


def roll_back(conn: Connection, trans: sa.RootTransaction) -> None:
    """Roll ``trans`` back. When a commit step's timeout stopped its handler in the middle of
    a query, that query still runs: it is cancelled first (its locks go now), then

    - a handler abandoned on its helper thread sees its query fail, and the ROLLBACK follows;
    - a handler interrupted in this thread by an ``Exception`` (Celery's soft time limit,
      raised inside psycopg's wait) left the query's result unread, so the connection cannot
      take a ROLLBACK: it is dropped, which ends the transaction on the server. SQLAlchemy
      drops it itself for an interruption that is not an ``Exception`` (fluxcelery's own
      timer raises one); ``cancel_running_query`` cancels the query then.

    Either way the attempt's writes are lost, as a timed-out attempt's must be."""
    dbapi = None if conn.invalidated else conn.connection.dbapi_connection
    if _query_running(dbapi):
        _cancel(dbapi)
    try:
        trans.rollback()
    except sa.exc.OperationalError:
        if not _query_running(dbapi):
            raise
        conn.invalidate()


def cancel_running_query(dbapi: Any, _record: Any, _exc: BaseException | None) -> None:
    """A connection dropped in the middle of a query (SQLAlchemy's ``invalidate`` event):
    without a cancel, PostgreSQL runs the query to its end, holding its locks."""
    if _query_running(dbapi):
        _cancel(dbapi)


#: Seconds a cancel request may take: a server that does not answer must not hold a step.
CANCEL_TIMEOUT = 2.0


def _query_running(dbapi: Any) -> bool:
    """psycopg is running a query on this connection (transaction status ``ACTIVE``)."""
    status = getattr(getattr(dbapi, "info", None), "transaction_status", None)
    return getattr(status, "name", None) == "ACTIVE"


def _cancel(dbapi: Any) -> None:
    try:
        if hasattr(dbapi, "cancel_safe"):  # psycopg 3.2+
            dbapi.cancel_safe(timeout=CANCEL_TIMEOUT)
        else:
            dbapi.cancel()
    except Exception as exc:
        log.warning("could not cancel the query of a stopped step: %s", exc)
