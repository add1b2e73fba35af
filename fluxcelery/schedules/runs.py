"""A schedule's runs: starting the run of a tick (once, whoever asks) and reading the
newest run of each schedule (``engine.schedules()``, ``fluxcelery schedules``, Flower)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..core.errors import IdempotencyConflict
from ..core.records import iso
from .definition import Schedule
from .ticks import manual_run_id, next_tick, run_id_prefix, run_time, tick_run_id

if TYPE_CHECKING:
    from ..engine import FluxEngine
    from ..storage.base import Storage

log = logging.getLogger("fluxcelery.schedules")


def start_tick(engine: FluxEngine, spec: Schedule, tick: datetime) -> str:
    """Start the run of ``tick`` on workers and return its id. The run id derives from the
    schedule and the tick, so a tick started again (two beats, a publish retried, a
    redelivered task) finds its run and starts nothing new (``engine.start``'s idempotent
    start). An ``input`` callable that gives other data the second time is logged, not
    raised: the tick has its run."""
    run_id = tick_run_id(spec.name, tick)
    if engine.get(run_id) is not None:
        log.info("schedule %s: tick %s has run %s already", spec.name, iso(tick), run_id)
        return run_id
    payload = spec.input_for(tick)
    try:
        engine.start(spec.workflow, payload, run_id=run_id)
    except IdempotencyConflict as exc:
        log.warning(
            "schedule %s: tick %s has run %s already, started with other input (%s)",
            spec.name,
            iso(tick),
            run_id,
            exc,
        )
        return run_id
    log.info("schedule %s: tick %s -> run %s", spec.name, iso(tick), run_id)
    return run_id


def start_now(engine: FluxEngine, spec: Schedule, now: datetime, *, local: bool = False) -> str:
    """Start one run of the schedule now, outside its grid (``fluxcelery schedules run``):
    its id is ``manual_run_id(name, now)`` and its input is made for the tick ``now``.
    ``local``: run it in this process (the embedded broker) instead of on workers."""
    run_id = manual_run_id(spec.name, now)
    payload = spec.input_for(now)
    if local:
        engine.execute(spec.workflow, payload, run_id=run_id)
    else:
        engine.start(spec.workflow, payload, run_id=run_id)
    log.info("schedule %s: started run %s by hand", spec.name, run_id)
    return run_id


def last_run_id(storage: Storage, name: str) -> str | None:
    """The id of the schedule's newest run (a tick's or a manual one): run ids sort by
    time within a schedule."""
    found = storage.run_ids_with_prefix(run_id_prefix(name), 1, descending=True)
    return found[0] if found else None


def last_run_time(storage: Storage, name: str) -> datetime | None:
    """The tick (or manual start) time of the schedule's newest run; None if it has none."""
    run_id = last_run_id(storage, name)
    parsed = run_time(name, run_id) if run_id is not None else None
    return parsed[0] if parsed is not None else None


@dataclass(frozen=True)
class ScheduleView:
    """A schedule as ``engine.schedules()`` reports it."""

    name: str
    workflow: str
    cron: str | None
    every: int | None
    timezone: str
    catch_up: bool
    #: The first tick after the time asked at (UTC).
    next_tick: datetime
    #: The schedule's newest run (a tick's or a manual one) and its status, if any.
    last_run_id: str | None
    last_run_status: str | None
    #: The tick (or manual start time) of that run.
    last_run_at: datetime | None
    last_run_manual: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "workflow": self.workflow,
            "cron": self.cron,
            "every": self.every,
            "timezone": self.timezone,
            "catch_up": self.catch_up,
            "next_tick": iso(self.next_tick),
            "next_tick_local": iso(self.next_tick.astimezone(ZoneInfo(self.timezone))),
            "last_run_id": self.last_run_id,
            "last_run_status": self.last_run_status,
            "last_run_at": iso(self.last_run_at),
            "last_run_manual": self.last_run_manual,
        }


def describe_schedules(
    storage: Storage, schedules: Iterable[Schedule], now: datetime
) -> list[ScheduleView]:
    """Each schedule with its next tick after ``now`` and its newest run (one run id
    prefix read and one run read per schedule)."""
    views = []
    for spec in schedules:
        run_id = last_run_id(storage, spec.name)
        state = storage.load_run(run_id) if run_id is not None else None
        parsed = run_time(spec.name, run_id) if run_id is not None else None
        views.append(
            ScheduleView(
                name=spec.name,
                workflow=spec.workflow_name,
                cron=spec.cron,
                every=spec.every,
                timezone=spec.timezone,
                catch_up=spec.catch_up,
                next_tick=next_tick(spec, now),
                last_run_id=run_id,
                last_run_status=state.status.value if state is not None else None,
                last_run_at=parsed[0] if parsed is not None else None,
                last_run_manual=parsed[1] if parsed is not None else False,
            )
        )
    return views
