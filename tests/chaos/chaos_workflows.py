"""Workflows the chaos tests' workers import (``FLUX_WORKFLOWS=chaos_workflows``)."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from fluxcelery import StepContext, branch, workflow

METADATA = sa.MetaData()
outage_effects = sa.Table(
    "outage_effects",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("step", sa.String(64), nullable=False),
)


def slow(ctx: StepContext) -> dict[str, Any]:
    """Sleeps while the test takes the database away; no retries, so a lost outcome that
    counted as a worker loss would fail the run."""
    time.sleep(float(ctx.input.get("sleep", 0)))
    return {"slept": ctx.input.get("sleep", 0), "attempt": ctx.attempt}


def record(ctx: StepContext) -> dict[str, Any]:
    """A commit: one row through ``ctx.session``, optionally sleeping inside the
    transaction (so that its connection can be killed mid-step)."""
    assert ctx.session is not None
    ctx.session.execute(outage_effects.insert().values(run_id=ctx.run_id, step=ctx.step))
    time.sleep(float(ctx.input.get("commit_sleep", 0)))
    return {"recorded": True}


outage = (
    workflow("chaos-outage", version="1")
    .step("slow", slow, retries=0, timeout=60)
    .commit("record", record, retries=3, timeout=60)
    .step("after", lambda ctx: {"done": True}, retries=0)
)


def branch_nap(ctx: StepContext) -> dict[str, Any]:
    """Sleeps ``input.naps[step]`` seconds (the test stops the database meanwhile)."""
    time.sleep(float((ctx.input.get("naps") or {}).get(ctx.step, 0)))
    return {"step": ctx.step, "attempt": ctx.attempt}


# Parallel branches across a database restart (SPEC section 11): branch ``quick`` stores its
# outcome, the database restarts while ``late`` sleeps, and ``late``'s outcome (which makes
# the join) is stored once the database is back. ``record`` commits one row per run.
par_outage = (
    workflow("chaos-par-outage", version="1")
    .parallel(
        "both",
        branch("quick").commit("quick", record, retries=3, timeout=60),
        branch("late").step("late", branch_nap, retries=0, timeout=60),
    )
    .commit("after-join", record, retries=3, timeout=60)
)
