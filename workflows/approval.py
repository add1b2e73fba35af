"""A purchase that waits for a manager: ``submit`` → approval ``manager`` → ``place-order``.

The approval's policy decides what it can: purchases up to 100 pass at once (``by:
"policy"``), those above 50,000 are denied (no manager may sign them), the rest wait for a
person. While the run waits no worker is held. Decide from anywhere::

    fluxcelery approve RUN_ID --by ann --comment "budget checked"
    fluxcelery reject RUN_ID --by ann --reason "over the team budget"

or with ``engine.approve`` / ``engine.reject``, or the Approve / Reject buttons on the
Flower run page. Only the names in ``PURCHASE_APPROVERS`` (default ``ann,lee``) may
decide; the requester never approves their own purchase. A rejection fails the approval
and ``submit`` is compensated (the request is withdrawn and the requester told why). A
request nobody decides within ``APPROVAL_TIMEOUT`` seconds (default 7 days) fails the
same way.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fluxcelery import StepContext, workflow

WORKFLOW = "purchase-approval"
AUTO_APPROVE_LIMIT = Decimal("100")
DENY_ABOVE = Decimal("50000")


class PurchaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=48)
    requester: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    reason: str = Field(default="", max_length=500)


def submit(ctx: StepContext) -> dict[str, Any]:
    req: PurchaseIn = ctx.input
    return {"request_id": req.request_id, "amount": str(req.amount)}


def withdraw(ctx: StepContext) -> None:
    """Compensates ``submit`` when the purchase is rejected (or the order fails)."""
    decision = ctx.results.get("manager") or {}
    ctx.log.info(
        "purchase %s withdrawn: %s",
        ctx.input.request_id,
        decision.get("comment") or "the run failed",
    )


def policy(ctx: StepContext) -> str:
    amount: Decimal = ctx.input.amount
    if amount <= AUTO_APPROVE_LIMIT:
        return "auto"
    if amount > DENY_ABOVE:
        return "deny"
    return "ask"


def approvers(ctx: StepContext) -> list[str]:
    names = os.environ.get("PURCHASE_APPROVERS", "ann,lee").split(",")
    return [n.strip() for n in names if n.strip() and n.strip() != ctx.input.requester]


def place_order(ctx: StepContext) -> dict[str, Any]:
    decision = ctx.results["manager"]
    return {"purchase_order": f"PO-{ctx.idempotency_key}", "approved_by": decision["by"]}


purchase = (
    workflow(WORKFLOW, version="2")
    .input(PurchaseIn)
    .step("submit", submit, compensate=withdraw)
    .approval(
        "manager",
        policy=policy,
        approvers=approvers,
        timeout=float(os.environ.get("APPROVAL_TIMEOUT", 7 * 24 * 3600)),
    )
    .commit("place-order", place_order)
)
