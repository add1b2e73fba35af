"""A schedule for the two-beat integration test (``FLUX_WORKFLOWS=...,it_schedules``).

Its name, which is also its workflow's, comes from ``FLUX_IT_SCHEDULE`` so that each broker's
run of the test has runs of its own in the shared PostgreSQL schema."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from fluxcelery import StepContext, schedule, workflow

NAME = os.environ.get("FLUX_IT_SCHEDULE", "it-every2")


def note(ctx: StepContext) -> dict[str, Any]:
    return {"tick": ctx.input["tick"]}


def tick_input(tick: datetime) -> dict[str, Any]:
    return {"tick": tick.isoformat()}


ticked = workflow(NAME).step("note", note)
schedule(NAME, ticked, every=2, input=tick_input)
