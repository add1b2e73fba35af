"""``wait_for``: what a step returns to suspend its run until a signal arrives."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DefinitionError


@dataclass(frozen=True)
class WaitFor:
    """Returned by a step to suspend the run until ``signal`` arrives."""

    signal: str
    timeout: float | None = None


def wait_for(signal: str, timeout: float | None = None) -> WaitFor:
    """Suspend the run until ``engine.signal(run_id, signal, payload)``.

    The payload becomes this step's output. With ``timeout`` (seconds), a wait that passes
    with no signal fails the step with a timeout error (and the run's failure path runs).
    """
    if not isinstance(signal, str) or not signal:
        raise DefinitionError("wait_for(signal): signal must be a non-empty string")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise DefinitionError(f"wait_for(timeout=...): must be a number > 0, got {timeout!r}")
    return WaitFor(signal, None if timeout is None else float(timeout))
