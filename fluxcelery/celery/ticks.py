"""The task a beat publishes per tick (``flux.schedule.tick``): start the tick's run.

The run id derives from the schedule name and the tick's time (schedules/ticks.py), and
``engine.start`` with an existing run id starts nothing new, so the same tick published
twice (two beats, a retried publish) or delivered twice (a worker lost) gives one run.
"""

from __future__ import annotations

import logging
from datetime import datetime

from celery import Celery, Task
from sqlalchemy.exc import SQLAlchemyError

from ..core.errors import DispatchError, FluxError, StorageError
from ..schedules.definition import declared_schedules
from ..schedules.runs import start_tick
from ..schedules.ticks import TICK_TASK, is_tick
from .tasks import engine_for, outage_delay

log = logging.getLogger("fluxcelery.schedules")


def register_tick_task(app: Celery) -> None:
    @app.task(
        name=TICK_TASK,
        bind=True,
        acks_late=True,
        ignore_result=True,
        shared=False,
        max_retries=None,
    )
    def schedule_tick(self: Task, schedule: str, tick: str, outages: int = 0) -> str | None:
        """Start the run of ``tick`` (ISO time) of ``schedule``; its run id."""
        spec = declared_schedules().get(schedule)
        if spec is None:
            log.error(
                "tick %s of schedule %r dropped: no such schedule here (declare it in a "
                "FLUX_WORKFLOWS module the workers import)",
                tick,
                schedule,
            )
            return None
        try:
            at = datetime.fromisoformat(tick)
            on_grid = at.tzinfo is not None and is_tick(spec, at)
        except ValueError:
            on_grid = False
        if not on_grid:
            log.error(
                "tick %s of schedule %r dropped: not a tick of %s (%s)",
                tick,
                schedule,
                spec.cadence,
                spec.timezone,
            )
            return None
        try:
            return start_tick(engine_for(self.app), spec, at)
        except (StorageError, SQLAlchemyError, OSError, DispatchError) as exc:
            countdown = outage_delay(outages)
            log.warning(
                "tick %s of schedule %s: %s; retrying in %ss", tick, schedule, exc, countdown
            )
            raise self.retry(
                exc=exc,
                countdown=countdown,
                max_retries=None,
                kwargs={"schedule": schedule, "tick": tick, "outages": outages + 1},
            )
        except FluxError as exc:  # invalid input, an unknown workflow: no run for this tick
            log.error("tick %s of schedule %s started no run: %s", tick, schedule, exc)
            raise
