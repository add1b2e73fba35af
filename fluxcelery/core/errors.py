"""One error hierarchy. Every error has a stable ``code`` shown in traces and the CLI."""

from __future__ import annotations

from typing import Any


class FluxError(Exception):
    """Base class of every error fluxcelery raises on purpose."""

    code = "flux_error"

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": str(self), "code": self.code}


class DefinitionError(FluxError):
    """A workflow definition is invalid (duplicate step, no steps, bad option)."""

    code = "definition_error"


class InvalidInput(FluxError):
    """Workflow input failed its schema or validator; nothing was stored."""

    code = "invalid_input"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class IdempotencyConflict(FluxError):
    """A run with this id exists already, started with another workflow or other input: the
    same idempotency key (a run id, a message id, an ``Idempotency-Key``) was reused for
    different content. Refused, never silently taken for a duplicate."""

    code = "idempotency_conflict"

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunNotFound(FluxError):
    """No run with this id exists in the store."""

    code = "run_not_found"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"Run not found: {run_id}")
        self.run_id = run_id


class WorkflowNotFound(FluxError):
    """No workflow with this name is registered in this process."""

    code = "workflow_not_found"

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        hint = f" (registered: {', '.join(sorted(known))})" if known else " (none registered)"
        super().__init__(f"Unknown workflow: {name!r}{hint}")
        self.name = name


class InvalidTransition(FluxError):
    """An operation is not allowed in the run's (or step's) current state."""

    code = "invalid_transition"

    def __init__(self, current: str, target: str, *, what: str = "run", detail: str = "") -> None:
        msg = f"Invalid {what} transition: {current} -> {target}"
        super().__init__(f"{msg} ({detail})" if detail else msg)
        self.current = current
        self.target = target


class DefinitionChanged(FluxError):
    """The stored run was started with a different definition of its workflow."""

    code = "definition_changed"


class SignalMismatch(FluxError):
    """A signal was sent that the run is not waiting for."""

    code = "signal_mismatch"


class ConcurrentUpdate(FluxError):
    """Another process changed the run first (optimistic concurrency)."""

    code = "concurrent_update"


class NonRetryableError(FluxError):
    """Raise from a step to fail it at once, without further attempts."""

    code = "non_retryable"


class Rejected(NonRetryableError):
    """An approval was rejected (by a person, or denied by its policy): the step fails and
    is not retried."""

    code = "rejected"

    def __init__(self, reason: str, decision: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.decision = decision


class NotAllowed(NonRetryableError):
    """Someone outside a step's approvers tried to decide it; nothing changed."""

    code = "not_allowed"


class DataConflict(NonRetryableError):
    """Two branches (or items) of one parallel step set the same key of ``ctx.data``: the
    join cannot tell which value wins, so the parallel step fails (never retried)."""

    code = "data_conflict"


class StepTimeout(FluxError):
    """A step attempt ran past its timeout (its writes to ``ctx.data`` are discarded)."""

    code = "step_timeout"


class AttemptInterrupted(FluxError):
    """The attempt was interrupted by ``engine.cancel(terminate=True)``; its writes are
    discarded."""

    code = "attempt_interrupted"


class SerializationError(FluxError):
    """A value that must be stored as JSON is not JSON-serializable."""

    code = "serialization_error"


class PayloadTooLarge(FluxError):
    """Input, data or a payload exceeds the configured size limit."""

    code = "payload_too_large"


class DispatchError(FluxError):
    """A run could not be sent to the broker; nothing was left stored for it."""

    code = "dispatch_error"


class StorageError(FluxError):
    """The store could not be read or written."""

    code = "storage_error"


class MissingExtra(FluxError):
    """A configured URL needs an optional package that is not installed (``message`` names
    the extra to install)."""

    code = "missing_extra"


def describe_error(exc: BaseException) -> str:
    """The ``"<ExceptionType>: <message>"`` form stored in ``error`` columns."""
    return f"{type(exc).__name__}: {exc}"
