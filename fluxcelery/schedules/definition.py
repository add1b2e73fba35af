"""Declaring schedules (SPEC section 14): ``schedule(name, workflow, cron=... | every=...)``.

A declaration is checked once, with every problem reported together in one
``DefinitionError``; a valid one is a frozen ``Schedule`` kept in a process-wide registry
(like workflows), which ``celery beat``, workers, the CLI and Flower read after importing the
``FLUX_WORKFLOWS`` modules where schedules are declared.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ..core.builder import Workflow, registered_workflows
from ..core.errors import DefinitionError, PayloadTooLarge, SerializationError
from ..core.jsoncodec import dumps

#: Schedule names: letters, digits, ``.``, ``_`` and ``-`` (they go into run ids and URLs).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX = 200
CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")

#: What a schedule's input may be: JSON data, or a function of the tick (an aware datetime
#: in the schedule's timezone) that returns JSON data.
InputFn = Callable[[datetime], Any]


@dataclass(frozen=True)
class Schedule:
    """A workflow started at each tick of a fixed grid of times. Build it with
    ``schedule(...)`` (declared and registered) or ``define(...)`` (checked only)."""

    #: Unique among the schedules of a deployment; run ids derive from it.
    name: str
    #: The workflow each tick starts.
    workflow: Workflow
    #: A 5-field cron expression matched against wall-clock time in ``timezone``; or None.
    cron: str | None
    #: Seconds between ticks, which fall on multiples of it since the Unix epoch; or None.
    every: int | None
    #: Each run's input: JSON data, or a callable(tick) -> data, called on the worker that
    #: starts the tick's run (it should give the same data for the same tick).
    input: Any
    #: IANA time zone name: cron fields are matched in it and ticks are handed to ``input``
    #: in it.
    timezone: str
    #: Start the latest tick missed while no beat ran (when the schedule has run before).
    catch_up: bool

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def workflow_name(self) -> str:
        return self.workflow.name

    @property
    def cadence(self) -> str:
        """``cron 0 3 * * *`` or ``every 300s``: how the CLI and Flower show the grid."""
        return f"cron {self.cron}" if self.cron is not None else f"every {self.every}s"

    def input_for(self, tick: datetime) -> Any:
        """The input of the run of ``tick`` (an aware datetime)."""
        if callable(self.input):
            return self.input(tick.astimezone(self.zone))
        return self.input

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "workflow": self.workflow_name,
            "cron": self.cron,
            "every": self.every,
            "timezone": self.timezone,
            "catch_up": self.catch_up,
            "input": "<callable>" if callable(self.input) else self.input,
        }


def define(
    name: str,
    workflow: Workflow | str,
    *,
    cron: str | None = None,
    every: int | float | timedelta | None = None,
    input: Any = None,
    timezone: str = "UTC",
    catch_up: bool = False,
) -> Schedule:
    """A checked ``Schedule`` (not registered): ``DefinitionError`` naming every problem."""
    problems: list[str] = []
    label = name if isinstance(name, str) else repr(name)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        problems.append(
            f"name must be letters, digits, '.', '_' or '-' (starting with a letter or "
            f"digit), got {name!r}"
        )
    elif len(name) > NAME_MAX:
        problems.append(f"name is longer than {NAME_MAX} characters")
    wf = _workflow(workflow, problems)
    zone = _zone(timezone, problems)
    seconds = None
    if (cron is None) == (every is None):
        problems.append("give exactly one of cron= (5 fields) or every= (seconds > 0)")
    elif cron is not None:
        _check_cron(cron, zone, problems)
    else:
        seconds = _seconds(every, problems)
    if not callable(input):
        try:
            dumps(input, what="schedule input")
        except (SerializationError, PayloadTooLarge) as exc:
            problems.append(f"input must be JSON data or a callable(tick): {exc}")
    if not isinstance(catch_up, bool):
        problems.append(f"catch_up must be True or False, got {catch_up!r}")
    if problems:
        raise DefinitionError(f"Schedule {label!r} is invalid: " + "; ".join(problems))
    assert wf is not None
    return Schedule(
        name=name,
        workflow=wf,
        cron=" ".join(cron.split()) if cron is not None else None,
        every=seconds,
        input=input,
        timezone=timezone,
        catch_up=catch_up,
    )


def _workflow(workflow: Any, problems: list[str]) -> Workflow | None:
    if isinstance(workflow, Workflow):
        return workflow
    if isinstance(workflow, str):
        known = registered_workflows()
        if workflow in known:
            return known[workflow]
        names = sorted(known)
        hint = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") or "none"
        problems.append(
            f"unknown workflow {workflow!r} (registered: {hint}; define it, or import its "
            "module, before the schedule)"
        )
        return None
    problems.append(f"workflow must be a Workflow or a registered workflow name, got {workflow!r}")
    return None


def _zone(timezone: Any, problems: list[str]) -> ZoneInfo | None:
    if not isinstance(timezone, str) or not timezone:
        problems.append(f"timezone must be an IANA name like 'Europe/Paris', got {timezone!r}")
        return None
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"unknown timezone {timezone!r} (an IANA name like 'Europe/Paris')")
        return None


def _check_cron(cron: Any, zone: ZoneInfo | None, problems: list[str]) -> None:
    if not isinstance(cron, str):
        problems.append(f"cron must be a string like '0 3 * * *', got {cron!r}")
        return
    fields = cron.split()
    if len(fields) != len(CRON_FIELDS):
        problems.append(
            f"cron {cron!r} must have 5 fields ({', '.join(CRON_FIELDS)}), got {len(fields)}"
        )
        return
    try:
        it = croniter(" ".join(fields), datetime(2000, 1, 1, tzinfo=zone or UTC))
        it.get_next(datetime)
    except Exception as exc:  # croniter's errors are ValueErrors and KeyErrors
        reason = str(exc) or type(exc).__name__
        if "find next date" in reason:
            reason = "it never matches a date"
        problems.append(f"bad cron {cron!r}: {reason}")


def _seconds(every: Any, problems: list[str]) -> int | None:
    value = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"every must be a whole number of seconds > 0, got {every!r}")
        return None
    if value <= 0 or value != int(value):
        problems.append(f"every must be a whole number of seconds > 0, got {every!r}")
        return None
    return int(value)


# -- the process-wide registry ------------------------------------------------------------
_SCHEDULES: dict[str, Schedule] = {}
_LOCK = threading.Lock()


def schedule(
    name: str,
    workflow: Workflow | str,
    *,
    cron: str | None = None,
    every: int | float | timedelta | None = None,
    input: Any = None,
    timezone: str = "UTC",
    catch_up: bool = False,
) -> Schedule:
    """Start ``workflow`` at each tick of a cron expression or a fixed interval, while
    ``celery -A fluxcelery beat`` runs (docs/schedules.md).

    ``workflow``: a ``Workflow`` or the name of one defined already. Exactly one of
    ``cron`` (5 fields, matched in ``timezone``) or ``every`` (seconds; ticks on multiples
    of it since the Unix epoch). ``input``: JSON data, or a callable(tick) -> data where
    tick is the tick's scheduled time (aware, in ``timezone``). Each tick starts one run,
    whose id derives from ``name`` and the tick. Ticks missed while no beat ran are
    skipped; ``catch_up=True`` starts the latest missed one. A bad option, an unknown
    workflow or a name declared twice is a ``DefinitionError``.
    """
    spec = define(
        name,
        workflow,
        cron=cron,
        every=every,
        input=input,
        timezone=timezone,
        catch_up=catch_up,
    )
    with _LOCK:
        if name in _SCHEDULES:
            raise DefinitionError(
                f"Schedule {name!r} is declared twice (schedule names must be unique)"
            )
        _SCHEDULES[name] = spec
    return spec


def declared_schedules() -> dict[str, Schedule]:
    """Every schedule declared in this process, by name, sorted."""
    with _LOCK:
        return dict(sorted(_SCHEDULES.items()))


def forget_schedule(name: str) -> bool:
    """Remove a declaration (tests; a module reloaded on purpose); whether it existed."""
    with _LOCK:
        return _SCHEDULES.pop(name, None) is not None
