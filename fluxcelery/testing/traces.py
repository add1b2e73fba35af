"""Assertions on the trace a run left: behaviour pinned as the ordered list of its events."""

from __future__ import annotations

from collections.abc import Sequence

from ..engine import FluxEngine


def trace_of(engine: FluxEngine, run_id: str, *, steps: bool = False) -> list[str]:
    """The types of ``run_id``'s trace events in the order they were written
    (``"step:retry"``); ``steps=True``: with the step after a space where the event has one
    (``"step:retry charge"``)."""
    out = []
    for event in engine.traces(run_id=run_id, limit=None):
        shown = event.type
        if steps and event.step is not None:
            shown = f"{shown} {event.step}"
        out.append(shown)
    return out


def assert_trace(engine: FluxEngine, run_id: str, expected: Sequence[str]) -> None:
    """Assert that ``run_id``'s trace is exactly ``expected``, in order. An entry is an event
    type (``"step:retry"``) or a type and its step (``"step:retry charge"``); the two forms
    can be mixed. The error shows the whole trace and where it first differs."""
    actual = trace_of(engine, run_id, steps=True)
    shown = [
        entry if " " in want else entry.split(" ", 1)[0]
        for entry, want in zip(actual, expected, strict=False)
    ] + actual[len(expected) :]
    if shown == list(expected):
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(shown, expected, strict=False)) if a != b),
        min(len(shown), len(expected)),
    )
    lines = [f"trace of run {run_id} differs at event {at}:"]
    for i in range(max(len(actual), len(expected))):
        got = actual[i] if i < len(actual) else "(none)"
        want = expected[i] if i < len(expected) else "(none)"
        mark = ">" if i == at else " "
        lines.append(f"{mark} {i:3} {got:<40} expected {want}")
    raise AssertionError("\n".join(lines))
