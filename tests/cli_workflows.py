"""Workflows the CLI tests run, in-process (``--workflows cli_workflows``) and on a real
``celery worker`` (``FLUX_WORKFLOWS=cli_workflows``, ``PYTHONPATH=tests``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fluxcelery import NonRetryableError, StepContext, wait_for, workflow


def add(ctx: StepContext) -> int:
    ctx.data["n"] = ctx.data.get("n", 0) + int(ctx.input.get("n", 1))
    return int(ctx.data["n"])


def record(ctx: StepContext) -> dict[str, Any]:
    return {"recorded": ctx.idempotency_key}


def undo_record(ctx: StepContext) -> None:
    return None


def gated(ctx: StepContext) -> dict[str, Any]:
    """Fails for good while the file named by ``input.gate`` does not exist: a test opens
    the gate (creates the file) and retries the run."""
    gate = ctx.input.get("gate")
    if gate and not Path(gate).exists():
        raise NonRetryableError(f"gate {gate} is closed")
    return {"passed": True}


def total(ctx: StepContext) -> dict[str, Any]:
    return {"total": ctx.data["n"]}


order = (
    workflow("cli-order", version="1")
    .step("add", add)
    .commit("record", record, compensate=undo_record)
    .step("gated", gated)
    .step("total", total)
)


def ask(ctx: StepContext) -> Any:
    return wait_for("approval")


def after(ctx: StepContext) -> dict[str, Any]:
    return {"approved_by": (ctx.results.get("approve") or {}).get("by")}


approval = (
    workflow("cli-approval", version="1")
    .step("prepare", add)
    .step("approve", ask)
    .step("after", after)
)

trip = (
    workflow("cli-trip", version="1")
    .commit("book", record, compensate=undo_record)
    .step("approve", ask)
    .step("after", after)
)

ORDER_EVENTS = [
    "workflow:start",
    "step:start",
    "step:complete",
    "step:start",
    "step:complete",
    "step:start",
    "step:complete",
    "step:start",
    "step:complete",
    "workflow:complete",
]
