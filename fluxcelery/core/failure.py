"""A failed attempt as Celery and the UIs show it: the handler's exception with the run's
secrets masked, and its traceback as text. No Celery import here: the runner makes these,
celery/tasks.py raises them.

Celery's task page in Flower, its Failed filter and the worker's ERROR line read the
exception a task raises. A step task re-raises the handler's own exception once the failure
is stored (see celery/tasks.py), so that they show the user's exception type, message and
frames, not fluxcelery's internals. An exception whose message (or a chained one's) holds a
secret is replaced by a masked copy first: the same type where it can be rebuilt from its
message, else a stand-in class of the same name, as Celery itself rebuilds exceptions that
cannot travel (``celery.utils.serialization.create_exception_cls``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import traceback as tb_module
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .errors import FluxError

#: Longest chain of causes and contexts kept on a masked copy.
MAX_CHAIN = 8


class StepFailed(FluxError):
    """A step failed for good with no exception of its own to show (its worker was lost
    too often, its wait expired, the run cannot continue on this worker)."""

    code = "step_failed"


@dataclass(frozen=True, slots=True)
class Failure:
    """``exception``: what the Celery task raises (secrets masked). ``traceback``: the
    formatted traceback, masked, stored on the step; None when there was no exception."""

    exception: BaseException
    traceback: str | None


def capture(exc: BaseException | None, error: str, scrub: Callable[[str], str]) -> Failure:
    """The failure of an attempt: ``exc`` (None: only the stored ``error`` text is known)
    with every message in its chain passed through ``scrub``, and its traceback starting
    at the user's code (fluxcelery's own calling frames cut: see ``user_frames``)."""
    if exc is None:
        return Failure(StepFailed(error), None)
    exc = exc.with_traceback(user_frames(exc.__traceback__))
    text = "".join(tb_module.format_exception(exc)).rstrip()
    return Failure(masked_exception(exc, scrub), scrub(text))


#: Where frames that only carry a call to the handler live: fluxcelery itself, and the
#: thread pool and event loop a handler with a timeout runs on (invoke.py).
_CARRIERS = (
    str(Path(__file__).resolve().parents[1]) + os.sep,  # the fluxcelery package
    str(Path(concurrent.futures.__file__).resolve().parent) + os.sep,
    str(Path(asyncio.__file__).resolve().parent) + os.sep,
)


def user_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` from its first frame outside fluxcelery's calling code (the handler, usually);
    all of it when every frame is fluxcelery's (a failure of fluxcelery itself)."""
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename.startswith(_CARRIERS):
        first = first.tb_next
    return first if first is not None else tb


def masked_exception(
    exc: BaseException, scrub: Callable[[str], str], depth: int = 0
) -> BaseException:
    """``exc`` itself when no message in its chain changes under ``scrub``, else a copy
    with the masked messages, the same frames and a masked chain."""
    cause, context = exc.__cause__, exc.__context__
    if depth >= MAX_CHAIN:
        new_cause = new_context = None
    else:
        new_cause = None if cause is None else masked_exception(cause, scrub, depth + 1)
        new_context = None if context is None else masked_exception(context, scrub, depth + 1)
    message = _message(exc)
    masked = scrub(message)
    if masked == message and new_cause is cause and new_context is context:
        return exc
    copy = _rebuild(exc, masked, scrub)
    copy.__traceback__ = exc.__traceback__
    copy.__cause__ = new_cause
    copy.__context__ = new_context
    copy.__suppress_context__ = exc.__suppress_context__
    return copy


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not hide the failure
        return f"<{type(exc).__name__}: message not printable>"


def _rebuild(exc: BaseException, message: str, scrub: Callable[[str], str]) -> BaseException:
    """An exception of ``exc``'s type saying ``message``: built from its arguments masked
    one by one (``KeyError``, ``OSError``), else from ``message``; a stand-in when the type
    cannot be built either way."""
    args = tuple(scrub(a) if isinstance(a, str) else a for a in exc.args)
    for attempt in (args, (message,)):
        try:
            copy = type(exc)(*attempt)
        except Exception:
            continue
        if _message(copy) == message:
            return copy
    return stand_in(exc, message)


def stand_in(exc: BaseException, message: str | None = None) -> Exception:
    """An ``Exception`` of a new class with ``exc``'s name and module, saying ``message``
    (default: ``exc``'s), with its frames. Celery builds the same for exceptions it cannot
    unpickle (``celery.utils.serialization.create_exception_cls``); celery/tasks.py uses it
    for exceptions that would steer Celery (``Retry``, ``Ignore``, ``Reject``)."""
    cls = type(exc)
    made = type(cls.__name__, (Exception,), {"__module__": cls.__module__})
    copy: Exception = made(_message(exc) if message is None else message)
    copy.__traceback__ = exc.__traceback__
    return copy
