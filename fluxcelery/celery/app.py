"""Building the Celery app behind ``celery -A fluxcelery worker`` (the process-wide one is
``defaults.default_app``).

Settings come from ``celeryconfig.py`` or ``FLUX_*`` variables (see ``fluxcelery.settings``).
Workers import the modules in ``FLUX_WORKFLOWS`` at start and register one task per step,
named ``flux.<workflow>.<step>``. JSON is the only serializer accepted.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from celery.concurrency import get_implementation

from ..core.builder import registered_workflows
from ..declarative.sources import import_workflow_sources
from ..runner.invoke import use_native_time_limits
from ..settings import Settings, env_flag, load_settings, require_extra
from .pools import POOLS, pool_name, psycopg_blocks_gevent, timeout_warning
from .tasks import default_timeout_for, register_builtin_tasks, register_workflow
from .ticks import register_tick_task

log = logging.getLogger("fluxcelery.celery")

#: ``celery -A fluxcelery beat`` serves the declared schedules (schedules/beat.py).
BEAT_SCHEDULER = "fluxcelery.schedules.beat:FluxScheduler"


def build_app(settings: Settings | None = None, *, cls: type[Celery] = Celery) -> Celery:
    """The Celery app for ``settings``; ``cls``: a subclass of ``Celery`` to build (the
    time-skipping app of ``fluxcelery.testing``)."""
    settings = settings or load_settings()
    require_extra(settings.broker_url, "the broker URL")
    require_extra(settings.result_backend, "the result backend URL")
    app = cls("fluxcelery", set_as_current=False)
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        # Task events feed Flower's task pages; they cost broker messages per task, so they
        # can be turned off (FLUX_TASK_EVENTS=0) where nobody watches.
        "worker_send_task_events": env_flag(os.environ.get("FLUX_TASK_EVENTS"), True),
        "task_send_sent_event": env_flag(os.environ.get("FLUX_TASK_EVENTS"), True),
        "broker_connection_retry_on_startup": True,
        "task_default_queue": os.environ.get("FLUX_QUEUE", "flux"),
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
    }
    if settings.embedded:
        # The in-process transport polls; the default of 1 s per poll makes a 4-step run
        # take seconds.
        conf["broker_transport_options"] = {"polling_interval": 0.005}
    conf.update(settings.celery)
    conf.setdefault("beat_scheduler", BEAT_SCHEDULER)  # unless celeryconfig names one
    conf["broker_url"] = settings.broker_url  # FLUX_BROKER_URL wins over celeryconfig
    conf["result_backend"] = settings.result_backend
    for key in ("task_serializer", "result_serializer", "event_serializer"):
        if conf.get(key, "json") != "json":
            log.warning("fluxcelery: %s=%r ignored; only JSON is used", key, conf[key])
        conf[key] = "json"
    conf["accept_content"] = ["json"]
    conf["result_accept_content"] = ["json"]
    app.conf.update(conf)
    app.conf.flux_workflows = list(settings.workflows)
    app.conf.flux_max_countdown = settings.max_countdown
    register_builtin_tasks(app)
    register_tick_task(app)
    return app


def import_workflow_modules(app: Celery) -> list[str]:
    """Import ``FLUX_WORKFLOWS`` modules (and load its workflow files) and register a task
    for every step defined."""
    modules = import_workflow_sources(app.conf.get("flux_workflows") or [])
    default_timeout = default_timeout_for(app)  # after the modules: one may set the engine
    for wf in registered_workflows().values():
        try:
            register_workflow(app, wf.freeze(), default_timeout)
        except Exception as exc:  # an incomplete definition must not stop the worker
            log.error("workflow %r not registered: %s", wf.name, exc)
    return modules


def connect_worker_signals(app: Celery) -> None:
    """What ``celery worker`` on ``app`` does at start: import the workflow modules and
    register their tasks, let prefork children stop handlers at their soft time limit, and
    warn of pools that cannot (pools.py)."""
    pool: list[str] = []  # the worker's pool, known at worker_init (before any child forks)

    def on_import_modules(sender: Any = None, **_: Any) -> None:
        if sender is app:
            import_workflow_modules(app)

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            pool[:] = [pool_name(get_implementation(sender.pool_cls))]

    def on_process_init(**_: Any) -> None:
        # The solo pool sends this signal too, from the worker's own process, where Celery
        # enforces no limit: there the invoker's SIGALRM timer must stay in charge.
        limits = POOLS.get(pool[0]) if pool else None
        if limits is not None and limits.celery_limits:
            use_native_time_limits()

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app or getattr(sender, "pool", None) is None:
            return
        name = pool_name(type(sender.pool))
        warning = timeout_warning(name, step_timeouts(app))
        if warning is not None:
            log.warning(warning)
        if name == "gevent" and psycopg_blocks_gevent():
            log.warning(
                "fluxcelery: psycopg was imported before gevent's monkey-patching, so every "
                "database call blocks all greenlets: start the worker with `celery -A "
                "fluxcelery worker -P gevent`, or patch before anything imports psycopg"
            )

    signals.import_modules.connect(on_import_modules, weak=False)
    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)


def step_timeouts(app: Celery) -> dict[str, float]:
    """The step and compensation tasks of ``app`` that have a timeout (their soft limit)."""
    return {
        name: float(task.soft_time_limit)
        for name, task in app.tasks.items()
        if getattr(task, "flux_target", None) is not None and task.soft_time_limit is not None
    }
