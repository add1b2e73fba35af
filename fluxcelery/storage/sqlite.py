"""SQLite fast path: load, create and save as plain DB-API statements.

SQLAlchemy Core spent about two thirds of a SQLite step compiling parameters and wrapping
results; these statements are fixed strings run on the pool's own ``sqlite3`` connection,
inside one transaction per save as before. Values are written exactly as SQLAlchemy writes
them (UTC wall-clock text for datetimes, JSON text with ``null`` for None), so rows written
here and rows written through the Core statements are read back the same by either.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..core.jsoncodec import dumps
from ..core.records import RunState, StepState
from ..trace.event import TraceEvent
from . import schema
from .connections import ThreadConnections
from .core_rows import (
    RUN_FIELDS,
    STEP_FIELDS,
    partial_from_rows,
    select_list,
    state_from_rows,
)

_STEP_SET = [c for c in schema.STEP_COLUMNS if c != "idx"]
_RUN_SET = (
    "workflow_version",
    "definition_hash",
    "status",
    "data",
    "current_step",
    "error",
    "executor",
    "finished_at",
    "cancel_reason",
)

SAVE_RUN_SQL = (
    f"UPDATE flux_runs SET {', '.join(c + ' = ?' for c in _RUN_SET)}, version = ?, "
    "updated_at = ? WHERE id = ? AND version = ?"
)
SAVE_STEP_SQL = (
    f"UPDATE flux_steps SET {', '.join(c + ' = ?' for c in _STEP_SET)} WHERE run_id = ? AND idx = ?"
)
INSERT_RUN_SQL = (
    f"INSERT INTO flux_runs ({', '.join(schema.RUN_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in schema.RUN_COLUMNS)})"
)
INSERT_STEP_SQL = (
    f"INSERT INTO flux_steps (run_id, {', '.join(schema.STEP_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in schema.STEP_COLUMNS)})"
)
INSERT_TRACE_SQL = (
    f"INSERT INTO flux_traces ({', '.join(schema.TRACE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in schema.TRACE_COLUMNS)})"
)
LOAD_SQL = (
    f"SELECT {select_list('r', RUN_FIELDS)}, {select_list('s', STEP_FIELDS)} "
    "FROM flux_runs r LEFT JOIN flux_steps s ON s.run_id = r.id "
    "WHERE r.id = ? ORDER BY s.idx"
)

# A row view (``RowViewStorage``): see postgres.VIEW_SQL.
_NEXT = (
    "(SELECT coalesce(json_extract(g.scope, '$.next'), 0) FROM flux_steps g "
    "WHERE g.run_id = :id AND g.idx = (SELECT parent FROM flux_steps "
    "WHERE run_id = :id AND idx = :row))"
)
VIEW_SQL = (
    f"SELECT {select_list('r', RUN_FIELDS)}, {select_list('s', STEP_FIELDS)}, "
    "(SELECT max(idx) FROM flux_steps WHERE run_id = :id) "
    "FROM flux_runs r LEFT JOIN flux_steps s ON s.run_id = r.id AND s.idx IN ("
    "SELECT idx FROM flux_steps WHERE run_id = :id AND idx < :defined "
    "UNION ALL SELECT :row "
    "UNION ALL SELECT idx FROM flux_steps WHERE run_id = :id "
    f"AND idx >= max(:defined, {_NEXT}) AND idx < {_NEXT} + :waiting) "
    "WHERE r.id = :id ORDER BY s.idx"
)


def _enable_wal(cur: Any) -> None:
    """Switch a new database file to WAL. The switch needs a moment with no writer and does
    not wait on the busy timeout, so two processes starting together retry it."""
    for attempt in range(50):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.05)


def configure(conn: Any, *, wal: bool) -> None:
    """What every connection gets, pooled or not: a busy timeout, WAL (file databases),
    ``synchronous=FULL`` and foreign keys.

    FULL syncs the WAL at every commit. NORMAL (about twice as fast here) syncs it only at
    checkpoints: a power loss or OS crash can then roll back the last committed steps, and a
    step the engine recorded as done would run again."""
    cur = conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    if wal:
        _enable_wal(cur)
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def create_private(path: str) -> None:
    """Create the database file readable by its owner only (0600) when it does not exist:
    it holds every run's input and outputs, and the usual umask would make it readable by
    everyone. SQLite gives its ``-wal`` and ``-shm`` files the same mode."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


class LocalConnections:
    """One ``sqlite3`` connection per thread for the hot path (file databases only): a pool
    checkout and its reset on return cost about 65 µs per statement batch, a tenth of a
    step. See storage/connections.py: closed when their thread ends, never across a fork."""

    def __init__(self, path: str) -> None:
        self._path = path
        self.connections: ThreadConnections[sqlite3.Connection] = ThreadConnections(
            self._connect, sqlite3.Connection.close
        )

    def _connect(self) -> sqlite3.Connection:
        create_private(self._path)
        conn = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
        configure(conn, wal=True)
        return conn

    def get(self) -> sqlite3.Connection:
        return self.connections.get()

    def close(self) -> None:
        """Close the connections this process opened (in every thread)."""
        self.connections.close()


def _ts(value: datetime | None) -> str | None:
    """SQLAlchemy's SQLite DATETIME text, in UTC."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")  # strftime costs ten times more


def _parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def _json_in(value: Any) -> str:
    return "null" if value is None else dumps(value)


def _json_out(text: Any) -> Any:
    # Columns declared JSON have NUMERIC affinity (SQLite keeps the text "1" as the integer 1);
    # input and output are TEXT since migration 0003, but rows written before may hold numbers.
    return json.loads(text) if isinstance(text, str) else text


def _step_values(s: StepState) -> tuple[Any, ...]:
    return (
        s.name,
        s.kind,
        s.status.value,
        s.attempts,
        s.compensation_attempts,
        _json_in(s.output),
        s.error,
        s.waiting_for,
        s.task_id,
        _ts(s.started_at),
        _ts(s.finished_at),
        s.duration_ms,
        _ts(s.wait_deadline),
        s.traceback,
        None if s.progress is None else dumps(s.progress),
        s.branch,
        s.item,
        s.parent,
        None if s.scope is None else dumps(s.scope),
    )


def _trace_values(e: TraceEvent) -> tuple[Any, ...]:
    return (
        e.id,
        _ts(e.ts),
        e.run_id,
        e.workflow,
        e.type,
        e.status,
        e.step,
        e.step_index,
        e.kind,
        e.attempt,
        e.max_attempts,
        e.duration_ms,
        e.error,
        e.task_id,
        e.worker,
        _json_in(e.meta),
    )


def load(cur: Any, run_id: str) -> RunState | None:
    rows = cur.execute(LOAD_SQL, (run_id,)).fetchall()
    return state_from_rows(rows, json=_json_out, ts=_parse_ts)


def load_view(
    cur: Any, params: dict[str, Any], fetch: Callable[[], list[StepState]]
) -> RunState | None:
    rows = cur.execute(VIEW_SQL, params).fetchall()
    return partial_from_rows(rows, fetch, json=_json_out, ts=_parse_ts)


def save(
    cur: Any,
    state: RunState,
    expected_version: int,
    steps: Iterable[int],
    events: Sequence[TraceEvent],
    now: datetime,
    created: Iterable[int] = (),
) -> bool:
    """The guarded write; the caller commits (or rolls back when this returns False).
    ``created``: step rows that are new (for_each items), inserted."""
    cur.execute(
        SAVE_RUN_SQL,
        (
            state.workflow_version,
            state.definition_hash,
            state.status.value,
            _json_in(state.data),
            state.current_step,
            state.error,
            state.executor,
            _ts(state.finished_at),
            state.cancel_reason,
            expected_version + 1,
            _ts(now),
            state.id,
            expected_version,
        ),
    )
    if cur.rowcount != 1:
        return False
    new = set(created)
    if new:
        cur.executemany(
            INSERT_STEP_SQL, [(state.id, i, *_step_values(state.steps[i])) for i in sorted(new)]
        )
    rows = [(*_step_values(state.steps[i]), state.id, i) for i in sorted(set(steps) - new)]
    if rows:
        cur.executemany(SAVE_STEP_SQL, rows)
    if events:
        cur.executemany(INSERT_TRACE_SQL, [_trace_values(e) for e in events])
    return True


def create(cur: Any, state: RunState, events: Sequence[TraceEvent], now: datetime) -> None:
    """Insert a run, its steps and events; raises ``sqlite3.IntegrityError`` if it exists."""
    cur.execute(
        INSERT_RUN_SQL,
        (
            state.id,
            state.workflow,
            state.workflow_version,
            state.definition_hash,
            state.status.value,
            _json_in(state.input),
            _json_in(state.data),
            state.current_step,
            state.error,
            state.executor,
            state.version,
            _ts(state.created_at),
            _ts(now),
            _ts(state.finished_at),
            _json_in(state.start_meta),
            _ts(state.not_before),
            state.cancel_reason,
            state.claims,
        ),
    )
    cur.executemany(INSERT_STEP_SQL, [(state.id, s.index, *_step_values(s)) for s in state.steps])
    if events:
        cur.executemany(INSERT_TRACE_SQL, [_trace_values(e) for e in events])
