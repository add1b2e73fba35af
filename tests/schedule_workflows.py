"""Schedules the CLI and Flower tests list and start (``--workflows schedule_workflows``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fluxcelery import StepContext, schedule, workflow


def summarize(ctx: StepContext) -> dict[str, Any]:
    return {"scope": ctx.input.get("scope"), "since": ctx.input.get("since")}


report = workflow("sched-cli-report").step("summarize", summarize)


def since(tick: datetime) -> dict[str, Any]:
    return {"since": tick.isoformat()}


schedule(
    "sched-cli-nightly", report, cron="0 3 * * *", input={"scope": "all"}, timezone="Europe/Paris"
)
schedule("sched-cli-poll", "sched-cli-report", every=300, input=since, catch_up=True)
