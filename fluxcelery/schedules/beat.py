"""``celery -A fluxcelery beat``: the scheduler that serves the declared schedules.

``build_app`` makes ``FluxScheduler`` the app's ``beat_scheduler`` (unless the Celery
configuration names another). At each due tick it publishes one ``flux.schedule.tick`` task
carrying the schedule name and the tick's time; the worker that runs it starts the tick's
run under an id derived from both (celery/ticks.py), so two beats, a publish retried after a
broker blip or a beat restarted mid-tick still give one run per tick.

State is in memory only (no ``celerybeat-schedule`` file): a beat that starts serves the
ticks from its start on; ticks missed while no beat ran are skipped, except that a
``catch_up`` schedule starts the latest missed one, judged from the schedule's stored runs.
``beat_schedule`` entries of the Celery configuration are served too, as Celery's in-memory
``Scheduler`` serves them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery.beat import Scheduler

from ..celery.tasks import engine_for
from ..core.records import iso, utcnow
from ..declarative.sources import import_workflow_sources
from .definition import Schedule, declared_schedules
from .runs import last_run_time
from .ticks import TICK_TASK, catch_up_tick, due_tick, latest_tick, next_tick, tick_run_id

log = logging.getLogger("fluxcelery.schedules")

#: A tick's task expires once the schedule's next tick is due, and never within this many
#: seconds of being sent: a backlog of ticks (workers down) starts the latest only.
MIN_EXPIRES = 60.0
#: Seconds before a publish that failed (broker down) or a catch-up read that failed
#: (database down) is tried again.
RETRY_SECONDS = 1.0
#: Added to each sleep so that beat wakes just after a tick, not just before it.
WAKE_MARGIN = 0.01


class FluxScheduler(Scheduler):
    """Publishes one tick task per due tick of each declared schedule (see module doc)."""

    def __init__(
        self, app: Any, *args: Any, clock: Callable[[], datetime] | None = None, **kwargs: Any
    ) -> None:
        self.clock = clock or utcnow
        self.flux: dict[str, Schedule] = {}
        #: Per schedule, the latest tick published or deliberately skipped.
        self.handled: dict[str, datetime] = {}
        #: Catch-up schedules still to decide on, with the tick that was latest at start.
        self.pending_catch_up: dict[str, datetime] = {}
        self._started_at: datetime | None = None
        super().__init__(app, *args, **kwargs)

    # -- set up ---------------------------------------------------------------------------
    def setup_schedule(self) -> None:
        super().setup_schedule()  # beat_schedule entries, as Celery's Scheduler
        # Where schedules are declared (workers import the same entries).
        import_workflow_sources(self.app.conf.get("flux_workflows") or ())
        now = self.clock()
        self._started_at = now
        self.flux = declared_schedules()
        self.handled = {name: latest_tick(spec, now) for name, spec in self.flux.items()}
        self.pending_catch_up = {
            name: self.handled[name] for name, spec in self.flux.items() if spec.catch_up
        }
        self._log_serving(now)

    def _log_serving(self, now: datetime) -> None:
        if str(self.app.conf.broker_url or "").startswith("memory://"):
            log.warning(
                "fluxcelery beat: the broker is the embedded memory://, which no worker in "
                "another process reads: set FLUX_BROKER_URL (RabbitMQ or Redis)"
            )
        if not self.flux:
            log.warning(
                "fluxcelery beat: no schedules declared (declare them with "
                "fluxcelery.schedule() in a FLUX_WORKFLOWS module; imported: %s)",
                ", ".join(self.app.conf.get("flux_workflows") or ()) or "none",
            )
            return
        log.info("fluxcelery beat: serving %d schedule(s)", len(self.flux))
        for name, spec in self.flux.items():
            log.info(
                "  schedule %s: workflow %s, %s (%s)%s, next tick %s",
                name,
                spec.workflow_name,
                spec.cadence,
                spec.timezone,
                ", catch_up" if spec.catch_up else "",
                iso(next_tick(spec, now)),
            )

    @property
    def info(self) -> str:
        names = ", ".join(declared_schedules()) or "none declared"
        return f"    . fluxcelery schedules -> {names}"

    # -- ticking --------------------------------------------------------------------------
    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass: Celery's own entries, then the due ticks; the seconds to sleep."""
        wait = super().tick(*args, **kwargs)
        return min(float(wait), self.tick_schedules())

    def tick_schedules(self) -> float:
        """Publish what is due now; the seconds until something else is."""
        now = self.clock()
        wait = float(self.max_interval)
        if self.pending_catch_up and not self._catch_up(now):
            wait = RETRY_SECONDS
        for name, spec in self.flux.items():
            due = due_tick(spec, now, self.handled[name])
            if due is not None:
                if not self.publish(spec, due, now):
                    wait = min(wait, RETRY_SECONDS)
                    continue
                self.handled[name] = due
            wait = min(wait, (next_tick(spec, now) - now).total_seconds() + WAKE_MARGIN)
        return max(wait, 0.0)

    def _catch_up(self, now: datetime) -> bool:
        """Decide the pending catch-ups from the stored runs; False if that must be tried
        again (the database or the broker is down)."""
        try:
            storage = engine_for(self.app).storage
        except Exception as exc:
            log.warning("fluxcelery beat: catch-up postponed, no engine: %s", exc)
            return False
        done = True
        for name, missed_at in list(self.pending_catch_up.items()):
            spec = self.flux[name]
            try:
                last = last_run_time(storage, name)
            except Exception as exc:
                log.warning("schedule %s: catch-up postponed, runs unreadable: %s", name, exc)
                done = False
                continue
            tick = catch_up_tick(spec, missed_at, last)
            if tick is not None and self.handled[name] == tick:
                log.info(
                    "schedule %s: catching up missed tick %s (newest run: %s)",
                    name,
                    iso(tick),
                    iso(last),
                )
                if not self.publish(spec, tick, now):
                    done = False
                    continue
            self.pending_catch_up.pop(name)
        return done

    def publish(self, spec: Schedule, tick: datetime, now: datetime) -> bool:
        """Send the tick task of ``tick``; False (logged) if the broker refused."""
        expires = max(next_tick(spec, now), now + timedelta(seconds=MIN_EXPIRES))
        try:
            self.send_task(
                TICK_TASK,
                kwargs={"schedule": spec.name, "tick": tick.isoformat()},
                producer=self.producer,
                expires=expires,
                headers={"celery_beat_task": True},
            )
        except Exception as exc:
            log.error(
                "schedule %s: could not publish tick %s: %s (trying again in %ss)",
                spec.name,
                iso(tick),
                exc,
                RETRY_SECONDS,
            )
            return False
        log.info(
            "schedule %s: published tick %s (run id %s)",
            spec.name,
            iso(tick),
            tick_run_id(spec.name, tick),
        )
        return True
