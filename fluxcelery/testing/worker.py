"""Runs on a real Celery worker inside a test: the time-skipping Celery app, the dispatcher
that sends to it, and ``FluxWorker``, a worker thread from ``celery.contrib.testing`` (the
worker of ``celery.contrib.pytest``'s ``celery_worker`` fixture, which pytest-celery enables).

Countdowns pass at once: a task sent with a countdown (a retry's backoff, ``start(...,
countdown=)``) is sent to run now, and the test's ``FluxClock`` reads its due time when it
starts. Wait timeouts are not sent as ``flux.wait_timeout`` tasks: ``FluxClock.advance`` fails
the waits that fall due (the clock watches the engine).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, _state, signals
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state

from ..celery.app import build_app
from ..celery.dispatch import CeleryDispatcher
from ..celery.tasks import use_engine
from ..core.builder import Workflow
from ..core.records import FluxResult
from ..engine import FluxEngine
from ..handle import RunHandle
from ..settings import Settings
from .clock import FluxClock

#: No countdown of the test app is cut into hops (see celery/countdown.py): none is held.
NO_HOPS = 10.0**9


class TimeSkippingCelery(Celery):
    """A Celery app whose countdowns pass at once. ``flux_clock``: the clock that reads a
    delayed task's due time when the task starts (None: countdowns are dropped, no time
    passes)."""

    flux_clock: FluxClock | None = None

    def send_task(
        self,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        countdown: float | None = None,
        eta: datetime | str | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> Any:
        """Send at once what was to wait ``countdown`` seconds (or until ``eta``); the due
        time goes with the task id to the clock."""
        delay = float(countdown or 0.0)
        if eta is not None:
            when = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
            if when.tzinfo is None:  # Celery reads a naive ETA as UTC (enable_utc)
                when = when.replace(tzinfo=UTC)
            delay = (when - self.now()).total_seconds()
        task_id = task_id or str(uuid.uuid4())
        clock = self.flux_clock
        if clock is not None and delay > 0:
            with _due_lock:
                _due[task_id] = clock.now() + timedelta(seconds=delay)
        return super().send_task(name, args, kwargs, task_id=task_id, **options)


#: Due times of the delayed tasks sent (by task id), read when each starts.
_due: dict[str, datetime] = {}
_due_lock = threading.Lock()


def _pass_due_time(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    """``task_prerun``: a delayed task starts at its due time (the clock moves on to it)."""
    app = getattr(sender, "app", None)
    if not isinstance(app, TimeSkippingCelery) or task_id is None:
        return
    with _due_lock:
        due = _due.pop(task_id, None)
    if due is not None and app.flux_clock is not None:
        app.flux_clock.pass_to(due)


def build_test_app(broker_url: str, clock: FluxClock | None, queue: str | None = None) -> Celery:
    """A fluxcelery Celery app on ``broker_url`` whose countdowns pass at once on ``clock``,
    sending to its own queue (``queue``, default: a new name) so that leftover messages or
    other workers on a shared broker never meet this test's."""
    settings = Settings(
        broker_url=broker_url,
        max_countdown=NO_HOPS,
        celery={
            "task_default_queue": queue or f"flux_test_{uuid.uuid4().hex[:12]}",
            "worker_send_task_events": False,
            "task_send_sent_event": False,
        },
    )
    app = build_app(settings, cls=TimeSkippingCelery)
    app.flux_clock = clock
    app.task(name=WAKE_TASK, shared=False, ignore_result=True)(_wake)
    return app


#: A task that does nothing: sent to a stopping worker, it ends the worker's wait for
#: messages at once (an idle worker on ``memory://`` notices a stop only every 2 s).
WAKE_TASK = "flux.testing.wake"


def _wake() -> None:
    return None


class ClockDispatcher(CeleryDispatcher):
    """Sends runs to the test app's worker (never starting an embedded one), teaches a
    running worker the tasks of workflows registered after it started, and leaves wait
    timeouts to the clock."""

    def __init__(self, app: Celery, engine: FluxEngine | None = None) -> None:
        super().__init__(app, engine, own_worker=False)
        #: The worker running this app's tasks (set by ``FluxWorker``).
        self.worker: Any = None

    def register(self, wf: Workflow, default_timeout: float | None) -> None:
        known = len(self._registered)
        super().register(wf, default_timeout)
        consumer: Any = getattr(self.worker, "consumer", None)
        if len(self._registered) > known and getattr(consumer, "strategies", None) is not None:
            consumer.update_strategies()

    def schedule_wait_timeout(self, run_id: str, index: int, seconds: float) -> None:
        """Nothing is sent: ``FluxClock.advance`` fails the wait when it falls due."""


class FluxWorker:
    """A real Celery worker thread running ``engine``'s runs (those started with
    ``engine.start``): the same step tasks, JSON messages and broker round trips as a
    ``celery worker`` process, on the ``threads`` pool (no time limits or crash tests: use a
    ``celery worker`` subprocess for those).

    ``engine``: built with a ``ClockDispatcher`` on ``app``. Use ``running()`` to start it.
    """

    def __init__(
        self, engine: FluxEngine, app: Celery, *, pool: str = "threads", concurrency: int = 4
    ) -> None:
        self.engine = engine
        self.app = app
        self.pool = pool
        self.concurrency = concurrency
        #: The running ``WorkController`` (None until started).
        self.controller: Any = None

    def __repr__(self) -> str:
        return f"<FluxWorker {self.app.conf.broker_url} queue={self.queue}>"

    @property
    def queue(self) -> str:
        """The queue this worker consumes (the app's default queue)."""
        return str(self.app.conf.task_default_queue)

    def start(self, workflow: Workflow, input: Any = None, **options: Any) -> RunHandle:
        """``engine.start``: enqueue a run for this worker."""
        return self.engine.start(workflow, input, **options)

    def run(
        self, workflow: Workflow, input: Any = None, *, timeout: float = 30.0, **options: Any
    ) -> FluxResult:
        """Start a run on this worker and wait until it finishes or suspends (``timeout``
        seconds at most: ``RunTimeout``)."""
        return self.start(workflow, input, **options).get(timeout=timeout)

    def wait(self, run_id: str, *, timeout: float = 30.0) -> FluxResult:
        """Wait until run ``run_id`` finishes or suspends (after a signal, a decision or
        ``FluxClock.advance``, its work goes on on this worker)."""
        return RunHandle(self.engine, run_id).get(timeout=timeout)

    @contextmanager
    def running(self) -> Iterator[FluxWorker]:
        """Run the worker thread for the ``with`` block; stopped (and the app's queue
        deleted on a real broker) at its end. One worker at a time per process."""
        dispatcher = self.engine.dispatcher()
        use_engine(self.app, self.engine)
        signals.task_prerun.connect(_pass_due_time, weak=False, dispatch_uid="flux-testing-due")
        previous, current = _state.default_app, _state._tls.current_app
        try:
            with start_worker(
                self.app,
                pool=self.pool,
                concurrency=self.concurrency,
                perform_ping_check=False,
                loglevel="WARNING",
                hostname=f"flux-test-{uuid.uuid4().hex[:6]}@localhost",
            ) as controller:
                self.controller = controller
                if isinstance(dispatcher, ClockDispatcher):
                    dispatcher.worker = controller
                try:
                    yield self
                finally:
                    if isinstance(dispatcher, ClockDispatcher):
                        dispatcher.worker = None
                    self.controller = None
                    self._wake_to_stop()
        finally:
            # start_worker made the test app the default and current one: not after the test
            _state.set_default_app(previous)
            _state._set_current_app(current)
            self._delete_queue()

    def _wake_to_stop(self) -> None:
        """Tell the worker to stop (what ``start_worker`` does next) and wake it with
        messages, so that it stops now rather than after its waits for messages: one ends
        the wait it is in, the other the one more it takes on its way out."""
        worker_state.should_terminate = 0
        try:
            for _ in range(2):
                self.app.send_task(WAKE_TASK, queue=self.queue)
        except Exception:  # the broker went away: the worker stops at its next poll
            pass

    def _delete_queue(self) -> None:
        if str(self.app.conf.broker_url).startswith("memory://"):
            return
        try:
            with self.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.queue)
        except Exception:  # the broker went away with the test: nothing to clean
            pass
