"""fluxcelery: durable workflows on Celery.

Define a workflow with ``workflow(name).step(...).commit(...)``, run it in-process with
``FluxEngine().execute(wf, input)`` or on Celery workers with ``wf.delay(input)``.
"""

from __future__ import annotations

from typing import Any

# Definitions
from .builder import StepDef, WaitFor, Workflow, wait_for, workflow
from .context import StepContext

# Running
from .engine import FluxEngine
from .errors import (
    ConcurrentUpdate,
    DefinitionChanged,
    DefinitionError,
    DispatchError,
    FluxError,
    InvalidInput,
    InvalidTransition,
    MissingExtra,
    NonRetryableError,
    PayloadTooLarge,
    RunNotFound,
    SerializationError,
    SignalMismatch,
    StepTimeout,
    StorageError,
    WorkflowNotFound,
)
from .handle import RunHandle, RunTimeout
from .policy import Backoff
from .records import FluxResult, RunState, StepState
from .states import RunStatus, StepStatus

# Storage and traces
from .storage import MemoryStorage, SqlStorage
from .trace import ConsoleLogger, JsonFileTraceSink, OpenTelemetrySink, SqlTraceSink, TraceEvent

__version__ = "0.1.0"

__all__ = [
    # definitions
    "Backoff",
    "StepContext",
    "StepDef",
    "WaitFor",
    "Workflow",
    "wait_for",
    "workflow",
    # running
    "FluxEngine",
    "FluxResult",
    "RunHandle",
    "RunState",
    "RunStatus",
    "RunTimeout",
    "StepState",
    "StepStatus",
    # storage and traces
    "ConsoleLogger",
    "JsonFileTraceSink",
    "OpenTelemetrySink",
    "MemoryStorage",
    "SqlStorage",
    "SqlTraceSink",
    "TraceEvent",
    # errors
    "ConcurrentUpdate",
    "DefinitionChanged",
    "DefinitionError",
    "DispatchError",
    "FluxError",
    "InvalidInput",
    "InvalidTransition",
    "MissingExtra",
    "NonRetryableError",
    "PayloadTooLarge",
    "RunNotFound",
    "SerializationError",
    "SignalMismatch",
    "StepTimeout",
    "StorageError",
    "WorkflowNotFound",
    # Celery
    "app",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The Celery app is built on first access so that importing fluxcelery stays cheap and
    # `celery -A fluxcelery worker` still finds `fluxcelery.app`.
    if name == "app":
        from .celery.app import get_app

        return get_app()
    raise AttributeError(f"module 'fluxcelery' has no attribute {name!r}")
