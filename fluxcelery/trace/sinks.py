"""Trace sinks: NDJSON file (append, multi-process safe), console lines, SQL table."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ..core.jsoncodec import compact_encoder
from ..storage.sql import SqlStorage
from .event import TraceEvent

log = logging.getLogger("fluxcelery.trace")


_encode_line = compact_encoder(allow_nan=True)


class JsonFileTraceSink:
    """Appends one JSON line per event. Several processes may share one file.

    The file is opened once (``O_APPEND``) and each line is written with a single ``write``
    under an advisory lock, so lines from different processes never interleave. Unlike the
    upstream sink it never truncates unless ``reset=True`` is asked for.
    """

    def __init__(self, path: str | os.PathLike[str], reset: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if reset:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        self._fd: int | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def _open(self) -> int:
        # Re-open after fork: a prefork child must not share its parent's lock state.
        if self._fd is None or self._pid != os.getpid():
            # A new file is its owner's only: events carry error texts and run metadata.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def emit(self, event: TraceEvent) -> None:
        self.emit_many((event,))

    def emit_many(self, events: Sequence[TraceEvent]) -> None:
        """Write a change's events with one locked ``write``."""
        data = "".join([_encode_line(e.to_dict()) + "\n" for e in events]).encode()
        with self._lock:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.write(fd, data)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None


def read_ndjson(path: str | os.PathLike[str]) -> list[TraceEvent]:
    """Read a trace file; blank and malformed lines are skipped (a crash can cut the last)."""
    events = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            events.append(TraceEvent.from_dict(json.loads(line)))
        except (ValueError, TypeError, AttributeError, KeyError):
            continue  # not an event (a cut line, another tool's output): skip it
    return events


class ConsoleLogger:
    """Human-readable lines, one per event (to stderr by default)."""

    def __init__(self, stream: IO[str] | None = None, prefix: str = "[flux]") -> None:
        self.stream = stream
        self.prefix = prefix

    def format(self, e: TraceEvent) -> str:
        parts = [
            self.prefix,
            e.ts.strftime("%H:%M:%S.%f")[:-3],
            f"{e.workflow}/{e.run_id[:8]}",
            e.type,
        ]
        if e.step is not None:
            parts.append(f"step={e.step}")
        if e.attempt is not None:
            parts.append(f"attempt={e.attempt}" + (f"/{e.max_attempts}" if e.max_attempts else ""))
        if e.status:
            parts.append(f"status={e.status}")
        if e.duration_ms is not None:
            parts.append(f"{e.duration_ms}ms")
        if e.error:
            parts.append(f"error={e.error}")
        return " ".join(parts)

    def emit(self, event: TraceEvent) -> None:
        stream = self.stream or sys.stderr
        stream.write(self.format(event) + "\n")
        stream.flush()


class SqlTraceSink:
    """Writes events to the ``flux_traces`` table of a database.

    With ``SqlStorage`` the engine already writes trace rows in the same transaction as the
    state change they describe; use this sink to send traces of another store (for example
    ``MemoryStorage``) to a database.
    """

    def __init__(self, url_or_storage: Any) -> None:
        if isinstance(url_or_storage, SqlStorage):
            self.storage = url_or_storage
        else:
            self.storage = SqlStorage(str(url_or_storage))

    def emit(self, event: TraceEvent) -> None:
        self.storage.append_traces([event])

    def emit_many(self, events: Sequence[TraceEvent]) -> None:
        self.storage.append_traces(list(events))
