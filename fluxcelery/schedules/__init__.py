"""Schedules (SPEC section 14): start a workflow at each tick of a cron expression or a
fixed interval, served by ``celery -A fluxcelery beat``.

- definition.py: ``schedule()`` / ``define()``, the frozen ``Schedule`` and the registry;
- ticks.py: pure tick arithmetic and run ids;
- runs.py: starting a tick's run once, and each schedule's newest run;
- beat.py: ``FluxScheduler``, the ``celery beat`` scheduler (imports celery.beat).
"""

from __future__ import annotations

from .definition import Schedule, declared_schedules, define, forget_schedule, schedule
from .runs import ScheduleView, describe_schedules, start_now, start_tick
from .ticks import (
    TICK_TASK,
    catch_up_tick,
    due_tick,
    latest_tick,
    manual_run_id,
    next_tick,
    run_id_prefix,
    run_time,
    tick_run_id,
)

__all__ = [
    "TICK_TASK",
    "Schedule",
    "ScheduleView",
    "catch_up_tick",
    "declared_schedules",
    "define",
    "describe_schedules",
    "due_tick",
    "forget_schedule",
    "latest_tick",
    "manual_run_id",
    "next_tick",
    "run_id_prefix",
    "run_time",
    "schedule",
    "start_now",
    "start_tick",
    "tick_run_id",
]
