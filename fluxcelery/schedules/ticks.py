"""Tick arithmetic: pure functions of a schedule and a time (no clock, no I/O).

Ticks lie on a fixed grid, whatever the time they are computed at:

- ``every=N``: the multiples of N seconds since the Unix epoch (UTC).
- ``cron``: the times whose wall clock in the schedule's timezone matches the expression
  (croniter). Across DST: a time that does not exist (clocks jump forward over it) ticks at
  the first time after the jump; a wall time that happens twice (clocks fall back) ticks
  twice when the minute or hour field starts with ``*`` (``*/15 * * * *``: every 15 real
  minutes), once (the first time) for fixed-time expressions (``30 2 * * *``), as Vixie
  cron does.

The run id of a tick derives from the schedule name and the tick's UTC time, so however
often a tick is published, it starts at most one run.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from .definition import Schedule

#: The Celery task a beat publishes per tick (fluxcelery/celery/ticks.py runs it).
TICK_TASK = "flux.schedule.tick"
RUN_ID_MAX = 64
#: Longest schedule name used as it is in run ids; longer ones are cut and hashed.
NAME_IN_ID_MAX = 32
TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_TIME_IN_ID = re.compile(r"(\d{8}T\d{6})Z(?:-m(\d{6}))?")
#: Safety net for croniter walks past skipped repeats (at most one per DST change).
_MAX_SKIPS = 4


def _as_utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"an aware datetime is needed, got naive {when!r}")
    return when.astimezone(UTC)


# -- the grid -------------------------------------------------------------------------------
def latest_tick(spec: Schedule, now: datetime) -> datetime:
    """The last tick at or before ``now`` (UTC)."""
    now = _as_utc(now)
    if spec.every is not None:
        seconds = int(now.timestamp() // spec.every) * spec.every
        return datetime.fromtimestamp(seconds, UTC)
    prev = _cron_step(spec, now, backwards=True)
    following = _cron_step(spec, prev, backwards=False)
    return following if following <= now else prev


def next_tick(spec: Schedule, now: datetime) -> datetime:
    """The first tick strictly after ``now`` (UTC)."""
    now = _as_utc(now)
    if spec.every is not None:
        return latest_tick(spec, now) + timedelta(seconds=spec.every)
    return _cron_step(spec, now, backwards=False)


def is_tick(spec: Schedule, when: datetime) -> bool:
    """Whether ``when`` lies on the schedule's grid."""
    return latest_tick(spec, when) == _as_utc(when)


def _cron_step(spec: Schedule, start: datetime, *, backwards: bool) -> datetime:
    """The cron time strictly before (after) ``start``, skipping second occurrences of
    repeated wall times for fixed-time expressions."""
    assert spec.cron is not None
    zone = spec.zone
    it = croniter(spec.cron, start.astimezone(zone))
    fixed = _fixed_time(spec.cron)
    for _ in range(_MAX_SKIPS):
        found = it.get_prev(datetime) if backwards else it.get_next(datetime)
        local = found.astimezone(zone)
        if not (fixed and _repeated(local)):
            return local.astimezone(UTC)
    raise RuntimeError(f"no tick of {spec.cron!r} near {start.isoformat()}")  # pragma: no cover


def _fixed_time(cron: str) -> bool:
    """Vixie cron's rule: neither the minute nor the hour field starts with ``*``."""
    minute, hour = cron.split()[:2]
    return not minute.startswith("*") and not hour.startswith("*")


def _repeated(local: datetime) -> bool:
    """``local`` is the second occurrence of a wall time (clocks fell back over it)."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def due_tick(spec: Schedule, now: datetime, handled: datetime) -> datetime | None:
    """The tick a beat should publish at ``now`` when every tick up to ``handled`` was
    dealt with: the latest tick after ``handled`` (older unhandled ones are skipped)."""
    latest = latest_tick(spec, now)
    return latest if latest > _as_utc(handled) else None


def catch_up_tick(spec: Schedule, now: datetime, last_run_at: datetime | None) -> datetime | None:
    """At beat start: the missed tick to start, if any. A tick is missed when it is at or
    before ``now`` and later than the schedule's newest stored run (``last_run_at``, its
    tick or manual start time); only the latest missed one starts, and only with
    ``catch_up``. A schedule with no stored run has missed nothing (it starts at its next
    tick), so deploying a new schedule does not start a run at once."""
    if not spec.catch_up or last_run_at is None:
        return None
    latest = latest_tick(spec, now)
    return latest if latest > _as_utc(last_run_at) else None


# -- run ids ------------------------------------------------------------------------------
def _name_in_id(name: str) -> str:
    """The schedule's name as run ids carry it: as is up to 32 characters, else its first
    19 and a hash (``~`` cannot occur in a name, so the two forms never meet)."""
    if len(name) <= NAME_IN_ID_MAX:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]
    return f"{name[:19]}~{digest}"


def run_id_prefix(name: str) -> str:
    """``sched:<name>:``: every run of the schedule, ticks and manual ones, has it."""
    return f"sched:{_name_in_id(name)}:"


def tick_run_id(name: str, tick: datetime) -> str:
    """``sched:<name>:20260102T030000Z``: the run id of a tick (at most 55 characters)."""
    return run_id_prefix(name) + _as_utc(tick).strftime(TIME_FORMAT)


def manual_run_id(name: str, at: datetime) -> str:
    """``sched:<name>:20260102T031507Z-m123456``: a run started by hand at ``at`` (down
    to the microsecond, so two starts are two runs); it sorts with the tick runs by time."""
    at = _as_utc(at)
    return f"{run_id_prefix(name)}{at.strftime(TIME_FORMAT)}-m{at.microsecond:06d}"


def run_time(name: str, run_id: str) -> tuple[datetime, bool] | None:
    """The time a run id of schedule ``name`` stands for and whether it was a manual start;
    None for an id that is not one of the schedule's."""
    prefix = run_id_prefix(name)
    if not run_id.startswith(prefix):
        return None
    match = _TIME_IN_ID.fullmatch(run_id[len(prefix) :])
    if match is None:
        return None
    when = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    manual = match.group(2) is not None
    if manual:
        when = when.replace(microsecond=int(match.group(2)))
    return when, manual


def local(spec: Schedule, when: datetime) -> datetime:
    """``when`` in the schedule's timezone."""
    zone: ZoneInfo = spec.zone
    return _as_utc(when).astimezone(zone)
