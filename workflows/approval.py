"""A purchase that waits for a human: ``submit`` → ``approve`` (suspends until the signal
``approval``) → ``place-order`` or ``notify-rejection``.

While the run waits no worker is held. Approve or reject it from anywhere::

    fluxcelery signal RUN_ID approval --payload '{"approved": true, "by": "ann"}'

``engine.signal(run_id, "approval", {...})`` does the same from code. A request that nobody
answers within ``APPROVAL_TIMEOUT`` seconds (default 7 days) fails with a timeout.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fluxcelery import NonRetryableError, StepContext, WaitFor, wait_for, workflow

WORKFLOW = "purchase-approval"
AUTO_APPROVE_LIMIT = Decimal("100")


class PurchaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=48)
    requester: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    reason: str = Field(default="", max_length=500)


class Decision(BaseModel):
    """What the ``approval`` signal carries."""

    approved: bool
    by: str = Field(min_length=1)
    comment: str = ""


def submit(ctx: StepContext) -> dict[str, Any]:
    req: PurchaseIn = ctx.input
    level = "auto" if req.amount <= AUTO_APPROVE_LIMIT else "manager"
    ctx.data["level"] = level
    return {"request_id": req.request_id, "level": level}


def approve(ctx: StepContext) -> WaitFor | dict[str, Any]:
    """Small purchases pass at once; the rest wait for a person's decision."""
    if ctx.data.get("level") == "auto":
        return {"approved": True, "by": "policy", "comment": "under the auto-approve limit"}
    timeout = float(os.environ.get("APPROVAL_TIMEOUT", 7 * 24 * 3600))
    return wait_for("approval", timeout=timeout)


def _decision(ctx: StepContext) -> Decision:
    try:
        return Decision.model_validate(ctx.results["approve"])
    except Exception as exc:
        raise NonRetryableError(f"the approval signal is malformed: {exc}") from None


def place_order(ctx: StepContext) -> dict[str, Any]:
    decision = _decision(ctx)
    return {"purchase_order": f"PO-{ctx.idempotency_key}", "approved_by": decision.by}


def notify_rejection(ctx: StepContext) -> dict[str, Any]:
    decision = _decision(ctx)
    ctx.log.info("purchase %s rejected by %s", ctx.run_id, decision.by)
    return {"rejected_by": decision.by, "comment": decision.comment}


purchase = (
    workflow(WORKFLOW, version="1")
    .input(PurchaseIn)
    .step("submit", submit)
    .step("approve", approve)
    .commit("place-order", place_order, when=lambda ctx: _decision(ctx).approved)
    .step("notify-rejection", notify_rejection, when=lambda ctx: not _decision(ctx).approved)
)
