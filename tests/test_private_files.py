"""Files fluxcelery creates hold inputs, outputs and error texts: a new SQLite database (and
its WAL) and a new trace file are readable by their owner only (0600), whatever the umask.
Existing files keep the mode they have."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fluxcelery import FluxEngine, JsonFileTraceSink, SqlStorage, TraceEvent, workflow


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_trace_file_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db, trace = tmp_path / "flux.db", tmp_path / "trace.ndjson"
        engine = FluxEngine(storage=SqlStorage(f"sqlite:///{db}"), trace=[JsonFileTraceSink(trace)])
        engine.execute(workflow("private-files").step("a", lambda ctx: 1), {})
        engine.close()
    finally:
        os.umask(old)
    assert mode(db) == 0o600
    assert mode(trace) == 0o600
    wal = tmp_path / "flux.db-wal"
    if wal.exists():
        assert mode(wal) == 0o600


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    trace = tmp_path / "shared.ndjson"
    trace.write_text("")
    trace.chmod(0o640)
    JsonFileTraceSink(trace).emit(TraceEvent(type="workflow:start", run_id="r", workflow="w"))
    assert trace.read_text().count("\n") == 1
    assert mode(trace) == 0o640
