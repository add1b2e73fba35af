"""Alembic migrations: ``SqlStorage(url).init()`` builds the schema on an empty database.

PostgreSQL tests get a fresh, empty schema of their own (not the session schema the storage
fixtures share), so that ``init`` really starts from nothing.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from concurrency_workflows import collect_results, upgrade_from_process
from helpers import PG_BASE, require_service

from fluxcelery import RunState, RunStatus, SqlStorage, StepState
from fluxcelery.storage import schema
from fluxcelery.storage.migrate import VERSION_TABLE, current_revision, head_revision, upgrade

FLUX_TABLES = {"flux_runs", "flux_steps", "flux_traces"}
#: The metrics rollup (migration 0009, fluxcelery/metrics).
METRIC_TABLES = {"flux_metric_totals", "flux_metric_cursor"}
ALL_TABLES = FLUX_TABLES | METRIC_TABLES | {"flux_alembic_version"}

#: The newest migration (tests/test_migrations.py checks every store reaches it).
HEAD = "0010"
#: Indexes made on PostgreSQL only (migration 0010: SQLite's GLOB uses the primary key).
PG_ONLY_INDEXES = {"ix_flux_runs_id_prefix"}


class FreshDb:
    """An empty database (SQLite file or PostgreSQL schema) and the storages made on it."""

    def __init__(self, kind: str, url: str, schema_name: str | None) -> None:
        self.kind = kind
        self.url = url
        self.schema = schema_name
        self._storages: list[SqlStorage] = []

    def storage(self, **kwargs: Any) -> SqlStorage:
        storage = SqlStorage(self.url, **kwargs)
        self._storages.append(storage)
        return storage

    def tables(self) -> set[str]:
        probe = self.storage(auto_migrate=False)
        with probe.engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())

    def close(self) -> None:
        for storage in self._storages:
            storage.close()


@contextmanager
def fresh_pg_schema() -> Iterator[tuple[str, str]]:
    """A new, empty PostgreSQL schema and a URL whose search_path is that schema."""
    require_service("postgres")
    name = f"flux_mig_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_BASE)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield name, f"{PG_BASE}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[FreshDb]:
    if request.param == "sqlite":
        db = FreshDb("sqlite", f"sqlite:///{tmp_path}/fresh.db", None)
        yield db
        db.close()
        return
    with fresh_pg_schema() as (name, url):
        db = FreshDb("postgres", url, name)
        try:
            yield db
        finally:
            db.close()


@pytest.fixture
def fresh_pg() -> Iterator[FreshDb]:
    with fresh_pg_schema() as (name, url):
        db = FreshDb("postgres", url, name)
        try:
            yield db
        finally:
            db.close()


def a_run(run_id: str) -> RunState:
    return RunState(
        id=run_id,
        workflow="wf",
        status=RunStatus.PENDING,
        input={"x": "ü"},
        data={},
        steps=[StepState(name="a", index=0)],
    )


# -- init -----------------------------------------------------------------------------------------
def test_head_revision_is_the_latest_migration(fresh_db: FreshDb) -> None:
    assert head_revision(fresh_db.storage()) == HEAD


def test_init_creates_the_schema_at_head(fresh_db: FreshDb) -> None:
    storage = fresh_db.storage()
    assert fresh_db.tables() == set()
    assert current_revision(storage) is None

    storage.init()

    assert fresh_db.tables() == ALL_TABLES
    assert current_revision(storage) == head_revision(storage) == HEAD
    with storage.engine.connect() as conn:
        versions = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    assert [tuple(v) for v in versions] == [(HEAD,)]
    # The schema works.
    assert storage.create_run(a_run("m-1"), []) is True
    assert storage.load_run("m-1") is not None


def test_migrated_columns_match_the_table_definitions(fresh_db: FreshDb) -> None:
    storage = fresh_db.storage()
    storage.init()
    with storage.engine.connect() as conn:
        insp = sa.inspect(conn)
        tables = (schema.runs, schema.steps, schema.traces)
        for table in (*tables, schema.metric_totals, schema.metric_cursor):
            migrated = {c["name"]: c for c in insp.get_columns(table.name)}
            assert set(migrated) == {c.name for c in table.columns}, table.name
            for column in table.columns:
                assert migrated[column.name]["nullable"] == column.nullable, (
                    f"{table.name}.{column.name}"
                )
            pk = insp.get_pk_constraint(table.name)["constrained_columns"]
            assert pk == [c.name for c in table.primary_key.columns], table.name
            indexes = {ix["name"] for ix in insp.get_indexes(table.name)}
            defined = {ix.name for ix in table.indexes}
            if fresh_db.kind == "sqlite":
                defined -= PG_ONLY_INDEXES
            assert indexes == defined, table.name


def test_init_twice_is_a_no_op(fresh_db: FreshDb) -> None:
    first = fresh_db.storage()
    first.init()
    assert first.create_run(a_run("keep-me"), []) is True
    first.init()  # same object

    second = fresh_db.storage()  # another process starting up on the same database
    second.init()
    assert upgrade(second) == (HEAD, HEAD)

    assert fresh_db.tables() == ALL_TABLES
    assert current_revision(second) == HEAD
    with second.engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar() == 1
    kept = second.load_run("keep-me")
    assert kept is not None
    assert kept.input == {"x": "ü"}


def test_upgrade_reports_before_and_after(fresh_db: FreshDb) -> None:
    storage = fresh_db.storage(auto_migrate=False)
    assert upgrade(storage) == (None, HEAD)
    assert upgrade(storage) == (HEAD, HEAD)


def test_auto_migrate_false_does_not_create_tables(fresh_db: FreshDb) -> None:
    storage = fresh_db.storage(auto_migrate=False)
    storage.init()
    assert fresh_db.tables() == set()
    assert current_revision(storage) is None


# -- concurrent upgrades ---------------------------------------------------------------------
def test_concurrent_upgrades_in_threads_both_succeed(fresh_db: FreshDb) -> None:
    storages = [fresh_db.storage(auto_migrate=False) for _ in range(2)]
    for storage in storages:
        # Connect first, one after the other: on SQLite the first connection switches the
        # file to WAL (test_init_of_a_fresh_sqlite_file_waits_for_a_concurrent_writer).
        with storage.engine.connect():
            pass
    assert fresh_db.tables() == set()
    barrier = threading.Barrier(len(storages))
    outcomes: list[Any] = [None] * len(storages)

    def migrate(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            outcomes[i] = upgrade(storages[i])
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=migrate, args=(i,)) for i in range(len(storages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)

    for outcome in outcomes:
        assert isinstance(outcome, tuple), f"upgrade failed: {outcome!r}"
        assert outcome[1] == HEAD
        assert outcome[0] in (None, HEAD)
    assert fresh_db.tables() == ALL_TABLES
    with storages[0].engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar() == 1
    assert storages[0].create_run(a_run("after-race"), []) is True
    assert storages[1].load_run("after-race") is not None


def test_init_of_a_fresh_sqlite_file_waits_for_a_concurrent_writer(tmp_path: Any) -> None:
    """Another process is in the middle of writing to (e.g. migrating) the new file: init must
    wait for it (busy_timeout is 30 s), not fail."""
    path = tmp_path / "busy.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE other_process (x INTEGER)")
    release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    release.start()
    storage = SqlStorage(f"sqlite:///{path}")
    try:
        storage.init()
        assert current_revision(storage) == HEAD
        assert storage.load_run("nothing") is None
    finally:
        release.join()
        other.close()
        storage.close()


def upgrade_in_processes(url: str, n: int = 3) -> list[Any]:
    """Start ``n`` processes that upgrade ``url`` at the same moment; their outcomes."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=upgrade_from_process, args=(url, barrier, results)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = dict(collect_results(results, procs, timeout=90))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():  # only our own children
                p.kill()
    assert [p.exitcode for p in procs] == [0] * n
    assert sorted(outcomes) == sorted(p.pid for p in procs)
    return list(outcomes.values())


def test_concurrent_upgrades_in_processes_all_succeed(fresh_pg: FreshDb) -> None:
    """Separate processes do not share the in-process lock: the advisory lock serializes them."""
    for outcome in upgrade_in_processes(fresh_pg.url):
        assert isinstance(outcome, tuple), f"upgrade failed: {outcome!r}"
        assert outcome[1] == HEAD
    assert fresh_pg.tables() == ALL_TABLES
    assert current_revision(fresh_pg.storage()) == HEAD


@pytest.mark.parametrize("start", [None, "0001", "0002"])
def test_concurrent_sqlite_upgrades_in_processes_all_succeed(
    tmp_path: Any, start: str | None
) -> None:
    """Pool processes of a worker on a new (or older) SQLite file: one migrates inside one
    transaction holding the write lock, the others wait and find the schema at head."""
    url = f"sqlite:///{tmp_path}/race.db"
    if start is not None:
        storage = SqlStorage(url, auto_migrate=False)
        upgrade(storage, start)
        storage.close()
    for outcome in upgrade_in_processes(url, n=4):
        assert isinstance(outcome, tuple), f"upgrade failed: {outcome!r}"
        assert outcome[1] == HEAD
    storage = SqlStorage(url)
    try:
        assert current_revision(storage) == HEAD
        assert storage.load_run("nothing") is None
    finally:
        storage.close()


def test_a_failed_sqlite_migration_changes_nothing(tmp_path: Any) -> None:
    """Every statement of a migration is in one transaction: 0003 failing at its last table
    leaves the first one as it was (it used to stay half migrated, and stuck)."""
    storage = SqlStorage(f"sqlite:///{tmp_path}/half.db", auto_migrate=False)
    try:
        upgrade(storage, "0002")
        with storage.engine.begin() as conn:  # makes DROP COLUMN output fail
            conn.execute(sa.text("CREATE INDEX ix_output ON flux_steps (output)"))
        with pytest.raises(sa.exc.OperationalError, match="output"):
            upgrade(storage)
        assert current_revision(storage) == "0002"
        with storage.engine.connect() as conn:
            runs = {r[1]: r[2] for r in conn.execute(sa.text("PRAGMA table_info(flux_runs)"))}
            steps = {r[1]: r[2] for r in conn.execute(sa.text("PRAGMA table_info(flux_steps)"))}
        assert runs["input"] == "JSON" and "input__text" not in runs
        assert steps["output"] == "JSON" and "output__text" not in steps
    finally:
        storage.close()


# -- column types and indexes ----------------------------------------------------------------
def test_json_columns_are_jsonb_on_postgresql(fresh_pg: FreshDb) -> None:
    fresh_pg.storage().init()
    admin = sa.create_engine(PG_BASE)
    try:
        with admin.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = :schema AND table_name LIKE 'flux_%'"
                ),
                {"schema": fresh_pg.schema},
            ).all()
    finally:
        admin.dispose()
    types = {(r.table_name, r.column_name): r.data_type for r in rows}
    json_columns = {
        ("flux_runs", "input"),
        ("flux_runs", "data"),
        ("flux_runs", "start_meta"),
        ("flux_steps", "output"),
        ("flux_steps", "progress"),
        ("flux_steps", "scope"),
        ("flux_traces", "meta"),
    }
    assert {k: types[k] for k in json_columns} == dict.fromkeys(json_columns, "jsonb")
    assert {k for k, v in types.items() if v in ("jsonb", "json")} == json_columns
    timestamps = {
        ("flux_runs", "created_at"),
        ("flux_runs", "updated_at"),
        ("flux_runs", "finished_at"),
        ("flux_steps", "started_at"),
        ("flux_steps", "finished_at"),
        ("flux_steps", "wait_deadline"),
        ("flux_traces", "ts"),
    }
    assert {k: types[k] for k in timestamps} == dict.fromkeys(
        timestamps, "timestamp with time zone"
    )
    assert types[("flux_traces", "seq")] == "bigint"


NEEDS_SQLITE_335 = pytest.mark.skipif(
    sqlite3.sqlite_version_info < (3, 35),
    reason=f"SQLite {sqlite3.sqlite_version} cannot retype a column (migration 0003 needs 3.35)",
)


@NEEDS_SQLITE_335
def test_json_columns_on_sqlite_keep_their_text(tmp_path: Any) -> None:
    """Input and output may be a bare number: TEXT affinity keeps its JSON text (a column
    declared JSON has NUMERIC affinity and turned 2**70 into a float). The others only ever
    hold objects (progress included)."""
    storage = SqlStorage(f"sqlite:///{tmp_path}/types.db")
    try:
        storage.init()
        with storage.engine.connect() as conn:
            declared = {
                (table, row[1]): row[2]
                for table in FLUX_TABLES
                for row in conn.execute(sa.text(f"PRAGMA table_info({table})"))
            }
    finally:
        storage.close()
    assert {k for k, v in declared.items() if v == "TEXT"} >= {
        ("flux_runs", "input"),
        ("flux_steps", "output"),
    }
    assert {k for k, v in declared.items() if v == "JSON"} == {
        ("flux_runs", "data"),
        ("flux_runs", "start_meta"),
        ("flux_steps", "progress"),
        ("flux_steps", "scope"),
        ("flux_traces", "meta"),
    }


@NEEDS_SQLITE_335
def test_upgrading_sqlite_to_0003_keeps_stored_numbers_exact(tmp_path: Any) -> None:
    """Numbers stored by 0002 (SQLite made them INTEGER or REAL) are copied to the TEXT
    columns as the same JSON values; new writes keep every digit."""
    storage = SqlStorage(f"sqlite:///{tmp_path}/old.db", auto_migrate=False)
    try:
        assert upgrade(storage, "0002") == (None, "0002")
        stored: dict[str, Any] = {
            "int": 12,
            "float": 0.1 + 0.2,
            "huge": 1e300,
            "max-float": 1.7976931348623157e308,
            "text": "abc",
            "object": {"k": [1, 2.5]},
            "null": None,
        }
        with storage.engine.begin() as conn:  # rows as the 0002 code wrote them: JSON text
            for name, value in stored.items():
                text = json.dumps(value)
                conn.execute(
                    sa.text(
                        "INSERT INTO flux_runs (id, workflow, status, input, data, current_step, "
                        "executor, version, created_at, updated_at) VALUES (:id, 'wf', "
                        "'pending', :v, '{}', 0, 'local', 0, :t, :t)"
                    ),
                    {"id": f"old-{name}", "v": text, "t": "2026-11-30 00:00:00.000000"},
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO flux_steps (run_id, idx, name, kind, status, attempts, "
                        "compensation_attempts, output) VALUES (:id, 0, 'a', 'step', "
                        "'pending', 0, 0, :v)"
                    ),
                    {"id": f"old-{name}", "v": text},
                )
        with storage.engine.connect() as conn:
            kinds = conn.execute(sa.text("SELECT typeof(input) FROM flux_runs ORDER BY id"))
            assert {k for (k,) in kinds} == {"integer", "real", "text"}  # what 0002 left
        assert upgrade(storage) == ("0002", HEAD)  # through 0003
        for name, value in stored.items():
            state = storage.load_run(f"old-{name}")
            assert state is not None
            assert state.input == value and type(state.input) is type(value), name
            assert state.steps[0].output == value, name
            assert type(state.steps[0].output) is type(value), name
        with storage.engine.connect() as conn:
            kinds = conn.execute(sa.text("SELECT DISTINCT typeof(output) FROM flux_steps"))
            assert {k for (k,) in kinds} == {"text"}
            foreign_keys = conn.execute(sa.text("PRAGMA foreign_key_check")).all()
            assert foreign_keys == []
        big = a_run("new-big")
        big.input = 2**70
        assert storage.create_run(big, []) is True
        loaded = storage.load_run("new-big")
        assert loaded is not None and loaded.input == 2**70
    finally:
        storage.close()


def test_indexes_for_the_storage_queries(fresh_db: FreshDb) -> None:
    storage = fresh_db.storage()
    storage.init()
    with storage.engine.connect() as conn:
        insp = sa.inspect(conn)
        columns = {
            table: [ix["column_names"] for ix in insp.get_indexes(table)] for table in FLUX_TABLES
        }
    assert ["workflow", "created_at"] in columns["flux_runs"]  # list_runs(workflow=...)
    assert ["status", "updated_at"] in columns["flux_runs"]  # stale_runs / list by status
    assert ["created_at"] in columns["flux_runs"]  # list_runs() newest first
    assert ["run_id", "seq"] in columns["flux_traces"]  # list_traces(run_id=...)
    assert ["wait_deadline"] in columns["flux_steps"]  # expired_waits
    assert ["status", "workflow", "updated_at"] in columns["flux_runs"]  # metrics gauges


def test_a_run_id_prefix_is_an_index_scan_on_postgresql(fresh_pg: FreshDb) -> None:
    """``show a1b2`` and the other commands taking an id prefix (``run_ids_with_prefix``)
    use ix_flux_runs_id_prefix (migration 0010), whatever the database's collation."""
    storage = fresh_pg.storage()
    storage.init()
    now = "2026-12-04T00:00:00+00:00"
    with storage.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO flux_runs (id, workflow, status, data, current_step, executor, "
                "version, created_at, updated_at) SELECT md5(i::text), 'w', 'completed', "
                "'{}'::jsonb, 0, 'local', 0, :now, :now FROM generate_series(1, 5000) i"
            ),
            {"now": now},
        )
        conn.execute(sa.text("ANALYZE flux_runs"))
    wanted = storage.run_ids_with_prefix("c4ca", limit=10)
    assert wanted and all(r.startswith("c4ca") for r in wanted)
    statements: list[tuple[str, Any]] = []
    sa.event.listen(
        storage.engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, params, ctx, many: statements.append((sql, params)),
    )
    storage.run_ids_with_prefix("c4ca")
    ((query, params),) = [(q, p) for q, p in statements if "flux_runs" in q]
    with storage.engine.connect() as conn:
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + query, params))
    assert "ix_flux_runs_id_prefix" in plan, plan


def test_upgrading_from_0001_keeps_stored_runs(fresh_db: FreshDb) -> None:
    """A database made by the first release: its runs survive the upgrade, and the new
    column is empty for them."""
    storage = fresh_db.storage(auto_migrate=False)
    assert upgrade(storage, "0001") == (None, "0001")
    with storage.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO flux_runs (id, workflow, status, input, data, current_step, "
                "executor, version, created_at, updated_at) VALUES ('old-1', 'wf', 'pending', "
                "'{\"x\": 1}', '{}', 0, 'celery', 0, :t, :t)"
            ),
            {"t": "2026-01-01 00:00:00"},
        )
    assert upgrade(storage) == ("0001", HEAD)
    state = storage.load_run("old-1")
    assert state is not None and state.input == {"x": 1} and state.status == RunStatus.PENDING
    with storage.engine.connect() as conn:
        meta = conn.execute(sa.text("SELECT start_meta FROM flux_runs WHERE id = 'old-1'"))
        assert meta.scalar() is None
