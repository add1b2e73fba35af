"""An in-process Celery worker for the ``memory://`` broker, so that ``wf.delay()`` works
with no services at all (the first thing a new user tries)."""

from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.worker import WorkController

log = logging.getLogger("fluxcelery.celery")


class EmbeddedWorker:
    """A worker thread on ``app``; its tasks run with the app's engine (tasks.use_engine)."""

    def __init__(self, app: Celery, concurrency: int = 2) -> None:
        self.app = app
        self.concurrency = concurrency
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._worker: object | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flux-embedded-worker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the embedded Celery worker did not start within 30 s")

    def refresh(self) -> None:
        """Teach the running consumer about tasks registered after it started."""
        consumer = getattr(self._worker, "consumer", None)
        if consumer is not None and getattr(consumer, "strategies", None) is not None:
            consumer.update_strategies()

    def _run(self) -> None:
        ready = self._ready

        class _Worker(WorkController):
            def on_consumer_ready(self, consumer: object) -> None:
                ready.set()

        self.app.finalize()
        # Celery publishes chain continuations with the default app: make it ours, as
        # `celery worker` does for the app it runs.
        self.app.set_default()
        worker = _Worker(
            app=self.app,
            pool="threads",
            concurrency=self.concurrency,
            loglevel="WARNING",
            ready_callback=None,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            hostname="embedded@flux",
        )
        self._worker = worker
        try:
            worker.start()
        except Exception:  # pragma: no cover - reported to the user through start()
            log.exception("embedded worker stopped")
