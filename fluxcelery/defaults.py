"""The process-wide default engine (used by ``wf.delay``, workers and the CLI)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import FluxEngine

_engine: FluxEngine | None = None
_lock = threading.Lock()


def default_engine() -> FluxEngine:
    """An engine on the configured database, with the configured trace sinks."""
    global _engine
    with _lock:
        if _engine is None:
            from .engine import FluxEngine
            from .settings import load_settings
            from .storage.sql import SqlStorage
            from .trace.configured import sinks_from_settings

            settings = load_settings()
            sinks = sinks_from_settings(settings)
            _engine = FluxEngine(storage=SqlStorage(settings.database_url), trace=sinks)
        return _engine


def set_default_engine(engine: FluxEngine | None) -> None:
    """Replace the default engine (tests, or an application that builds its own)."""
    global _engine
    with _lock:
        _engine = engine
