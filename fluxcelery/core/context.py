"""What a step handler sees: ``ctx``."""

from __future__ import annotations

import logging
import math
import sys
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from .jsoncodec import Redactor

_log = logging.getLogger("fluxcelery.step")
_DEFAULT_REDACTOR = Redactor()


class _ScrubbingLog(logging.LoggerAdapter[logging.Logger]):
    """``ctx.log``: formats each message itself so that the run's secrets (values under
    secret-looking keys of its input and data) are masked before any handler sees it.

    With ``exc_info`` (``ctx.log.exception``) the traceback is formatted here too and masked
    the same way: the record carries its text (``exc_text``, which logging's formatters
    print) and no exception object, whose message a handler would format unmasked."""

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
        stacklevel = kwargs.pop("stacklevel", 1) + 1  # the caller, not this method
        exc_info = _exc_info(kwargs.pop("exc_info", None))
        if exc_info is None:
            self.logger.log(level, msg, stacklevel=stacklevel, **kwargs)
            return
        logger = self.logger
        stack_info = kwargs.get("stack_info", False)
        fn, lno, func, sinfo = logger.findCaller(stack_info, stacklevel)
        record = logger.makeRecord(
            logger.name, level, fn, lno, msg, (), None, func, kwargs.get("extra"), sinfo
        )
        record.exc_text = self._scrub("".join(traceback.format_exception(*exc_info)).rstrip())
        logger.handle(record)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


_ExcInfo = tuple[type[BaseException], BaseException, Any]


def _exc_info(value: Any) -> _ExcInfo | None:
    """``exc_info`` as logging reads it: True (the exception being handled), an exception,
    or a ``sys.exc_info()`` tuple."""
    if not value:
        return None
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if not isinstance(value, tuple):
        value = sys.exc_info()
    return value if value[0] is not None else None


#: Longer progress messages are cut: they are shown in one table cell.
MAX_PROGRESS_MESSAGE = 200


def _amount(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"progress {name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"progress {name} must be a finite number >= 0, got {value!r}")
    return value


class StepContext:
    """The context passed to handlers, conditions, compensators and hooks.

    ``data`` is a private copy for this attempt: it is persisted only when the attempt
    succeeds, so a failed or timed-out attempt leaves the stored data untouched.
    """

    __slots__ = (
        "_log",
        "_progress",
        "_raw_input",
        "_redactor",
        "attempt",
        "branch",
        "data",
        "idempotency_key",
        "input",
        "item",
        "item_index",
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
        #: Where ``progress`` reports go (set by the runner for a step's attempt).
        self._progress: Callable[[float, float | None, str | None], None] | None = None
        #: The branch of a ``.parallel`` step this step belongs to (None otherwise).
        self.branch: str | None = None
        #: A ``.for_each`` item and its index (None outside a for_each).
        self.item: Any = None
        self.item_index: int | None = None

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

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report how far this attempt got: ``done`` out of ``total`` (when known), with
        an optional ``message``. Stored on the step at most every 0.5 s (the last report of
        an attempt always), traced as ``step:progress``, and sent to Celery's result backend
        as ``PROGRESS`` when one is configured. A report outside a step's attempt (a
        condition, a compensator) goes nowhere; a bad value raises ``ValueError``."""
        done = _amount("done", done)
        if total is not None:
            total = _amount("total", total)
        if message is not None:
            if not isinstance(message, str):
                raise ValueError(f"progress message must be a string, got {type(message).__name__}")
            message = self.scrub(message[:MAX_PROGRESS_MESSAGE])
        if self._progress is not None:
            self._progress(done, total, message)

    def scrub(self, text: str) -> str:
        """``text`` with this run's secrets masked (for messages that leave the step)."""
        return self._redactor.scrub(text, self._raw_input, self.data)

    def __repr__(self) -> str:
        return (
            f"<StepContext run={self.run_id} workflow={self.workflow} step={self.step} "
            f"attempt={self.attempt}>"
        )
