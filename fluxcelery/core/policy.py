"""Pure decisions: backoff delay, whether to retry, and the saga compensation plan."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DefinitionError, NonRetryableError, PayloadTooLarge, SerializationError
from .states import COMPENSABLE_STEP

if TYPE_CHECKING:
    from .builder import StepDef, Workflow
    from .records import RunState


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between attempts of one step.

    The delay before attempt ``n + 1`` (after ``n`` failures) is
    ``min(max, base * factor ** (n - 1))`` seconds.
    """

    base: float = 1.0
    """Delay after the first failure, in seconds."""
    factor: float = 2.0
    """Multiplier applied for each further failure."""
    max: float = 60.0
    """Upper bound of any single delay, in seconds."""
    jitter: bool = True
    """Full jitter: draw the delay uniformly from ``[delay / 2, delay]`` so that many runs
    failing together do not retry in lockstep (half the delay is kept as a floor)."""

    def __post_init__(self) -> None:
        for name in ("base", "factor", "max"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise DefinitionError(f"Backoff.{name} must be a number >= 0, got {value!r}")
        if self.factor < 1:
            raise DefinitionError(f"Backoff.factor must be >= 1, got {self.factor!r}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``failures`` failed attempts (``failures >= 1``)."""
        if failures < 1:
            return 0.0
        raw = min(self.max, self.base * self.factor ** (failures - 1))
        if self.jitter and raw > 0:
            draw = (rng or random).uniform(raw / 2, raw)
            return round(draw, 3)
        return float(raw)


NO_BACKOFF = Backoff(base=0.0, factor=1.0, max=0.0, jitter=False)


def should_retry(
    exc: BaseException,
    attempt: int,
    max_attempts: int,
    retry_on: tuple[type[BaseException], ...] | None = None,
    no_retry_on: tuple[type[BaseException], ...] = (),
) -> bool:
    """Whether a failed attempt gets another try.

    ``NonRetryableError``, serialization errors and oversize data are never retried: running
    the same code on the same data would fail the same way.
    """
    if attempt >= max_attempts:
        return False
    if isinstance(exc, (NonRetryableError, SerializationError, PayloadTooLarge)):
        return False
    if no_retry_on and isinstance(exc, no_retry_on):
        return False
    if retry_on is not None:
        return isinstance(exc, retry_on)
    return True


_GROUP = ("parallel", "for_each")


def row_order(wf: Workflow, state: RunState, index: int) -> tuple[int, int, int, int]:
    """Where row ``index`` of a run comes in the workflow's order: a top-level step by its
    index; a branch step or item inside its group (branches in definition order, steps in
    branch order; items in item order)."""
    s = state.steps[index]
    if s.parent is None:
        return (index, 0, 0, 0)
    if s.item is not None:
        return (s.parent, 1, s.item, 0)
    names = [name for name, _ in wf.steps[s.parent].branches]
    return (s.parent, 1, names.index(s.branch) if s.branch in names else 0, index)


def rollback_plan(
    wf: Workflow, state: RunState, failed: int | None, *, after: bool = False
) -> list[int]:
    """The rows to compensate, in order (SPEC sections 4 and 11): every completed row with
    a compensator that comes before ``failed`` (the row whose failure started the rollback,
    or the row compensated last; None: all of them, for a cancel), latest first. A failure
    inside a group (or of the group step itself) undoes the whole group first: every
    branch (latest branch first, reverse order within it) or every item (latest first),
    then the earlier steps. ``after``: ``failed`` is the row compensated last; the plan
    goes on with the rows before it."""
    n = len(state.steps)
    if failed is None:
        limit: tuple[int, ...] = (n + 1,)
    else:
        key = row_order(wf, state, failed)
        in_group = key[1] == 1 or state.steps[failed].kind in _GROUP
        limit = (key[0], 2) if in_group and not after else key
    picked = []
    for i, s in enumerate(state.steps):
        if s.kind in _GROUP or s.status not in COMPENSABLE_STEP:
            continue
        sdef = wf.steps[i] if i < len(wf.steps) else wf.steps[s.parent or 0]
        if sdef.compensate is None:
            continue
        key = row_order(wf, state, i)
        if key < limit:
            picked.append((key, i))
    return [i for _, i in sorted(picked, reverse=True)]


@dataclass(frozen=True, slots=True)
class Defaults:
    """The engine's defaults, and each step's settings resolved against them (one place, so
    that the runner, upkeep and Celery's time limits agree)."""

    retries: int = 3
    """Extra attempts of a step that sets none."""
    timeout: float | None = 30.0
    """Seconds per attempt of a step that sets none; None: no limit."""
    backoff: Backoff = Backoff()
    """Delays between attempts of a step that sets none."""

    def max_attempts(self, sdef: StepDef) -> int:
        return (self.retries if sdef.retries is None else sdef.retries) + 1

    def timeout_of(self, sdef: StepDef) -> float | None:
        if isinstance(sdef.timeout, (int, float)) or sdef.timeout is None:
            return sdef.timeout
        return self.timeout  # unset: the engine's

    def backoff_of(self, sdef: StepDef) -> Backoff:
        return sdef.backoff or self.backoff
