"""Shared fixtures. Services are probed once; a missing service skips its tests on a
laptop and fails them under ``CI=true``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import (  # noqa: F401  (re-exported for tests)
    AMQP_URL,
    IN_CI,
    PG_BASE,
    REDIS_URL,
    ZERO_BACKOFF,
    event_types,
    no_sleep,
    require_service,
    service_up,
)

from fluxcelery import FluxEngine, MemoryStorage, SqlStorage


@pytest.fixture
def make_engine() -> Iterator[Callable[..., FluxEngine]]:
    """Build engines with no backoff sleeping; closed at the end of the test."""
    made: list[FluxEngine] = []

    def factory(storage: Any = None, **kwargs: Any) -> FluxEngine:
        kwargs.setdefault("backoff", ZERO_BACKOFF)
        kwargs.setdefault("sleep", no_sleep)
        engine = FluxEngine(storage=storage if storage is not None else MemoryStorage(), **kwargs)
        made.append(engine)
        return engine

    yield factory
    for engine in made:
        engine.close()


@pytest.fixture
def engine(make_engine: Callable[..., FluxEngine]) -> FluxEngine:
    """An in-memory engine with zero backoff."""
    return make_engine()


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL on database ``test`` whose tables live in a schema of this session."""
    require_service("postgres")
    import sqlalchemy as sa

    schema = f"flux_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(PG_BASE, pool_pre_ping=True)  # chaos tests kill connections
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
    yield url
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _truncate(storage: SqlStorage) -> None:
    import sqlalchemy as sa

    with storage.engine.begin() as conn:
        if storage.dialect == "postgresql":
            conn.execute(sa.text("TRUNCATE flux_traces, flux_steps, flux_runs"))
        else:
            for table in ("flux_traces", "flux_steps", "flux_runs"):
                conn.execute(sa.text(f"DELETE FROM {table}"))


@pytest.fixture
def pg_storage(pg_schema_url: str) -> Iterator[SqlStorage]:
    """A migrated, empty PostgreSQL storage."""
    storage = SqlStorage(pg_schema_url)
    storage.init()
    _truncate(storage)
    yield storage
    storage.close()


@pytest.fixture
def sqlite_storage(tmp_path: Any) -> Iterator[SqlStorage]:
    """A migrated, empty SQLite storage in a file (WAL, like the default)."""
    storage = SqlStorage(f"sqlite:///{tmp_path}/flux.db")
    storage.init()
    yield storage
    storage.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_storage(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """Each storage backend in turn (the contract suite runs against all of them)."""
    if request.param == "memory":
        yield MemoryStorage()
    elif request.param == "sqlite":
        yield request.getfixturevalue("sqlite_storage")
    else:
        yield request.getfixturevalue("pg_storage")


@pytest.fixture(params=["sqlite", "postgres"])
def sql_storage(request: pytest.FixtureRequest) -> Any:
    """Each SQL backend in turn."""
    fixture = {"sqlite": "sqlite_storage", "postgres": "pg_storage"}[request.param]
    return request.getfixturevalue(fixture)
