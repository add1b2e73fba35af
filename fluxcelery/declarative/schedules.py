"""A workflow file's ``schedules:`` (SPEC sections 14 and 15), checked with the rest of the
file and declared with ``schedule(...)`` once its workflow is built.

The JSON Schema checks each entry's shape (keys, types, one of ``cron``/``every``); the
checks ``schedule()`` makes beyond it (a cron expression's fields and dates, the time zone,
the input) are its own functions, called per key so that each problem has the line and
column of its value. A file declares its schedules only when it has no problem at all, all
of them or none.

Names are unique: twice in one file, or a name already declared in the process (in Python,
or by another file), is a problem of the file. Loading the same file again (``validate``
then a worker's load, or a test) finds its own declarations: one that says the same (same
workflow name, cron or every, input, timezone, catch_up) is replaced by the new one, which
points at the workflow just built; one that differs is the problem above.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.builder import Workflow
from ..core.errors import DefinitionError, PayloadTooLarge, SerializationError
from ..core.jsoncodec import dumps
from ..schedules.definition import (
    Schedule,
    _check_cron,
    _seconds,
    _zone,
    declared_schedules,
    define,
    forget_schedule,
    schedule,
)
from .document import Document, PathKey

#: One file's schedules are declared together (a file loaded by two threads at once).
_lock = threading.Lock()


@dataclass(frozen=True)
class PlannedSchedule:
    """One entry of ``schedules:`` that passed every check: ``schedule()``'s arguments."""

    name: str
    path: PathKey
    cron: str | None
    every: int | None
    input: Any
    timezone: str
    catch_up: bool

    def options(self) -> dict[str, Any]:
        return {
            "cron": self.cron,
            "every": self.every,
            "input": self.input,
            "timezone": self.timezone,
            "catch_up": self.catch_up,
        }

    def same_as(self, existing: Schedule, workflow: str) -> bool:
        """Whether ``existing`` declares what this entry does (the file loaded again)."""
        if callable(existing.input):
            return False
        cron = " ".join(self.cron.split()) if self.cron is not None else None
        mine = (workflow, cron, self.every, self.input, self.timezone, self.catch_up)
        theirs = (
            existing.workflow_name,
            existing.cron,
            existing.every,
            existing.input,
            existing.timezone,
            existing.catch_up,
        )
        try:  # compared as JSON, where 1, 1.0 and true differ
            return dumps(list(mine)) == dumps(list(theirs))
        except (SerializationError, PayloadTooLarge):
            return False


def plan_schedules(doc: Document, bad: set[PathKey]) -> list[PlannedSchedule]:
    """Check every entry of ``schedules:`` (a problem of ``doc`` for each failure); the
    entries with no problem, to declare once the workflow is built."""
    data = doc.data if isinstance(doc.data, dict) else {}
    entries = data.get("schedules")
    if not isinstance(entries, list) or ("schedules",) in bad:
        return []
    workflow = data.get("name")
    names: dict[str, PathKey] = {}
    planned = []
    for index, entry in enumerate(entries):
        path: PathKey = ("schedules", index)
        if not isinstance(entry, dict):
            continue  # the structure check reported it
        before = len(doc.problems)
        found = _entry(doc, bad, path, entry, names)
        clean = len(doc.problems) == before and not any(p[:2] == path for p in bad)
        if found is None or not clean:
            continue
        existing = declared_schedules().get(found.name)
        if existing is not None and not (
            isinstance(workflow, str) and found.same_as(existing, workflow)
        ):
            doc.problem(
                (*path, "name"),
                f"schedule {found.name!r} is already declared in this process, differently "
                f"(workflow {existing.workflow_name!r}, {existing.cadence}, timezone "
                f"{existing.timezone}): schedule names are unique",
            )
            continue
        planned.append(found)
    return planned


def _entry(
    doc: Document,
    bad: set[PathKey],
    path: PathKey,
    entry: dict[str, Any],
    names: dict[str, PathKey],
) -> PlannedSchedule | None:
    """One entry checked key by key with ``schedule()``'s own checks (the values the
    structure check refused already are skipped: one mistake, one problem)."""
    name = entry.get("name")
    if not isinstance(name, str) or (*path, "name") in bad:
        return None
    label = f"schedule {name!r}"
    first = names.get(name)
    if first is not None:
        line, _ = doc.at(first)
        doc.problem(
            (*path, "name"), f"duplicate schedule name {name!r} (first used on line {line})"
        )
    else:
        names[name] = (*path, "name")

    timezone = entry.get("timezone", "UTC")
    zone = None
    if (*path, "timezone") not in bad:
        zone = _check(doc, (*path, "timezone"), label, lambda found: _zone(timezone, found))
    cron = entry.get("cron")
    if "cron" in entry and (*path, "cron") not in bad:
        _check(doc, (*path, "cron"), label, lambda found: _check_cron(cron, zone, found))
    every = entry.get("every")
    seconds = None
    if "every" in entry and (*path, "every") not in bad:
        seconds = _check(doc, (*path, "every"), label, lambda found: _seconds(every, found))
    given = entry.get("input")
    try:
        dumps(given, what="schedule input")
    except (SerializationError, PayloadTooLarge) as exc:
        doc.problem((*path, "input"), f"{label}: input must be JSON data: {exc}")
    catch_up = entry.get("catch_up", False)
    if not isinstance(timezone, str) or not isinstance(catch_up, bool):
        return None  # the structure check reported it
    return PlannedSchedule(name, path, cron, seconds, given, timezone, catch_up)


def _check(doc: Document, path: PathKey, label: str, check: Callable[[list[str]], Any]) -> Any:
    """Run one of ``schedule()``'s checks on the value at ``path``: its problems, there."""
    found: list[str] = []
    result = check(found)
    for message in found:
        doc.problem(path, f"{label}: {message}")
    return result


def declare_schedules(
    doc: Document, wf: Workflow, planned: list[PlannedSchedule]
) -> tuple[Schedule, ...]:
    """Declare the file's schedules for ``wf`` (built from a file with no problem): all of
    them, or, when one is refused, none (a problem of ``doc``)."""
    for entry in planned:
        try:
            define(entry.name, wf, **entry.options())  # checked, not declared yet
        except DefinitionError as exc:  # a rule the checks above do not know
            doc.problem(entry.path, str(exc))
    if doc.problems:
        return ()
    declared: list[Schedule] = []
    with _lock:
        for entry in planned:
            existing = declared_schedules().get(entry.name)
            if existing is not None and entry.same_as(existing, wf.name):
                forget_schedule(entry.name)  # this file, loaded again: the new one replaces it
            try:
                declared.append(schedule(entry.name, wf, **entry.options()))
            except DefinitionError as exc:  # declared meanwhile, by another thread
                doc.problem((*entry.path, "name"), str(exc))
                for made in declared:
                    forget_schedule(made.name)
                return ()
    return tuple(declared)


__all__ = ["PlannedSchedule", "declare_schedules", "plan_schedules"]
