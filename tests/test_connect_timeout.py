"""A database host that accepts TCP and never answers: commands fail after the connect
timeout (``FLUX_DB_CONNECT_TIMEOUT``, default 10 s) with one line naming the database,
instead of hanging for minutes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxcelery import SqlStorage, StorageError
from fluxcelery.storage.sql import DEFAULT_CONNECT_TIMEOUT, connect_timeout_setting

pytest.importorskip("psycopg")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_storage_gives_up_after_the_connect_timeout(silent_port: int) -> None:
    storage = SqlStorage(
        f"postgresql://postgres:s3cret@127.0.0.1:{silent_port}/test", connect_timeout=2
    )
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        storage.load_run("x")
    elapsed = time.monotonic() - started
    assert elapsed < 15, elapsed  # 2 s per attempt (migrations check, then the load)
    message = str(caught.value)
    assert f"127.0.0.1:{silent_port}" in message and "s3cret" not in message
    storage.close()


def test_the_cli_says_so_in_one_line(silent_port: int, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FLUX_DB_CONNECT_TIMEOUT": "2",
        "FLUX_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{silent_port}/test",
    }
    code = "import sys; from fluxcelery.cli import main; sys.exit(main(['runs']))"
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 30
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr


@pytest.mark.parametrize(
    ("raw", "seconds"), [("", DEFAULT_CONNECT_TIMEOUT), ("5", 5), ("1", 2), ("3.7", 3)]
)
def test_connect_timeout_setting(monkeypatch: pytest.MonkeyPatch, raw: str, seconds: int) -> None:
    monkeypatch.setenv("FLUX_DB_CONNECT_TIMEOUT", raw)
    assert connect_timeout_setting() == seconds


@pytest.mark.parametrize("raw", ["0", "-3", "soon"])
def test_a_bad_connect_timeout_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("FLUX_DB_CONNECT_TIMEOUT", raw)
    with pytest.raises(StorageError, match="FLUX_DB_CONNECT_TIMEOUT"):
        connect_timeout_setting()
