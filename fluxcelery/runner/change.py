"""What a step attempt decides (``Next``) and how it is written (``Change``).

A ``Change`` is one guarded write: the transitions it collects (core/transitions.py, where
every status change is checked against the tables in states.py as it is made), and the hooks
to call once it has landed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..core.failure import Failure
from ..core.records import RunState
from ..core.transitions import Transition
from ..storage.base import Storage
from ..trace.event import TraceEvent
from .notify import Notifier


class Action(StrEnum):
    CONTINUE = "continue"  # run step ``index`` next
    FANOUT = "fanout"  # run the branch steps or items in ``rows`` (at the same time)
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
    #: FANOUT: ``(row, task id, definition index)`` of each row to send now (an item's
    #: definition is its for_each step's).
    rows: tuple[tuple[int, str, int], ...] = ()


STOP = Next(Action.STOP)
DONE = Next(Action.DONE)


class Change:
    """One guarded write: the step rows touched, the events, and the hooks to call once the
    write has landed."""

    def __init__(
        self, storage: Storage, notifier: Notifier, state: RunState, *, create: bool = False
    ) -> None:
        self.storage = storage
        self.notifier = notifier
        self.state = state
        #: The run is not stored yet: the first save inserts it (``execute`` saves a write).
        self.create = create
        self.version = state.version
        self.steps: set[int] = set()
        self.created: set[int] = set()
        #: Land even if for_each items started since the read (an item's outcome that
        #: neither joins nor fails: it does not depend on which siblings started).
        self.any_claims = False
        self.events: list[TraceEvent] = []
        self.hooks: list[tuple[str, tuple[Any, ...]]] = []

    def apply(self, transition: Transition) -> None:
        """Add a transition (already made on ``state``) to this write."""
        self.steps.update(transition.steps)
        self.events.extend(transition.events)
        if transition.created:
            self.created.update(transition.created)

    def hook(self, name: str, *args: Any) -> None:
        """Call hook ``name`` after this change has landed (never for a lost race)."""
        if name in self.notifier.hooks:
            self.hooks.append((name, args))

    def save(self, tx: Any = None) -> bool:
        """Write this change (inside ``tx`` when given). Outside a transaction, publish the
        events and call the hooks at once; with ``tx`` the caller does after commit."""
        if self.create:
            self.create = False
            landed = bool(self.storage.create_run(self.state, self.events))
        else:
            target = tx if tx is not None else self.storage
            if self.created or self.any_claims:
                landed = bool(
                    target.save_run(
                        self.state,
                        self.version,
                        self.steps,
                        self.events,
                        self.created,
                        any_claims=self.any_claims,
                    )
                )
            else:
                landed = bool(target.save_run(self.state, self.version, self.steps, self.events))
        if landed and tx is None:
            self.landed()
        return landed

    def landed(self) -> None:
        self.notifier.publish(self.events)
        for name, args in self.hooks:
            self.notifier.call_hook(name, self.state, *args)
        self.rebase()

    def rebase(self) -> None:
        """Start a new change on the same (now stored) state."""
        self.version = self.state.version
        self.steps = set()
        self.created = set()
        self.any_claims = False
        self.events = []
        self.hooks = []
