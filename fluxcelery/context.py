"""What a step handler sees: ``ctx``."""

from __future__ import annotations

import logging
from typing import Any

_log = logging.getLogger("fluxcelery.step")


class StepContext:
    """The context passed to handlers, conditions, compensators and hooks.

    ``data`` is a private copy for this attempt: it is persisted only when the attempt
    succeeds, so a failed or timed-out attempt leaves the stored data untouched.
    """

    __slots__ = (
        "_log",
        "attempt",
        "data",
        "idempotency_key",
        "input",
        "results",
        "run_id",
        "session",
        "step",
        "step_index",
        "workflow",
    )

    def __init__(
        self,
        *,
        run_id: str,
        workflow: str,
        step: str,
        step_index: int,
        attempt: int,
        input: Any,
        data: dict[str, Any],
        results: dict[str, Any],
        session: Any = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.step = step
        self.step_index = step_index
        self.attempt = attempt
        self.input = input
        self.data = data
        self.results = results
        #: Stable per run and step: pass it to payment APIs and the like.
        self.idempotency_key = f"{run_id}:{step}"
        #: A SQLAlchemy session for commit steps on SQL storage (None otherwise).
        self.session = session
        self._log: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry ``run_id``, ``workflow`` and ``step``."""
        if self._log is None:
            self._log = logging.LoggerAdapter(
                _log, {"run_id": self.run_id, "workflow": self.workflow, "step": self.step}
            )
        return self._log

    def __repr__(self) -> str:
        return (
            f"<StepContext run={self.run_id} workflow={self.workflow} step={self.step} "
            f"attempt={self.attempt}>"
        )
