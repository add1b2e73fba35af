"""What a step handler sees: ``ctx``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from .jsoncodec import Redactor

_log = logging.getLogger("fluxcelery.step")
_DEFAULT_REDACTOR = Redactor()


class _ScrubbingLog(logging.LoggerAdapter[logging.Logger]):
    """``ctx.log``: formats each message itself so that the run's secrets (values under
    secret-looking keys of its input and data) are masked before any handler sees it."""

    def __init__(
        self, logger: logging.Logger, extra: Mapping[str, object], scrub: Callable[[str], str]
    ) -> None:
        super().__init__(logger, extra)
        self._scrub = scrub

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        values: Any = args
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            values = args[0]  # logging's "%(name)s" form
        try:
            text = str(msg) % values if args else str(msg)
        except (TypeError, ValueError, KeyError):
            text = f"{msg} {args!r}"  # what logging would report as a formatting error
        msg, kwargs = self.process(self._scrub(text), kwargs)
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # the caller, not this method
        self.logger.log(level, msg, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class StepContext:
    """The context passed to handlers, conditions, compensators and hooks.

    ``data`` is a private copy for this attempt: it is persisted only when the attempt
    succeeds, so a failed or timed-out attempt leaves the stored data untouched.
    """

    __slots__ = (
        "_log",
        "_raw_input",
        "_redactor",
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
        redactor: Redactor | None = None,
        raw_input: Any = None,
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
        self._redactor = redactor or _DEFAULT_REDACTOR
        #: The input as stored (``input`` may be a model parsed from it): where secrets are.
        self._raw_input = input if raw_input is None else raw_input

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry ``run_id``, ``workflow`` and ``step``. Values under
        secret-looking keys of the input and ``data`` are masked in its messages."""
        if self._log is None:
            self._log = _ScrubbingLog(
                _log,
                {"run_id": self.run_id, "workflow": self.workflow, "step": self.step},
                self.scrub,
            )
        return self._log

    def scrub(self, text: str) -> str:
        """``text`` with this run's secrets masked (for messages that leave the step)."""
        return self._redactor.scrub(text, self._raw_input, self.data)

    def __repr__(self) -> str:
        return (
            f"<StepContext run={self.run_id} workflow={self.workflow} step={self.step} "
            f"attempt={self.attempt}>"
        )
