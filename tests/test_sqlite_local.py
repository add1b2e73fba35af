"""The SQLite hot path's own connections (fluxcelery/storage/sqlite.py): one per thread,
configured like the pool's, a forked child opens its own, and close() lets them reopen."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from fluxcelery import SqlStorage
from fluxcelery.core.records import RunState, StepState
from fluxcelery.core.states import RunStatus


def new_run(run_id: str) -> RunState:
    return RunState(
        id=run_id,
        workflow="sqlite-local",
        status=RunStatus.PENDING,
        input={"n": 1},
        data={},
        steps=[StepState(name="a", index=0)],
    )


def connection_of(storage: SqlStorage) -> Any:
    storage.load_run("none")  # opens this thread's connection
    assert storage._local_sqlite is not None
    return storage._local_sqlite.get()


def pragmas(conn: Any) -> tuple[Any, ...]:
    return tuple(
        conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
    )


def test_each_thread_has_its_own_configured_connection(sqlite_storage: SqlStorage) -> None:
    mine = connection_of(sqlite_storage)
    assert connection_of(sqlite_storage) is mine
    theirs: list[Any] = []

    def other() -> None:  # read while the thread lives: its connection closes as it ends
        conn = connection_of(sqlite_storage)
        theirs.append((conn is mine, pragmas(conn)))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    # WAL, a 30 s busy timeout, foreign keys, and FULL (2): the WAL is synced at every
    # commit, so a power loss keeps every step.
    assert theirs == [(False, ("wal", 30000, 1, 2))]
    assert pragmas(mine) == ("wal", 30000, 1, 2)


def test_pooled_connections_sync_every_commit_too(sqlite_storage: SqlStorage) -> None:
    with sqlite_storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def test_close_then_use_again(sqlite_storage: SqlStorage) -> None:
    assert sqlite_storage.create_run(new_run("local-reopen"), []) is True
    sqlite_storage.close()
    state = sqlite_storage.load_run("local-reopen")
    assert state is not None and state.input == {"n": 1}


FORK_SCRIPT = """
import os, sys
from fluxcelery import SqlStorage
from fluxcelery.core.records import RunState, StepState
from fluxcelery.core.states import RunStatus

storage = SqlStorage(sys.argv[1])
run = RunState(id="local-fork", workflow="w", status=RunStatus.PENDING, input={}, data={},
               steps=[StepState(name="a", index=0)])
assert storage.create_run(run, [])
parent = storage._local_sqlite.get()
pid = os.fork()
if pid == 0:  # the child: a prefork worker process
    state = storage.load_run("local-fork")
    state.data = {"child": os.getpid()}
    ok = storage.save_run(state, state.version, [], [])
    os._exit(0 if ok and storage._local_sqlite.get() is not parent else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert storage._local_sqlite.get() is parent
state = storage.load_run("local-fork")
assert state.data == {"child": pid}, state.data
state.data = {"parent": True}
assert storage.save_run(state, state.version, [], [])  # the parent's connection still works
print("ok")
"""


def test_a_forked_child_writes_through_its_own_connection(tmp_path: Path) -> None:
    """Runs in a fresh interpreter: forking this test process (with the suite's background
    threads) is not what a prefork worker does, and SQLite forbids forking while another
    thread is inside it."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork (prefork workers)")
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, f"sqlite:///{tmp_path}/fork.db"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
