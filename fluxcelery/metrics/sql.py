"""The metrics of a SQL store, read with bounded queries.

A scrape never reads the stored history:

- the counters and histograms are kept in ``flux_metric_totals``, rolled up from
  ``flux_traces`` by the scrapes themselves. ``flux_metric_cursor.counted`` says up to which
  ``seq`` the events are in; a scrape reads only the events above it (a range of the
  primary key), adds those that have settled to the totals and reports the rest on top
  (``advance``, then ``read_snapshot``). What one scrape reads is capped (``Limits``); the
  next scrapes catch up, and ``fluxcelery_metrics_backlog_events`` says how far behind.
- the gauges count the runs not finished for good, by status and workflow, from one index
  (``ix_flux_runs_status_workflow``: an index-only scan over those runs, not the table).

Events settle before they are counted: PostgreSQL hands out sequence numbers before commit,
so a transaction still open may hold a ``seq`` below one already visible. A scrape notes the
greatest ``seq`` it sees and when (the server's clock); once no transaction that began
before then is still writing to ``flux_traces`` (``pg_locks``: its ``RowExclusiveLock``),
everything up to that ``seq`` is final. SQLite has one writer at a time, so what a scrape
sees is final at once.

Concurrent scrapes (two Prometheus servers, the CLI and Flower) are safe: the cursor moves
by a guarded update (``WHERE counted = <read value>``), and only the scrape whose update
landed adds its events to the totals.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from ..storage import schema
from ..storage.core_rows import utc
from ..storage.sql import SqlStorage
from .model import (
    AGE_STATUSES,
    BUCKETS_MS,
    COUNTED_TYPES,
    GAUGE_STATUSES,
    INF,
    NO_DURATION,
    STEP_OUTCOMES,
    RollupRow,
    RunGroup,
    Snapshot,
    Totals,
    rollup_rows,
)

CURSOR = "traces"
TOTALS_COLUMNS = ("metric", "workflow", "step", "status", "le_ms", "count", "sum_ms")


@dataclass(frozen=True)
class Limits:
    """Bounds on one scrape's work (tests set them small)."""

    #: Trace events one scrape adds to the totals at most.
    roll: int = 200_000
    #: Events above the cursor one scrape reads at most (counted on top of the totals).
    live: int = 200_000
    #: Seconds after which a look settles even while a transaction older than it still
    #: writes events (one left open would stop the counters), or while the sessions of
    #: other database roles cannot be seen.
    stale_after: float = 600.0


@dataclass(frozen=True)
class Cursor:
    """A ``flux_metric_cursor`` row."""

    counted: int
    settled: int
    seen: int
    seen_at: datetime | None = None


@dataclass(frozen=True)
class Look:
    """What a scrape sees of ``flux_traces``: its greatest ``seq``; on PostgreSQL also the
    server's time after the snapshot (``at``) and the start of the oldest transaction now
    writing events (``oldest_writer``, None when none is)."""

    newest: int
    at: datetime | None = None
    oldest_writer: datetime | None = None


def plan(cursor: Cursor, look: Look, limits: Limits) -> Cursor:
    """The cursor after a scrape that found ``look``: pure, so the rules are tested by
    table.

    - SQLite (no ``at``): everything visible is settled.
    - PostgreSQL: the pending look settles once every transaction writing events began
      after it, or after ``limits.stale_after`` in any case; a new look is noted when none
      is pending.
    - ``counted`` moves up to ``settled``, ``limits.roll`` sequence numbers at a time
      (``advance`` stretches that over gaps in the sequence, to ``roll`` events).
    - A ``seq`` that went back (SQLite reusing the numbers of pruned newest events, a
      restored backup) moves everything back to it: events above the old cursor are
      counted from there.
    """
    if look.newest < cursor.counted:
        return Cursor(look.newest, look.newest, look.newest)
    settled, seen, seen_at = cursor.settled, cursor.seen, cursor.seen_at
    if look.at is None:
        settled = seen = max(settled, look.newest)
        seen_at = None
    else:
        if seen > settled and seen_at is not None:
            writers_after = look.oldest_writer is None or look.oldest_writer > seen_at
            waited = (look.at - seen_at).total_seconds()
            if writers_after or waited >= limits.stale_after:
                settled = seen
        if seen <= settled and look.newest > settled:
            seen, seen_at = look.newest, look.at
    counted = min(settled, cursor.counted + limits.roll)
    return Cursor(counted, settled, seen, seen_at)


# -- queries ------------------------------------------------------------------------------------
def events_between(lo: int, hi: int) -> sa.Select[Any]:
    """The counted events with ``lo < seq <= hi``, grouped: ``(workflow, type, status,
    step, le_ms, count, sum_ms)`` (a range of the primary key)."""
    t = schema.traces
    duration = t.c.duration_ms
    bucket = sa.case(
        (sa.or_(duration.is_(None), t.c.type.not_in(list(STEP_OUTCOMES))), NO_DURATION),
        *[(duration <= bound, bound) for bound in BUCKETS_MS],
        else_=INF,
    ).label("le_ms")
    return (
        sa.select(
            t.c.workflow,
            t.c.type,
            t.c.status,
            t.c.step,
            bucket,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(duration), 0),
        )
        .where(t.c.seq > lo, t.c.seq <= hi, t.c.type.in_(COUNTED_TYPES))
        .group_by(t.c.workflow, t.c.type, t.c.status, t.c.step, bucket)
    )


def _newest() -> sa.Select[Any]:
    """The greatest ``seq`` stored (0 for none): the end of the primary key."""
    return sa.select(sa.func.coalesce(sa.func.max(schema.traces.c.seq), 0))


def _nth_after(conn: Connection, after: int, n: int) -> int:
    """The ``seq`` of the ``n``-th event above ``after`` (sequence numbers have gaps:
    rolled-back writes, pruned events); 0 when there are fewer (or ``n`` is 0)."""
    if n < 1:
        return 0
    seq = schema.traces.c.seq
    found = conn.execute(
        sa.select(seq).where(seq > after).order_by(seq).offset(n - 1).limit(1)
    ).scalar()
    return int(found or 0)


def _read_cursor(conn: Connection) -> Cursor | None:
    c = schema.metric_cursor
    row = conn.execute(
        sa.select(c.c.counted, c.c.settled, c.c.seen, c.c.seen_at).where(c.c.name == CURSOR)
    ).first()
    if row is None:
        return None
    return Cursor(int(row[0]), int(row[1]), int(row[2]), utc(row[3]))


# The newest event, the server's time once the snapshot is taken, and the start of the
# oldest transaction writing to flux_traces now (one it cannot see counts as the oldest).
LOOK_SQL = """
SELECT (SELECT coalesce(max(seq), 0) FROM flux_traces), clock_timestamp(),
    (SELECT min(coalesce(a.xact_start, 'epoch'::timestamptz))
     FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'relation' AND l.relation = 'flux_traces'::regclass
       AND l.mode = 'RowExclusiveLock' AND l.pid IS DISTINCT FROM pg_backend_pid())
"""


def _look(conn: Connection) -> Look:
    if conn.dialect.name != "postgresql":
        return Look(int(conn.execute(_newest()).scalar_one()))
    newest, at, oldest_writer = conn.execute(sa.text(LOOK_SQL)).one()
    return Look(int(newest), utc(at), utc(oldest_writer))


# Adds rows to the totals in one statement, a column an array (an executemany of 350 rows
# took 20 ms, one INSERT of 350 VALUES rows 50 ms: SQLAlchemy compiles it each time).
UPSERT_PG = """
INSERT INTO flux_metric_totals (metric, workflow, step, status, le_ms, count, sum_ms)
SELECT * FROM unnest(CAST(:metric AS text[]), CAST(:workflow AS text[]),
    CAST(:step AS text[]), CAST(:status AS text[]), CAST(:le_ms AS int[]),
    CAST(:count AS bigint[]), CAST(:sum_ms AS bigint[]))
ON CONFLICT (metric, workflow, step, status, le_ms) DO UPDATE
SET count = flux_metric_totals.count + excluded.count,
    sum_ms = flux_metric_totals.sum_ms + excluded.sum_ms
"""


def _upsert(conn: Connection, rows: list[RollupRow]) -> None:
    """Add ``rows`` to the totals."""
    if conn.dialect.name == "postgresql":
        columns = dict(zip(TOTALS_COLUMNS, (list(c) for c in zip(*rows, strict=True)), strict=True))
        conn.execute(sa.text(UPSERT_PG), columns)
        return
    t = schema.metric_totals
    insert = sqlite.insert(t)
    stmt = insert.on_conflict_do_update(
        index_elements=list(TOTALS_COLUMNS[:5]),
        set_={
            "count": t.c["count"] + insert.excluded["count"],
            "sum_ms": t.c.sum_ms + insert.excluded.sum_ms,
        },
    )
    conn.execute(stmt, [dict(zip(TOTALS_COLUMNS, row, strict=True)) for row in rows])


def _next(conn: Connection, cursor: Cursor, limits: Limits) -> tuple[Cursor, list[RollupRow]]:
    """Where the cursor goes from here, and the rollup rows of the events it passes."""
    after = plan(cursor, _look(conn), limits)
    if after.counted < after.settled:  # capped: ``roll`` events, not sequence numbers
        end = _nth_after(conn, cursor.counted, limits.roll)
        after = replace(after, counted=min(after.settled, max(after.counted, end)))
    if after.counted <= cursor.counted:
        return after, []
    grouped = conn.execute(events_between(cursor.counted, after.counted)).all()
    return after, rollup_rows(tuple(r) for r in grouped)


def advance(storage: SqlStorage, now: datetime, limits: Limits = Limits()) -> Cursor | None:
    """Move the rollup on: add the settled events above the cursor to the totals (at most
    ``limits.roll``). Returns the cursor as this scrape left it, or None when another
    scrape moved it first (that one added the events)."""
    storage.init()
    engine = storage.engine
    with engine.connect() as conn:
        cursor = _read_cursor(conn)
        if cursor is not None:
            after, rows = _next(conn, cursor, limits)
    if cursor is None:  # the row went missing: count from the newest event on
        reset(storage, now)
        return None
    if after == cursor:
        return cursor
    c = schema.metric_cursor
    with engine.begin() as conn:
        moved = conn.execute(
            c.update()
            .where(c.c.name == CURSOR, c.c.counted == cursor.counted, c.c.seen == cursor.seen)
            .values(
                counted=after.counted,
                settled=after.settled,
                seen=after.seen,
                seen_at=after.seen_at,
                updated_at=now,
            )
        )
        if moved.rowcount != 1:
            return None
        if rows:
            _upsert(conn, rows)
    return after


def _totals_and_cursor(conn: Connection) -> tuple[list[Any], int]:
    """The totals and the cursor in one statement: they must agree (another scrape may
    move both at any moment)."""
    t, c = schema.metric_totals, schema.metric_cursor
    marker = sa.literal("")
    rows = conn.execute(
        sa.union_all(
            sa.select(
                t.c.metric, t.c.workflow, t.c.step, t.c.status, t.c.le_ms, t.c["count"], t.c.sum_ms
            ),
            sa.select(
                marker, marker, marker, marker, sa.literal(0), c.c.counted, sa.literal(0)
            ).where(c.c.name == CURSOR),
        )
    ).all()
    counted = next((int(r[5]) for r in rows if r[0] == ""), 0)
    return [r for r in rows if r[0] != ""], counted


def runs_by_status() -> sa.Select[Any]:
    """``(status, workflow, count, oldest updated_at)`` of the runs in ``GAUGE_STATUSES``."""
    r = schema.runs
    return (
        sa.select(r.c.status, r.c.workflow, sa.func.count(), sa.func.min(r.c.updated_at))
        .where(r.c.status.in_(GAUGE_STATUSES))
        .group_by(r.c.status, r.c.workflow)
    )


def pending_since(now: datetime) -> sa.Select[Any]:
    """``(workflow, oldest due time)`` of the pending runs that are due at ``now``."""
    r = schema.runs
    return (
        sa.select(r.c.workflow, sa.func.min(sa.func.coalesce(r.c.not_before, r.c.updated_at)))
        .where(
            r.c.status == "pending",
            sa.or_(r.c.not_before.is_(None), r.c.not_before <= now.astimezone(UTC)),
        )
        .group_by(r.c.workflow)
    )


def _run_groups(conn: Connection, now: datetime) -> list[RunGroup]:
    """Runs by status and workflow, with the oldest ``updated_at`` of each; pending runs
    from when they were due (a countdown's ``not_before``; not due yet: not counted as
    waiting). Index-only on PostgreSQL (``ix_flux_runs_status_workflow``)."""
    counts = conn.execute(runs_by_status()).all()
    due = conn.execute(pending_since(now)).all()
    due_since = {workflow: utc(since) for workflow, since in due}
    groups = []
    for status, workflow, count, oldest in counts:
        since = due_since.get(workflow) if status == "pending" else utc(oldest)
        groups.append(
            RunGroup(workflow, status, int(count), since if status in AGE_STATUSES else None)
        )
    return sorted(groups, key=lambda g: (g.workflow, g.status))


def read_snapshot(storage: SqlStorage, now: datetime, limits: Limits = Limits()) -> Snapshot:
    """One scrape: move the rollup on, then read the totals, the events above the cursor
    (at most ``limits.live``) and the run gauges."""
    advance(storage, now, limits)
    totals = Totals()
    with storage.engine.connect() as conn:
        rows, counted = _totals_and_cursor(conn)
        for row in rows:
            totals.add(row[0], row[1], row[2], row[3], int(row[4]), int(row[5]), int(row[6]))
        newest = int(conn.execute(_newest()).scalar_one())
        top = newest
        if newest - counted > limits.live:  # ``live`` events, not sequence numbers
            top = min(newest, max(counted + limits.live, _nth_after(conn, counted, limits.live)))
        if top > counted:
            totals.add_events(tuple(r) for r in conn.execute(events_between(counted, top)))
        runs = _run_groups(conn, now)
    return Snapshot(now=now, totals=totals, runs=runs, backlog=max(0, newest - top))


def reset(storage: SqlStorage, now: datetime) -> None:
    """Forget the totals and count from the newest stored event on (tests, and after a
    restore that mixed up the sequence)."""
    storage.init()
    c = schema.metric_cursor
    with storage.engine.begin() as conn:
        conn.execute(schema.metric_totals.delete())
        conn.execute(c.delete())
        newest = int(conn.execute(_newest()).scalar_one())
        conn.execute(
            c.insert().values(
                name=CURSOR, counted=newest, settled=newest, seen=newest, updated_at=now
            )
        )
