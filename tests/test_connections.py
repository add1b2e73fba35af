"""storage/connections.py: a thread's connection is closed when the thread ends, so threads
that come and go (the viewer's server, wait timers, a user's pool) leave no connection open
beyond the pool's; a forked child never closes the parent's."""

from __future__ import annotations

import gc
import os
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import PG_BASE, require_service

from fluxcelery import SqlStorage
from fluxcelery.storage.connections import ThreadConnections

THREADS = 50
POOL = 15  # the SQLAlchemy pool's size + overflow (storage/sql.py), an upper bound


def load_in_threads(storage: SqlStorage, run_id: str, threads: int = THREADS) -> None:
    def work() -> None:
        storage.load_run(run_id)

    for _ in range(threads):  # one after another: each thread ends before the next starts
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    gc.collect()


def sqlite_files_open(db: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _target(fd) == str(db))


def _target(fd: Path) -> str | None:
    try:
        return os.readlink(fd)
    except OSError:
        return None


def test_sqlite_threads_leave_no_connection_behind(tmp_path: Path) -> None:
    db = tmp_path / "flux.db"
    storage = SqlStorage(f"sqlite:///{db}")
    try:
        storage.load_run("none")  # migrated, and this thread's connection made
        # SQLite keeps the file descriptor of a closed connection for reuse while another
        # connection of the process holds a lock on the file: a few threads settle that.
        load_in_threads(storage, "none", threads=5)
        settled = sqlite_files_open(db)
        load_in_threads(storage, "none")
        assert storage._local_sqlite is not None
        assert storage._local_sqlite.connections.open_count() == 1  # this thread's
        assert sqlite_files_open(db) == settled  # not one more per thread
    finally:
        storage.close()
    assert sqlite_files_open(db) == 0


def test_postgres_threads_leave_no_more_than_the_pool(pg_storage: SqlStorage) -> None:
    require_service("postgres")
    name = f"flux_conn_{uuid.uuid4().hex[:8]}"
    url = f"{pg_storage.url}&application_name={name}"
    storage = SqlStorage(url)
    admin = sa.create_engine(PG_BASE)
    try:
        storage.load_run("none")
        load_in_threads(storage, "none")
        with admin.connect() as conn:
            count = conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                {"n": name},
            ).scalar_one()
        assert 1 <= count <= POOL + 1, count
        assert storage._direct is not None and storage._direct.connections.open_count() == 1
    finally:
        storage.close()
        admin.dispose()


def test_close_closes_every_threads_connection_and_get_reconnects() -> None:
    closed: list[int] = []
    counter = iter(range(100))
    cache: ThreadConnections[int] = ThreadConnections(lambda: next(counter), closed.append)
    ready, stop = threading.Event(), threading.Event()

    def hold() -> None:
        cache.get()
        ready.set()
        stop.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait(5)
    mine = cache.get()
    assert cache.open_count() == 2
    cache.close()
    assert sorted(closed) == [0, 1] and cache.open_count() == 0
    assert cache.get() != mine  # a new one after close
    stop.set()
    thread.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_closes_the_parents_connection() -> None:
    closed: list[tuple[int, int]] = []
    counter = iter(range(100))
    cache: ThreadConnections[int] = ThreadConnections(
        lambda: next(counter), lambda c: closed.append((os.getpid(), c))
    )
    parent_conn = cache.get()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new connection of its own; closing closes only that one
        try:
            child_conn = cache.get()
            cache.close()
            ok = child_conn != parent_conn and closed == [(os.getpid(), child_conn)]
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert cache.get() == parent_conn and closed == []
    cache.close()
    assert closed == [(os.getpid(), parent_conn)]
