"""A snapshot of the public API: changing it is a deliberate act (update this list)."""

from __future__ import annotations

import subprocess
import sys

import fluxcelery

EXPECTED = {
    "Backoff",
    "StepContext",
    "StepDef",
    "WaitFor",
    "Workflow",
    "wait_for",
    "workflow",
    "FluxEngine",
    "FluxResult",
    "RunHandle",
    "RunState",
    "RunStatus",
    "RunTimeout",
    "schedule",
    "StepState",
    "StepStatus",
    "ConsoleLogger",
    "JsonFileTraceSink",
    "OpenTelemetrySink",
    "MemoryStorage",
    "SqlStorage",
    "SqlTraceSink",
    "TraceEvent",
    "Branch",
    "branch",
    "load_workflow",
    "DataConflict",
    "ConcurrentUpdate",
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
    "app",
    "__version__",
}


def test_exports_are_frozen() -> None:
    assert set(fluxcelery.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(fluxcelery, name) is not None


def test_status_enums_are_str_with_lowercase_values() -> None:
    assert fluxcelery.RunStatus.ROLLED_BACK == "rolled_back"
    assert str(fluxcelery.StepStatus.COMPENSATION_FAILED) == "compensation_failed"
    assert [s.value for s in fluxcelery.RunStatus] == [
        "pending",
        "running",
        "suspended",
        "completed",
        "rolling_back",
        "rolled_back",
        "failed",
        "cancelled",
    ]


def test_errors_share_one_base_with_stable_codes() -> None:
    codes, classes = set(), 0
    for name in EXPECTED:
        obj = getattr(fluxcelery, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, Exception)
            and obj is not fluxcelery.RunTimeout
        ):
            assert issubclass(obj, fluxcelery.FluxError), name
            codes.add(obj.code)
            classes += 1
    assert len(codes) == classes == 20  # one stable, distinct code per error


def test_importing_fluxcelery_does_not_import_flower_or_build_the_app() -> None:
    code = (
        "import sys, fluxcelery, fluxcelery.defaults as d; "
        "print('flower' in sys.modules, d._app is not None, d._engine is not None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False", "False"]  # the composition root builds nothing on import


def test_app_is_the_celery_app() -> None:
    from celery import Celery

    assert isinstance(fluxcelery.app, Celery)
    conf = fluxcelery.app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
