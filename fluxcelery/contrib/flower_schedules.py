"""The Schedules page of the Flower tab (``/workflows/schedules``) and its JSON
(``/api/flux/schedules``): each declared schedule with its next tick and its newest run,
linked to the run's page.

Schedules are declared in the ``FLUX_WORKFLOWS`` modules, which Flower does not import by
itself: the first request imports them (a module that fails is named on the page). Reads
run on Flower's executor, never on the IOLoop. ``flower.py`` adds these routes and hands
them its template helpers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import tornado.web
from flower.api import BaseApiHandler
from flower.views import BaseHandler

from ..declarative.sources import import_workflow_source
from ..engine import FluxEngine

log = logging.getLogger("fluxcelery.flower")

_imported: dict[str, str | None] = {}
_import_lock = threading.Lock()


def import_declarations(modules: list[str]) -> list[str]:
    """Import the ``FLUX_WORKFLOWS`` entries where schedules are declared (once each); the
    ones that failed, as ``entry: error`` lines."""
    failed = []
    with _import_lock:
        for name in modules:
            if name not in _imported:
                try:
                    import_workflow_source(name)
                    _imported[name] = None
                except Exception as exc:
                    log.error("fluxcelery flower: cannot import %s: %s", name, exc)
                    _imported[name] = f"{type(exc).__name__}: {exc}"
            if _imported[name] is not None:
                failed.append(f"{name}: {_imported[name]}")
    return failed


def read_schedules(engine: FluxEngine, modules: list[str]) -> dict[str, Any]:
    failed = import_declarations(modules)
    return {
        "schedules": [v.to_dict() for v in engine.schedules()],
        "import_errors": failed,
    }


class _SchedulesHandler(BaseHandler):
    engine: FluxEngine
    helpers: dict[str, Callable[..., Any]]
    refresh_seconds: int

    def initialize(
        self,
        engine: FluxEngine,
        helpers: dict[str, Callable[..., Any]],
        refresh_seconds: int = 5,
    ) -> None:
        """``helpers``: the functions every fluxcelery page can call (``flower.HELPERS``)."""
        self.engine = engine
        self.helpers = helpers
        self.refresh_seconds = refresh_seconds

    async def schedules(self) -> dict[str, Any]:
        modules = list(self.application.capp.conf.get("flux_workflows") or [])
        return await self.application.blocking_runner.run(
            "list schedules", "fluxcelery database", read_schedules, self.engine, modules
        )


class SchedulesView(_SchedulesHandler):
    """``/workflows/schedules``: the schedules table."""

    @tornado.web.authenticated
    async def get(self) -> None:
        found = await self.schedules()
        self.render(
            "flux_schedules.html",
            schedules=found["schedules"],
            import_errors=found["import_errors"],
            refresh=self.get_argument("refresh", "", strip=True) == "1",
            refresh_seconds=self.refresh_seconds,
            **self.helpers,
        )


class SchedulesApi(_SchedulesHandler, BaseApiHandler):
    """``GET /api/flux/schedules``: ``{"schedules": [...], "import_errors": [...]}``."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    @tornado.web.authenticated
    async def get(self) -> None:
        self.write(await self.schedules())
