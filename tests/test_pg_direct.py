"""The PostgreSQL hot path's own connections (fluxcelery/storage/pgdirect.py): a dropped
connection is an outage (``StorageError``) that heals on the next call, threads and forked
children each get their own, and a child never ends the parent's session."""

from __future__ import annotations

import multiprocessing
import os
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict

from fluxcelery import SqlStorage
from fluxcelery.errors import StorageError
from fluxcelery.records import RunState, StepState
from fluxcelery.states import RunStatus
from fluxcelery.storage.pgdirect import conninfo


def new_run(run_id: str) -> RunState:
    return RunState(
        id=run_id,
        workflow="pg-direct",
        status=RunStatus.PENDING,
        input={"n": 1},
        data={},
        steps=[StepState(name="a", index=0)],
    )


def backend_pid(storage: SqlStorage) -> int:
    rows = storage._fetch("SELECT pg_backend_pid()", {})
    return int(rows[0][0])


def terminate(storage: SqlStorage, pid: int) -> None:
    with storage.engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.commit()


def test_conninfo_keeps_every_part_of_the_url() -> None:
    url = (
        "postgresql+psycopg://u:p%40ss@127.0.0.1:5433/db"
        "?options=-csearch_path%3Dx%20-cstatement_timeout%3D5000&sslmode=disable"
    )
    assert conninfo_to_dict(conninfo(url)) == {
        "host": "127.0.0.1",
        "port": "5433",
        "user": "u",
        "password": "p@ss",
        "dbname": "db",
        "options": "-csearch_path=x -cstatement_timeout=5000",
        "sslmode": "disable",
    }


def test_options_with_spaces_reach_the_server(pg_schema_url: str) -> None:
    """Two ``-c`` options (a space between them) must both apply on the hot path's own
    connections: a ``+`` for the space once lost the search path (tables not found)."""
    storage = SqlStorage(pg_schema_url + "%20-cstatement_timeout%3D4321")
    try:
        storage.init()
        assert storage.create_run(new_run("direct-options"), []) is True
        rows = storage._fetch("SELECT current_setting('statement_timeout')", {})
        assert rows[0][0] == "4321ms"
        assert storage.load_run("direct-options") is not None
    finally:
        storage.delete_run("direct-options")
        storage.close()


def test_a_killed_connection_is_a_storage_error_then_heals(pg_storage: SqlStorage) -> None:
    assert pg_storage.create_run(new_run("direct-1"), []) is True
    terminate(pg_storage, backend_pid(pg_storage))
    with pytest.raises(StorageError) as caught:
        pg_storage.load_run("direct-1")
    assert "database error" in str(caught.value)
    assert "p@ss" not in str(caught.value)
    state = pg_storage.load_run("direct-1")  # a new connection
    assert state is not None and state.input == {"n": 1}


def test_each_thread_has_its_own_connection(pg_storage: SqlStorage) -> None:
    pids: list[int] = []
    threads = [threading.Thread(target=lambda: pids.append(backend_pid(pg_storage))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(pids)) == 2
    assert backend_pid(pg_storage) not in pids


def _child(storage: SqlStorage, out: Any) -> None:
    try:
        out.put(("ok", backend_pid(storage), storage.load_run("direct-fork") is not None))
    except Exception as exc:  # reported to the parent, which fails the test
        out.put(("error", repr(exc), False))
    finally:
        storage.close()


def test_a_forked_child_opens_its_own_and_leaves_the_parents_alone(
    pg_storage: SqlStorage,
) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("needs fork (prefork workers)")
    assert pg_storage.create_run(new_run("direct-fork"), []) is True
    parent = backend_pid(pg_storage)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(pg_storage, out))
    proc.start()
    status, child, found = out.get(timeout=30)
    proc.join(timeout=30)
    assert status == "ok", child
    assert found is True
    assert child != parent
    # The parent's session survived the child's close().
    assert backend_pid(pg_storage) == parent
    assert pg_storage.load_run("direct-fork") is not None
