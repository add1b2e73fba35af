"""New-user onboarding: ``load-user`` → ``send-welcome-email`` (commit: sent once) →
``create-workspace`` (commit) → ``schedule-follow-up`` (only for paid plans).

A crash or a retry after ``send-welcome-email`` completed never sends the email twice: a
completed commit is never re-run, and the email provider gets ``ctx.idempotency_key``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fluxcelery import NonRetryableError, StepContext, workflow

WORKFLOW = "user-onboarding"


class SignupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=48)
    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    name: str = Field(default="", max_length=200)
    plan: Literal["free", "team", "enterprise"] = "free"


def load_user(ctx: StepContext) -> dict[str, Any]:
    user: SignupIn = ctx.input
    if user.email.endswith("@example.invalid"):
        raise NonRetryableError(f"user {user.user_id} has an undeliverable address")
    ctx.data["display_name"] = user.name or user.email.split("@", 1)[0]
    return {"user_id": user.user_id, "plan": user.plan}


def send_welcome_email(ctx: StepContext) -> dict[str, Any]:
    user: SignupIn = ctx.input
    # A real provider call passes the key so that a resend after a crash is deduplicated.
    ctx.log.info("welcome email to %s (key %s)", user.email, ctx.idempotency_key)
    return {"to": user.email, "idempotency_key": ctx.idempotency_key}


def create_workspace(ctx: StepContext) -> dict[str, Any]:
    workspace = f"ws-{ctx.input.user_id}"
    ctx.data["workspace"] = workspace
    return {"workspace": workspace}


def delete_workspace(ctx: StepContext) -> None:
    ctx.log.info("deleted workspace %s", ctx.data.get("workspace"))


def schedule_follow_up(ctx: StepContext) -> dict[str, Any]:
    return {"follow_up_in_days": 3, "owner": "customer-success"}


onboarding = (
    workflow(WORKFLOW, version="1")
    .input(SignupIn)
    .step("load-user", load_user)
    .commit("send-welcome-email", send_welcome_email)
    .commit("create-workspace", create_workspace, compensate=delete_workspace)
    .step("schedule-follow-up", schedule_follow_up, when=lambda ctx: ctx.input.plan != "free")
)
