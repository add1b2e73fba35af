"""Pure rules of parallel branches and for_each items (SPEC section 11): what data a branch
sees, what it changed, and how the changes of every branch merge at the join."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import DataConflict
from .jsoncodec import copy_json

#: Marks a key a branch removed from ``ctx.data``.
UNSET = "unset"


def branch_data(base: dict[str, Any], scope: dict[str, Any] | None) -> dict[str, Any]:
    """``ctx.data`` for a branch step or item: the run's data as it was at fan-out, with the
    keys its branch set (or removed) so far."""
    data = copy_json(base) if base else {}
    if scope:
        data.update(copy_json(scope.get("data") or {}))
        for key in scope.get(UNSET) or ():
            data.pop(key, None)
    return data


def data_changes(
    base: dict[str, Any], data: dict[str, Any], scope: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The scope a branch step or item leaves: the keys it set or removed, against the
    data at fan-out (``scope`` keeps an item's value)."""
    out: dict[str, Any] = {}
    if scope and "value" in scope:
        out["value"] = scope["value"]
    changed = {k: v for k, v in data.items() if k not in base or base[k] != v}
    removed = sorted(k for k in base if k not in data)
    if changed:
        out["data"] = changed
    if removed:
        out[UNSET] = removed
    return out


def merge_changes(
    base: dict[str, Any], scopes: Sequence[tuple[str, dict[str, Any] | None]]
) -> dict[str, Any]:
    """The run's data after the join: ``base`` with every branch's (label, scope) changes.
    Two branches touching one key raise ``DataConflict`` naming both and the keys."""
    owner: dict[str, str] = {}
    conflicts: list[str] = []
    merged = copy_json(base) if base else {}
    for label, scope in scopes:
        if not scope:
            continue
        keys = list((scope.get("data") or {}).keys()) + list(scope.get(UNSET) or ())
        for key in keys:
            if key in owner and owner[key] != label:
                conflicts.append(f"{key!r} ({owner[key]} and {label})")
            owner[key] = label
        merged.update(copy_json(scope.get("data") or {}))
        for key in scope.get(UNSET) or ():
            merged.pop(key, None)
    if conflicts:
        raise DataConflict(
            "branches set the same ctx.data keys: " + ", ".join(conflicts) + "; give each "
            "branch its own keys, or return values and read them from ctx.results"
        )
    return merged
