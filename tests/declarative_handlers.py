"""Handlers the workflow files of the declarative tests name by import path."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from fluxcelery import NonRetryableError, StepContext


class RefundIn(BaseModel):
    amount: Decimal = Decimal("10.00")
    approve: bool = True
    tags: list[str] = []


@dataclass
class PlainIn:
    n: int = 0


def accept_all(raw: Any) -> bool:
    return isinstance(raw, dict)


class Flaky(ConnectionError):
    """Retried."""


class Fatal(NonRetryableError):
    """Never retried."""


def validate(ctx: StepContext) -> dict[str, Any]:
    return {"ok": True, "channels": ["sms", "email"]}


def mark(ctx: StepContext) -> dict[str, Any]:
    ctx.data["approved"] = bool(ctx.input.approve)
    return {"ok": True, "tags": list(ctx.input.tags)}


def refund(ctx: StepContext) -> dict[str, Any]:
    return {"refunded": str(ctx.input.amount)}


def reverse(ctx: StepContext) -> None:
    ctx.data["reversed"] = True


def policy(ctx: StepContext) -> str:
    return "auto"


def approvers(ctx: StepContext) -> list[str]:
    return ["carol"]


def email(ctx: StepContext) -> str:
    return "sent"


def pick(ctx: StepContext) -> str:
    return "+100"


def sms(ctx: StepContext) -> str:
    return "sent"


def unsend(ctx: StepContext) -> None:
    return None


def recipients(ctx: StepContext) -> list[str]:
    return ["a@example.com", "b@example.com"]


def receipt(ctx: StepContext) -> dict[str, Any]:
    return {"to": ctx.item}


NOT_CALLABLE = 42
