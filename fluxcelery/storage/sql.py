"""SQL storage on SQLAlchemy 2: SQLite (default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from ..core.errors import FluxError, StorageError
from ..core.jsoncodec import dumps, dumps_for_jsonb
from ..core.records import RunState, StepState, utcnow
from ..core.states import MOVING_RUN, StepStatus, values
from ..settings import require_extra
from ..trace.event import TraceEvent
from . import core_rows, pgcancel, postgres, schema, sqlite
from .base import StepClaim, as_tuple
from .core_rows import (
    RUN_FIELDS,
    STEP_FIELDS,
    decode_run,
    decode_step,
    run_values,
    step_values,
    trace_values,
    utc,
)

if TYPE_CHECKING:  # psycopg is an extra: imported only once a PostgreSQL URL is used
    from .pgdirect import DirectConnections
    from .pglisten import Waiter

log = logging.getLogger("fluxcelery.storage")

DEFAULT_URL = "sqlite:///.flux/flux.db"
#: The databases whose hot paths (storage/sqlite.py, storage/postgres.py) exist and are tested.
SUPPORTED = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and pick psycopg 3 as the driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def redact_url(url: str) -> str:
    """The URL with its password masked, for logs and CLI output."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _storage_error(exc: sa.exc.StatementError, url: str) -> Exception:
    """Our own errors raised while encoding a value come out as themselves; a database that
    cannot be reached is a ``StorageError`` naming it (without its password)."""
    if isinstance(exc.orig, FluxError):
        return exc.orig
    if isinstance(exc, sa.exc.OperationalError):
        return StorageError(f"database error ({redact_url(url)}): {exc.orig}")
    return exc


#: Seconds to wait for a PostgreSQL connection (``FLUX_DB_CONNECT_TIMEOUT``; libpq's minimum
#: is 2): a host that accepts TCP and never answers would otherwise hang every command.
DEFAULT_CONNECT_TIMEOUT = 10


def connect_timeout_setting() -> int:
    raw = os.environ.get("FLUX_DB_CONNECT_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        seconds = int(float(raw))
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise StorageError(f"FLUX_DB_CONNECT_TIMEOUT must be a number of seconds >= 1, got {raw!r}")
    return max(seconds, 2)


def _engine_for(url: str, connect_timeout: int) -> Engine:
    serializer = dumps if url.startswith("sqlite") else dumps_for_jsonb
    kwargs: dict[str, Any] = {"json_serializer": serializer, "future": True}
    if url.startswith("sqlite"):
        db = sa.engine.make_url(url).database
        if db and db != ":memory:":
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            sqlite.create_private(str(Path(db).expanduser()))
        else:
            kwargs["poolclass"] = sa.pool.StaticPool
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        engine = sa.create_engine(url, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            sqlite.configure(dbapi_conn, wal=bool(db and db != ":memory:"))

        return engine
    # The hot path (load, create, save) runs on storage/pgdirect.py's own connections; this
    # pool serves lists, traces, migrations and commit steps' transactions, where a pre-ping
    # round trip per checkout is cheap next to never failing on a connection that a database
    # restart left dead.
    kwargs.update(pool_size=5, max_overflow=10, pool_recycle=3600, pool_pre_ping=True)
    kwargs["connect_args"] = {"connect_timeout": connect_timeout}
    engine = sa.create_engine(url, **kwargs)
    sa.event.listen(engine, "invalidate", pgcancel.cancel_running_query)
    return engine


# Written by every save: everything but the identity and what is written once or by the
# save itself (version, updated_at).
_RUN_COLS = tuple(
    c
    for c in schema.RUN_COLUMNS
    if c not in ("id", "version", "created_at", "updated_at", "start_meta", "not_before", "claims")
)
_STEP_COLS = schema.STEP_COLUMNS[1:]  # all but idx

#: A run's columns in ``decode_run``'s order.
_RUN_SELECT = [schema.runs.c[c] for c in RUN_FIELDS]

# Statements are built once: building them per call cost more than running them.
_SAVE_RUN = (
    schema.runs.update()
    .where(
        schema.runs.c.id == sa.bindparam("b_id"),
        schema.runs.c.version == sa.bindparam("b_expected"),
    )
    .values(
        {schema.runs.c[c]: sa.bindparam(c) for c in _RUN_COLS}
        | {
            schema.runs.c.version: sa.bindparam("b_new_version"),
            schema.runs.c.updated_at: sa.bindparam("b_updated_at"),
        }
    )
)
_SAVE_STEP = (
    schema.steps.update()
    .where(
        schema.steps.c.run_id == sa.bindparam("b_run_id"),
        schema.steps.c.idx == sa.bindparam("b_idx"),
    )
    .values({schema.steps.c[c]: sa.bindparam(c) for c in _STEP_COLS})
)
_INSERT_TRACES = schema.traces.insert()
#: Run ids per query of ``due_times`` (an ``IN`` list well under every driver's limit).
DUE_CHUNK = 500


def _claim_params(run_id: str, claim: StepClaim) -> dict[str, Any]:
    """The parameters CLAIM_SQL and ROW_CLAIM_SQL share."""
    return {
        "id": run_id,
        "definition_hash": claim.definition_hash,
        "max_attempts": claim.max_attempts,
        "task_id": claim.task_id,
        "worker": claim.worker,
        "workflow": claim.workflow,
        "step": claim.step,
        "kind": claim.kind,
        "event_id": claim.event_id,
        "start_event_id": claim.start_event_id,
        "now": claim.now,
    }


class _SqlTransaction:
    """A commit step's transaction: the handler's ``ctx.session`` writes and the step's
    ``completed`` record commit together, or not at all."""

    def __init__(self, storage: SqlStorage, conn: Connection) -> None:
        self._storage = storage
        self._conn = conn
        self.session = Session(bind=conn)
        self.landed = False

    def save_run(
        self,
        state: RunState,
        expected_version: int,
        steps: Iterable[int],
        events: Sequence[TraceEvent],
        created: Iterable[int] = (),
        any_claims: bool = False,
    ) -> bool:
        self.session.flush()
        self.landed = self._storage._save(
            self._conn, state, expected_version, steps, events, created, any_claims
        )
        return self.landed


class SqlStorage:
    """Runs, steps and traces in SQL. ``url`` defaults to ``sqlite:///.flux/flux.db``."""

    stores_traces = True

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        auto_migrate: bool = True,
        connect_timeout: int | None = None,
    ) -> None:
        self.url = normalize_url(url)
        #: Seconds to wait for a PostgreSQL connection (default ``FLUX_DB_CONNECT_TIMEOUT``).
        self.connect_timeout = connect_timeout or connect_timeout_setting()
        backend = sa.engine.make_url(self.url).get_backend_name()
        if backend not in SUPPORTED:
            raise StorageError(
                f"SqlStorage supports {' and '.join(SUPPORTED.values())}, not {backend!r} "
                f"({redact_url(self.url)})"
            )
        require_extra(self.url, "the database URL")
        self.auto_migrate = auto_migrate
        self._engine: Engine | None = None
        self._pid = os.getpid()
        self._ready = False
        self._lock = threading.Lock()
        self._direct: DirectConnections | None = None
        self._local_sqlite: sqlite.LocalConnections | None = None

    def __repr__(self) -> str:
        return f"SqlStorage({redact_url(self.url)!r})"

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def engine(self) -> Engine:
        # A prefork child must not reuse connections opened by its parent.
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is not None and self._pid != os.getpid():
                    self._engine.dispose(close=False)
                    self._engine = None
                if self._engine is None:
                    self._engine = _engine_for(self.url, self.connect_timeout)
                    self._pid = os.getpid()
        return self._engine

    def init(self) -> None:
        if self._ready:
            return
        if self.auto_migrate:
            from .migrate import upgrade  # alembic: loaded only when migrations run

            try:
                upgrade(self)
            except sa.exc.OperationalError as exc:  # unreachable, refused, timed out
                raise StorageError(f"database error ({redact_url(self.url)}): {exc.orig}") from exc
        self._ready = True

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if self._local_sqlite is not None:
            self._local_sqlite.close()
            self._local_sqlite = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._ready = False

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A write transaction, committed when the block ends."""
        self.init()
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.StatementError as exc:
            mapped = _storage_error(exc, self.url)
            if mapped is exc:
                raise
            raise mapped from exc

    @property
    def _pg(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def _sqlite(self) -> Iterator[Any]:
        """A cursor for one transaction, committed when the block ends (rolled back when it
        raises). A file database uses this thread's own connection; ``:memory:`` (where another
        connection would be another database) and URLs with options use the pool's."""
        import sqlite3

        self.init()
        if self._local_sqlite is None:
            parsed = sa.engine.make_url(self.url)
            db = parsed.database
            if not db or db == ":memory:" or parsed.query:  # URI options: leave to SQLAlchemy
                with self._pooled_sqlite() as cur:
                    yield cur
                return
            with self._lock:
                if self._local_sqlite is None:
                    self._local_sqlite = sqlite.LocalConnections(db)
        conn = self._local_sqlite.get()
        cur = conn.cursor()
        try:
            yield cur
            conn.commit()
        except sqlite3.OperationalError as exc:
            conn.rollback()
            raise StorageError(f"database error ({redact_url(self.url)}): {exc}") from exc
        except BaseException:
            conn.rollback()
            raise
        finally:
            cur.close()

    @contextmanager
    def _pooled_sqlite(self) -> Iterator[Any]:
        import sqlite3

        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                yield cur
                raw.commit()
            except BaseException:
                raw.rollback()
                raise
            finally:
                cur.close()
        except sqlite3.OperationalError as exc:
            raise StorageError(f"database error ({redact_url(self.url)}): {exc}") from exc
        finally:
            raw.close()

    def _fetch(self, sql: str, params: dict[str, Any]) -> list[Any]:
        """One PostgreSQL statement in its own transaction, on this thread's connection."""
        self.init()
        direct = self._direct
        if direct is None:
            from .pgdirect import DirectConnections  # needs psycopg (the postgres extra)

            with self._lock:
                if self._direct is None:
                    self._direct = DirectConnections(
                        self.url, redact_url(self.url), self.connect_timeout
                    )
                direct = self._direct
        return direct.fetch(sql, params)

    def settle_waiter(self, run_id: str) -> Waiter | None:
        """A waiter woken when run ``run_id`` settles (PostgreSQL: one ``LISTEN``
        connection per process, storage/pglisten.py); None on SQLite (poll)."""
        if not self._pg:
            return None
        from .pgdirect import conninfo
        from .pglisten import hub_for

        return hub_for(conninfo(self.url), self.connect_timeout).waiter(run_id)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read: no commit to pay for (the connection's transaction is rolled back)."""
        self.init()
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.StatementError as exc:
            mapped = _storage_error(exc, self.url)
            if mapped is exc:
                raise
            raise mapped from exc

    # -- runs -----------------------------------------------------------------------------
    def create_run(self, state: RunState, events: Sequence[TraceEvent]) -> bool:
        now = utcnow()
        if self._pg:
            rows = self._fetch(postgres.CREATE_SQL, postgres.create_params(state, events, now))
            created = rows[0][0] == 1
            if created:
                state.updated_at = now
            return created
        import sqlite3

        try:
            with self._sqlite() as cur:
                sqlite.create(cur, state, events, now)
        except sqlite3.IntegrityError:
            return False  # a run with this id exists (the primary key says so)
        state.updated_at = now
        return True

    def load_run(self, run_id: str) -> RunState | None:
        if self._pg:
            return postgres.state_from_rows(self._fetch(postgres.LOAD_SQL, {"id": run_id}))
        with self._sqlite() as cur:
            return sqlite.load(cur, run_id)

    def load_row_view(self, run_id: str, row: int, defined: int, waiting: int) -> RunState | None:
        """See ``RowViewStorage``: one statement on PostgreSQL and SQLite."""
        params = {"id": run_id, "row": row, "defined": defined, "waiting": waiting}
        fetch = self._rows_of(run_id)
        if self._pg:
            rows = self._fetch(postgres.VIEW_SQL, params)
            return core_rows.partial_from_rows(rows, fetch)
        if self.engine.dialect.name == "sqlite":
            with self._sqlite() as cur:
                return sqlite.load_view(cur, params, fetch)
        state = self.load_run(run_id)  # another dialect: the whole run
        return state

    def load_row_claiming(
        self, run_id: str, claim: StepClaim, defined: int, waiting: int
    ) -> tuple[RunState | None, bool]:
        """``load_row_view`` that also starts row ``claim.index`` (a for_each item) when it
        is pending in a running group: one statement on PostgreSQL (``ROW_CLAIM_SQL``), a
        plain view elsewhere. The run as read before the claim, and whether it landed."""
        if not self._pg:
            return self.load_row_view(run_id, claim.index, defined, waiting), False
        params = {**_claim_params(run_id, claim), "row": claim.index}
        params.update(defined=defined, waiting=waiting)
        rows = self._fetch(postgres.ROW_CLAIM_SQL, params)
        claimed = bool(rows and rows[0][-1])
        partial = core_rows.partial_from_rows([r[:-1] for r in rows], self._rows_of(run_id))
        return partial, claimed

    def _rows_of(self, run_id: str) -> Callable[[], list[StepState]]:
        """Reads every row of a run, for a ``PartialRows`` that is asked for them."""

        def fetch() -> list[StepState]:
            full = self.load_run(run_id)
            return list(full.steps) if full is not None else []

        return fetch

    def load_and_claim(self, run_id: str, claim: StepClaim) -> tuple[RunState | None, bool]:
        """See ``ClaimingStorage``; one statement on PostgreSQL, a plain load elsewhere."""
        if not self._pg:
            return self.load_run(run_id), False
        rows = self._fetch(postgres.CLAIM_SQL, {**_claim_params(run_id, claim), "idx": claim.index})
        claimed = bool(rows and rows[0][-1])
        partial = core_rows.partial_from_rows(
            [r[:-1] for r in rows], self._rows_of(run_id), output_of=self._output_of(run_id)
        )
        return partial, claimed

    def _output_of(self, run_id: str) -> Callable[[str], tuple[str, str, Any] | None]:
        """Reads one top-level step's status, kind and output, for ``LazyResults``."""

        def output_of(name: str) -> tuple[str, str, Any] | None:
            rows = self._fetch(postgres.OUTPUT_SQL, {"id": run_id, "name": name})
            return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

        return output_of

    def _save(
        self,
        conn: Connection,
        state: RunState,
        expected_version: int,
        steps: Iterable[int],
        events: Sequence[TraceEvent],
        created: Iterable[int] = (),
        any_claims: bool = False,
    ) -> bool:
        now = utcnow()
        if conn.dialect.name == "postgresql":
            landed = postgres.save(
                conn, state, expected_version, steps, events, now, created, any_claims
            )
            if not landed:
                return False
            state.version = expected_version + 1
            state.updated_at = now
            return True
        params = run_values(state)
        params.update(
            b_id=state.id,
            b_expected=expected_version,
            b_new_version=expected_version + 1,
            b_updated_at=now,
        )
        result = conn.execute(_SAVE_RUN, params)
        if result.rowcount != 1:
            return False
        new = set(created)
        if new:
            conn.execute(
                schema.steps.insert(),
                [{"run_id": state.id, **step_values(state.steps[i])} for i in sorted(new)],
            )
        rows = []
        for i in sorted(set(steps) - new):
            values = {"run_id": state.id, **step_values(state.steps[i])}
            values["b_run_id"] = values.pop("run_id")
            values["b_idx"] = values.pop("idx")
            rows.append(values)
        if rows:
            conn.execute(_SAVE_STEP, rows)
        if events:
            conn.execute(_INSERT_TRACES, [trace_values(e) for e in events])
        state.version = expected_version + 1
        state.updated_at = now
        return True

    def save_run(
        self,
        state: RunState,
        expected_version: int,
        steps: Iterable[int],
        events: Sequence[TraceEvent],
        created: Iterable[int] = (),
        any_claims: bool = False,
    ) -> bool:
        if self._pg:
            now = utcnow()
            params = postgres.save_params(
                state, expected_version, steps, events, now, created, any_claims
            )
            if self._fetch(postgres.save_sql(state), params)[0][0] != 1:
                return False
            state.version = expected_version + 1
            state.updated_at = now
            return True
        if self.engine.dialect.name == "sqlite":
            now = utcnow()
            with self._sqlite() as cur:
                if not sqlite.save(cur, state, expected_version, steps, events, now, created):
                    cur.connection.rollback()
                    return False
            state.version = expected_version + 1
            state.updated_at = now
            return True
        with self._begin() as conn:
            landed = self._save(conn, state, expected_version, steps, events, created, any_claims)
            if not landed:
                conn.rollback()
            return landed

    @contextmanager
    def transaction(self) -> Iterator[_SqlTransaction]:
        self.init()
        with self.engine.connect() as conn:
            trans = conn.begin()
            tx = _SqlTransaction(self, conn)
            try:
                yield tx
                if tx.landed and trans.is_active:
                    trans.commit()
                elif trans.is_active:
                    pgcancel.roll_back(conn, trans)
            except BaseException:
                if trans.is_active:
                    pgcancel.roll_back(conn, trans)
                raise
            finally:
                tx.session.close()

    def _with_steps(self, conn: Connection, rows: Sequence[Any]) -> list[RunState]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        by_run: dict[str, list[StepState]] = {i: [] for i in ids}
        for srow in conn.execute(
            sa.select(schema.steps.c.run_id, *[schema.steps.c[c] for c in STEP_FIELDS])
            .where(schema.steps.c.run_id.in_(ids))
            .order_by(schema.steps.c.run_id, schema.steps.c.idx)
        ):
            by_run[srow[0]].append(decode_step(srow, 1))
        return [decode_run(r, by_run[r.id]) for r in rows]

    def list_runs(
        self,
        workflow: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 50,
        offset: int = 0,
    ) -> list[RunState]:
        q = sa.select(*_RUN_SELECT)
        if workflow is not None:
            q = q.where(schema.runs.c.workflow == workflow)
        statuses = as_tuple(status)
        if statuses is not None:
            q = q.where(schema.runs.c.status.in_(statuses))
        q = q.order_by(schema.runs.c.created_at.desc(), schema.runs.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        with self._read() as conn:
            return self._with_steps(conn, conn.execute(q).all())

    def count_runs(self, workflow: str | None = None) -> dict[str, int]:
        q = sa.select(schema.runs.c.status, sa.func.count()).group_by(schema.runs.c.status)
        if workflow is not None:
            q = q.where(schema.runs.c.workflow == workflow)
        with self._read() as conn:
            return {status: n for status, n in conn.execute(q).all()}

    def stale_runs(self, updated_before: datetime, limit: int = 100) -> list[RunState]:
        q = (
            sa.select(*_RUN_SELECT)
            .where(
                schema.runs.c.status.in_(values(MOVING_RUN)),
                schema.runs.c.updated_at < utc(updated_before),
                sa.or_(
                    schema.runs.c.not_before.is_(None),
                    schema.runs.c.not_before < utc(updated_before),
                ),
            )
            .order_by(schema.runs.c.updated_at)
            .limit(limit)
        )
        with self._read() as conn:
            return self._with_steps(conn, conn.execute(q).all())

    def expired_waits(self, now: datetime, limit: int = 100) -> list[RunState]:
        ids = (
            sa.select(schema.steps.c.run_id)
            .where(schema.steps.c.status == "suspended", schema.steps.c.wait_deadline <= utc(now))
            .limit(limit)
        )
        q = sa.select(*_RUN_SELECT).where(
            schema.runs.c.id.in_(ids), schema.runs.c.status == "suspended"
        )
        with self._read() as conn:
            return self._with_steps(conn, conn.execute(q).all())

    def delete_run(self, run_id: str) -> bool:
        with self._begin() as conn:
            conn.execute(schema.traces.delete().where(schema.traces.c.run_id == run_id))
            conn.execute(schema.steps.delete().where(schema.steps.c.run_id == run_id))
            res = conn.execute(schema.runs.delete().where(schema.runs.c.id == run_id))
            return res.rowcount == 1

    def prune_runs(
        self, updated_before: datetime, statuses: Sequence[str], limit: int | None = 500
    ) -> int:
        r, t = schema.runs, schema.traces
        due = sa.and_(r.c.status.in_(list(statuses)), r.c.updated_at < utc(updated_before))
        if limit is None:
            with self.engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).where(due)).scalar() or 0)
        batch = sa.select(r.c.id).where(due).order_by(r.c.updated_at, r.c.id).limit(limit)
        # Steps go with their run (ON DELETE CASCADE).
        with self._begin() as conn:
            if self._pg:
                # The condition again on the rows deleted: a run retried meanwhile stays.
                ids = conn.execute(r.delete().where(r.c.id.in_(batch), due).returning(r.c.id))
                pruned = [row[0] for row in ids]
                if pruned:
                    conn.execute(t.delete().where(t.c.run_id.in_(pruned)))
                return len(pruned)
            # SQLite (where RETURNING needs 3.35): one writer at a time, so the first delete
            # holds the write lock and both statements see the same batch.
            conn.execute(t.delete().where(t.c.run_id.in_(batch)))
            return int(conn.execute(r.delete().where(r.c.id.in_(batch))).rowcount)

    # -- traces ---------------------------------------------------------------------------
    def record_progress(
        self,
        run_id: str,
        index: int,
        attempt: int,
        progress: dict[str, Any],
        events: Sequence[TraceEvent],
    ) -> bool:
        st = schema.steps
        update = (
            sa.update(st)
            .where(
                st.c.run_id == run_id,
                st.c.idx == index,
                st.c.status == StepStatus.RUNNING.value,
                st.c.attempts == attempt,
            )
            .values(progress=progress)
        )
        with self._begin() as conn:
            if conn.execute(update).rowcount != 1:
                return False  # a late report of an attempt that ended
            if events:
                conn.execute(_INSERT_TRACES, [trace_values(e) for e in events])
        return True

    def append_traces(self, events: Sequence[TraceEvent]) -> None:
        if not events:
            return
        with self._begin() as conn:
            conn.execute(_INSERT_TRACES, [trace_values(e) for e in events])

    def server_version(self) -> str:
        """``<dialect> <version>`` of the database, read over a new round trip (``doctor``:
        it fails when the database cannot be reached)."""
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))
            version = ".".join(map(str, conn.dialect.server_version_info or ()))
            return f"{conn.dialect.name} {version}"

    def workflow_names(self) -> list[str]:
        q = sa.select(schema.runs.c.workflow).distinct().order_by(schema.runs.c.workflow)
        with self._read() as conn:
            return [str(v) for v in conn.execute(q).scalars()]

    def due_times(self, run_ids: Sequence[str]) -> dict[str, datetime]:
        c = schema.runs.c
        ids = list(dict.fromkeys(run_ids))
        found: dict[str, datetime] = {}
        with self._read() as conn:
            for at in range(0, len(ids), DUE_CHUNK):
                q = sa.select(c.id, c.created_at, c.not_before).where(
                    c.id.in_(ids[at : at + DUE_CHUNK])
                )
                for run_id, created, not_before in conn.execute(q).all():
                    found[str(run_id)] = utc(not_before or created) or created
        return found

    def run_ids_with_prefix(
        self, prefix: str, limit: int = 3, *, descending: bool = False
    ) -> list[str]:
        """``GLOB`` on SQLite (case-sensitive, and it uses the primary key index), ``LIKE``
        on PostgreSQL (an index scan only with a C collation or a ``varchar_pattern_ops``
        index, else a scan of the ids: about 0.5 s per million runs)."""
        column = schema.runs.c.id
        match: sa.ColumnElement[bool]
        if self.dialect == "sqlite":  # its LIKE ignores case
            glob = "".join(f"[{c}]" if c in "*?[" else c for c in prefix) + "*"
            match = column.op("GLOB")(glob)
        else:
            match = column.startswith(prefix, autoescape=True)
        order = column.desc() if descending else column
        q = sa.select(column).where(match).order_by(order).limit(limit)
        with self._read() as conn:
            return [str(v) for v in conn.execute(q).scalars()]

    def list_traces(
        self,
        run_id: str | None = None,
        workflow: str | None = None,
        type: str | Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = 1000,
        offset: int = 0,
        newest_first: bool = False,
        since: datetime | None = None,
    ) -> list[TraceEvent]:
        t = schema.traces
        q = sa.select(t)
        if since is not None:
            q = q.where(t.c.ts > utc(since))
        if run_id is not None:
            q = q.where(t.c.run_id == run_id)
        if workflow is not None:
            q = q.where(t.c.workflow == workflow)
        types = as_tuple(type)
        if types is not None:
            q = q.where(t.c.type.in_(types))
        statuses = as_tuple(status)
        if statuses is not None:
            q = q.where(t.c.status.in_(statuses))
        q = q.order_by(t.c.seq.desc() if newest_first else t.c.seq)
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        with self._read() as conn:
            rows = conn.execute(q).all()
        return [
            TraceEvent(
                id=r.id,
                ts=utc(r.ts) or utcnow(),
                run_id=r.run_id,
                workflow=r.workflow,
                type=r.type,
                status=r.status,
                step=r.step,
                step_index=r.step_index,
                kind=r.kind,
                attempt=r.attempt,
                max_attempts=r.max_attempts,
                duration_ms=r.duration_ms,
                error=r.error,
                task_id=r.task_id,
                worker=r.worker,
                meta=r.meta,
            )
            for r in rows
        ]
