"""``/api/flux/metrics`` in the Flower tab: the Prometheus metrics of the store
(``fluxcelery.metrics``), the same as ``fluxcelery metrics`` serves.

Behind Flower's authentication like the tab's other JSON routes: 401 unless
``--basic-auth``/``--auth`` is configured (Prometheus sends ``basic_auth`` from its scrape
config) or ``FLOWER_UNAUTHENTICATED_API=true``. Not Flower's own ``/metrics`` (its Celery
event counters, in the Flower process's memory): these come from the database on each
scrape, on Flower's executor, never on the IOLoop. ``flower.py`` adds the route.
"""

from __future__ import annotations

import tornado.web
from flower.api import BaseApiHandler

from ..engine import FluxEngine
from ..metrics import exposition


class MetricsApi(BaseApiHandler):
    """``GET /api/flux/metrics``: text exposition format (OpenMetrics when the ``Accept``
    header asks for it)."""

    engine: FluxEngine

    def initialize(self, engine: FluxEngine) -> None:
        self.engine = engine

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    @tornado.web.authenticated
    async def get(self) -> None:
        accept = self.request.headers.get("Accept")
        body, content_type = await self.application.blocking_runner.run(
            "metrics", "fluxcelery database", exposition, self.engine.storage, accept
        )
        self.set_header("Content-Type", content_type)
        self.write(body)
