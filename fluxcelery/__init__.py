"""fluxcelery: durable workflows on Celery.

Define a workflow with ``workflow(name).step(...).commit(...)``, run it in-process with
``FluxEngine().execute(wf, input)`` or on Celery workers with ``wf.delay(input)``.
"""

from __future__ import annotations

from typing import Any

# Definitions
from .core.builder import Branch, StepDef, WaitFor, Workflow, branch, wait_for, workflow
from .core.context import StepContext
from .core.errors import (
    ConcurrentUpdate,
    DataConflict,
    DefinitionChanged,
    DefinitionError,
    DispatchError,
    FluxError,
    IdempotencyConflict,
    InvalidInput,
    InvalidTransition,
    MissingExtra,
    NonRetryableError,
    NotAllowed,
    PayloadTooLarge,
    Rejected,
    RunNotFound,
    SerializationError,
    SignalMismatch,
    StepTimeout,
    StorageError,
    WorkflowNotFound,
)
from .core.policy import Backoff
from .core.records import FluxResult, RunState, StepState
from .core.states import RunStatus, StepStatus
from .declarative import load_workflow

# Running (defaults.py is the composition root: it plugs the Celery dispatcher into the
# engine and the default engine into ``Workflow.delay``; it builds nothing on import)
from .defaults import default_app
from .engine import FluxEngine
from .handle import RunHandle, RunTimeout
from .schedules.definition import schedule

# Storage and traces
from .storage import MemoryStorage, SqlStorage
from .trace.event import TraceEvent
from .trace.otel import OpenTelemetrySink
from .trace.sinks import ConsoleLogger, JsonFileTraceSink, SqlTraceSink
from .version import __version__

__all__ = [
    # definitions
    "Backoff",
    "Branch",
    "StepContext",
    "StepDef",
    "WaitFor",
    "Workflow",
    "branch",
    "load_workflow",
    "wait_for",
    "workflow",
    # running
    "FluxEngine",
    "FluxResult",
    "RunHandle",
    "RunState",
    "RunStatus",
    "RunTimeout",
    "schedule",
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
    "DataConflict",
    "DefinitionChanged",
    "DefinitionError",
    "DispatchError",
    "FluxError",
    "IdempotencyConflict",
    "InvalidInput",
    "InvalidTransition",
    "MissingExtra",
    "NonRetryableError",
    "NotAllowed",
    "PayloadTooLarge",
    "Rejected",
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
        return default_app()
    raise AttributeError(f"module 'fluxcelery' has no attribute {name!r}")
