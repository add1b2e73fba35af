"""Scheduled workflows (docs/schedules.md): ``nightly-report`` runs the daily report at
03:00 Paris time (and catches up a night missed while no beat ran); ``poll-feed`` polls a
feed every 5 minutes, asking for what came since its tick.

Serve them with a worker and a beat, both with ``FLUX_WORKFLOWS=workflows.reports``::

    celery -A fluxcelery worker -l INFO
    celery -A fluxcelery beat -l INFO
    fluxcelery --workflows workflows.reports schedules
"""

from __future__ import annotations

from typing import Any

from fluxcelery import StepContext, schedule, workflow


def collect(ctx: StepContext) -> dict[str, Any]:
    # A real report queries the warehouse here; the run's input says what to cover.
    return {"scope": ctx.input["scope"], "rows": 42}


def publish(ctx: StepContext) -> dict[str, Any]:
    # A commit: a retried run never publishes twice. The run id names the tick
    # (sched:nightly-report:20270105T020000Z), so downstream systems can key on it too.
    return {"published": ctx.run_id, "rows": ctx.results["collect"]["rows"]}


report = workflow("daily-report").step("collect", collect).commit("publish", publish)


def fetch(ctx: StepContext) -> dict[str, Any]:
    return {"since": ctx.input["since"], "items": []}


poll = workflow("feed-poll").step("fetch", fetch, retries=2)

schedule(
    "nightly-report",
    report,
    cron="0 3 * * *",
    input={"scope": "all"},
    timezone="Europe/Paris",
    catch_up=True,
)
schedule("poll-feed", poll, every=300, input=lambda tick: {"since": tick.isoformat()})
