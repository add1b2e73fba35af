"""A workflow file's structure checked against the format's JSON Schema, with ``jsonschema``.

Every file is checked before anything is imported. Each error's path in the document is
mapped back to the line and column of the value (or key) at fault, with a message that
names the key and the fix (the schema's ``description`` of the value).
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .document import Document, PathKey
from .schema import KINDS, json_schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json_schema())


def check_structure(doc: Document) -> set[PathKey]:
    """Add a problem per schema error to ``doc``; the paths of the values at fault (later
    checks skip them, so that one mistake is reported once)."""
    bad: set[PathKey] = set()
    errors = sorted(_validator().iter_errors(doc.data), key=lambda e: list(map(str, e.path)))
    # A step of no kind, or of two: that is its one problem (not each kind's other rules).
    unkind = {
        tuple(e.absolute_path)
        for e in errors
        if e.validator == "oneOf"
        and _is_kind_choice(e.validator_value)
        and not _is_schedule(tuple(e.absolute_path))
    }
    for error in errors:
        path: PathKey = tuple(error.absolute_path)
        bad.add(path)
        if error.validator == "oneOf" and _is_schedule(path):
            _cadence_problem(doc, error, path)
        elif error.validator == "oneOf" and _is_kind_choice(error.validator_value):
            _kind_problem(doc, error, path)
        elif path in unkind:
            continue
        elif error.validator == "additionalProperties" and error.validator_value is False:
            _unknown_keys(doc, error, path)
        elif error.validator == "required":
            key = _quoted(error.message)
            doc.problem(path, f"{_owner(error.instance)}missing key {key!r}")
        else:
            doc.problem(path, _message(error, path))
    return bad


def _unknown_keys(doc: Document, error: ValidationError, path: PathKey) -> None:
    valid = list(error.schema.get("properties", {}))
    for key in error.instance:
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        doc.problem(
            (*path, key),
            f"unknown key {key!r} ({hint}valid keys: {', '.join(valid)})",
            key=True,
        )


def _is_kind_choice(alternatives: Any) -> bool:
    return isinstance(alternatives, list) and all(
        isinstance(a, dict) and list(a) == ["required"] for a in alternatives
    )


def _kind_problem(doc: Document, error: ValidationError, path: PathKey) -> None:
    kinds = [a["required"][0] for a in error.validator_value]
    keys = list(error.instance) if isinstance(error.instance, dict) else []
    found = [k for k in kinds if k in keys]
    other = [k for k in KINDS if k in keys and k not in kinds]
    if len(found) > 1:
        both = " and ".join(repr(k) for k in found)
        doc.problem(path, f"a step has one kind, this one has {both}: keep one")
    elif other:
        doc.problem(
            path, f"a branch holds {' and '.join(kinds)} steps, not {other[0]!r} (no nesting)"
        )
    else:
        shown = ", ".join(repr(k) for k in keys) or "none"
        doc.problem(path, f"a step needs one of the keys {', '.join(kinds)} (it has {shown})")


def _is_schedule(path: PathKey) -> bool:
    """Whether ``path`` is an entry of ``schedules`` (whose one choice is cron or every)."""
    return len(path) == 2 and path[0] == "schedules"


def _cadence_problem(doc: Document, error: ValidationError, path: PathKey) -> None:
    """A schedule with both ``cron`` and ``every``, or neither (unless the neither is an
    unknown key close to one of them, which that key's problem names already)."""
    entry = error.instance
    if not isinstance(entry, dict):
        return  # not a map: its type is its one problem
    name = entry.get("name")
    label = f"schedule {name!r}" if isinstance(name, str) else "a schedule"
    if "cron" in entry and "every" in entry:
        second = max(("cron", "every"), key=lambda k: doc.at((*path, k), key=True))
        doc.problem((*path, second), f"{label} has both 'cron' and 'every': keep one", key=True)
        return
    known = error.schema.get("properties", {})
    unknown = [k for k in entry if k not in known]
    if any(difflib.get_close_matches(k, ["cron", "every"], n=1, cutoff=0.6) for k in unknown):
        return
    doc.problem(path, f"{label} needs one of the keys 'cron' (5 fields) or 'every' (seconds)")


def _owner(instance: Any) -> str:
    """``step 'charge': `` for a step's own problem (the step's kind and name)."""
    if isinstance(instance, dict):
        for kind in KINDS:
            if isinstance(instance.get(kind), str):
                return f"{kind} {instance[kind]!r}: "
    return ""


def key_label(path: PathKey) -> str:
    """The key at fault as problems name it: ``'timeout'``, ``item 2 of 'retry_on'``."""
    if path and isinstance(path[-1], int):
        return f"item {path[-1] + 1} of {key_label(path[:-1])}"
    return repr(path[-1]) if path else "the value"


_JSON_TYPES = {
    dict: "a map",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _JSON_TYPES[type(value)]
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: ValidationError, path: PathKey) -> str:
    """One line naming the key, what it must be (the schema's ``description``) and what
    it is."""
    label = key_label(path) if path else "the file"
    want = error.schema.get("description") if isinstance(error.schema, dict) else None
    if error.validator == "type" and path == ():
        return "the file must hold a map (name, version, input, steps, schedules)"
    if error.validator in ("minItems", "minProperties") and want:
        return f"{label} must be {want}"
    if want:
        return f"{label} must be {want}, got {_shown(error.instance)}"
    return f"{label}: {error.message}"


def _quoted(message: str) -> str:
    match = re.match(r"^'(.*)' is a required property$", message)
    return match.group(1) if match else message


__all__ = ["check_structure", "key_label"]
