"""The composition root: the process-wide Celery app and default engine (what
``celery -A fluxcelery worker``, ``wf.delay()``, the CLI and Flower use), and the plugs that
let the lower layers reach them without importing this module or celery/:
``FluxEngine.dispatcher_factory`` and ``Workflow.starter``. Importing ``fluxcelery`` runs
this module (builds nothing: the app and the engine are made on first use)."""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery

from .celery.app import build_app, connect_worker_signals
from .celery.dispatch import CeleryDispatcher
from .celery.tasks import provide_engine
from .core.builder import Workflow
from .engine import FluxEngine
from .handle import RunHandle
from .settings import load_settings
from .storage.sql import SqlStorage
from .trace.configured import sinks_from_settings

_app: Celery | None = None
_engine: FluxEngine | None = None
_lock = threading.RLock()


def default_app() -> Celery:
    """The process-wide Celery app, from settings; its tasks run with the default engine."""
    global _app
    with _lock:
        if _app is None:
            app = build_app()
            provide_engine(app, default_engine, _default_timeout)
            connect_worker_signals(app)
            _app = app
        return _app


def default_engine() -> FluxEngine:
    """An engine on the configured database, with the configured trace sinks and defaults,
    sending runs to the process-wide app."""
    global _engine
    with _lock:
        if _engine is None:
            settings = load_settings()
            _engine = FluxEngine(
                storage=SqlStorage(settings.database_url),
                trace=sinks_from_settings(settings),
                default_timeout=settings.default_timeout,
                default_retries=settings.default_retries,
                dispatcher=CeleryDispatcher(default_app()),
            )
        return _engine


def set_default_engine(engine: FluxEngine | None) -> None:
    """Replace the default engine (tests, or an application that builds its own: set it in a
    ``FLUX_WORKFLOWS`` module and workers run its steps with it)."""
    global _engine
    with _lock:
        _engine = engine


def current_engine() -> FluxEngine | None:
    """The default engine if it was built or set, without building it."""
    return _engine


def _default_timeout() -> float | None:
    """The default engine's ``default_timeout`` without building it (worker start)."""
    engine = _engine
    return engine.default_timeout if engine is not None else load_settings().default_timeout


def _dispatcher_for(engine: FluxEngine, app: Any) -> CeleryDispatcher:
    return CeleryDispatcher(app or default_app(), engine)


def _start(wf: Workflow, input: Any, **options: Any) -> RunHandle:
    return default_engine().start(wf, input, **options)


FluxEngine.dispatcher_factory = _dispatcher_for
Workflow.starter = _start
