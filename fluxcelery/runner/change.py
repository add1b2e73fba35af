"""What a step attempt decides (``Next``) and how it is written (``Change``).

A ``Change`` is one guarded write: the step rows it touched, its trace events, and the hooks
to call once it has landed. Every transition it makes is checked against the tables in
states.py before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .builder import StepDef
from .failure import Failure
from .records import RunState, StepState
from .states import check_run_change, check_step_transition
from .trace.event import TraceEvent

if TYPE_CHECKING:
    from .runner import StepRunner


class Action(StrEnum):
    CONTINUE = "continue"  # run step ``index`` next
    RETRY = "retry"  # run the same step (or compensation) again after ``delay``
    COMPENSATE = "compensate"  # run the compensation of step ``index`` next
    SUSPEND = "suspend"  # the run waits for a signal
    DONE = "done"  # the run reached a terminal state
    STOP = "stop"  # nothing to do here (lost a race, stale task, run not active)


@dataclass(slots=True)
class Next:
    """What happens after a step attempt. Treat it as immutable: it is not frozen only
    because it is made for every step, and a frozen dataclass costs three times as much to
    build (``object.__setattr__`` per field)."""

    action: Action
    index: int | None = None
    delay: float = 0.0
    phase: str = "step"  # "step" or "compensate": what a RETRY repeats
    wait_timeout: float | None = None
    reason: str = ""
    #: The attempt failed (RETRY, or for good): what the Celery task shows (celery/tasks.py).
    failure: Failure | None = None


STOP = Next(Action.STOP)
DONE = Next(Action.DONE)


class Change:
    """One guarded write: the step rows touched, the events, and the hooks to call once the
    write has landed."""

    def __init__(self, runner: StepRunner, state: RunState, *, create: bool = False) -> None:
        self.runner = runner
        self.state = state
        #: The run is not stored yet: the first save inserts it (``execute`` saves a write).
        self.create = create
        self.version = state.version
        self.steps: set[int] = set()
        self.events: list[TraceEvent] = []
        self.hooks: list[tuple[str, tuple[Any, ...]]] = []
        self._run_before = state.status
        self._steps_before = [s.status for s in state.steps]

    def step(self, index: int) -> StepState:
        self.steps.add(index)
        return self.state.steps[index]

    def event(self, type: str, **fields: Any) -> None:
        state = self.state
        self.events.append(TraceEvent.make(type, state.id, state.workflow, **fields))

    def step_event(
        self, type: str, step: StepState, sdef: StepDef | None = None, **fields: Any
    ) -> None:
        state = self.state
        self.events.append(
            TraceEvent.make(
                type,
                state.id,
                state.workflow,
                step=step.name,
                step_index=step.index,
                kind=step.kind,
                max_attempts=None if sdef is None else self.runner.max_attempts(sdef),
                **fields,
            )
        )

    def hook(self, name: str, *args: Any) -> None:
        """Call hook ``name`` after this change has landed (never for a lost race)."""
        if name in self.runner.engine.hooks:
            self.hooks.append((name, args))

    def validate(self) -> None:
        """Every transition this change makes must be in the table (states.py)."""
        check_run_change(self._run_before, self.state.status)
        for i in self.steps:
            before, after = self._steps_before[i], self.state.steps[i].status
            if before != after:
                check_step_transition(before, after, self.state.steps[i].name)

    def save(self, tx: Any = None) -> bool:
        """Write this change (inside ``tx`` when given). Outside a transaction, publish the
        events and call the hooks at once; with ``tx`` the caller does after commit."""
        self.validate()
        if self.create:
            self.create = False
            landed = bool(self.runner.storage.create_run(self.state, self.events))
        else:
            target = tx if tx is not None else self.runner.storage
            landed = bool(target.save_run(self.state, self.version, self.steps, self.events))
        if landed and tx is None:
            self.landed()
        return landed

    def landed(self) -> None:
        self.runner.publish(self.events)
        for name, args in self.hooks:
            self.runner.call_hook(name, self.state, *args)
        self.rebase()

    def rebase(self) -> None:
        """Start a new change on the same (now stored) state."""
        self.version = self.state.version
        self.steps = set()
        self.events = []
        self.hooks = []
        self._run_before = self.state.status
        self._steps_before = [s.status for s in self.state.steps]
