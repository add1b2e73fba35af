"""The workflows of the Docker suite: imported by the test (the producer) and, through a
volume, by the worker container (``FLUX_WORKFLOWS=docker_workflows``)."""

from __future__ import annotations

from typing import Any

from fluxcelery import Backoff, workflow

QUICK = Backoff(base=0.2, factor=1.0, max=0.2, jitter=False)


def double(ctx: Any) -> int:
    return int(ctx.input["n"]) * 2


def flaky(ctx: Any) -> int:
    if ctx.attempt == 1:
        raise ConnectionError("the first attempt fails")
    return int(ctx.results["double"]) + 1


def charge(ctx: Any) -> str:
    return "charged"


def refund(ctx: Any) -> None:
    ctx.log.info("refunded")


def ship(ctx: Any) -> None:
    raise RuntimeError("no courier")


retrying = (
    workflow("docker-retrying")
    .step("double", double)
    .commit("flaky", flaky, retries=2, backoff=QUICK)
    .step("done", lambda ctx: ctx.results["flaky"])
)

saga = (
    workflow("docker-saga")
    .commit("charge", charge, compensate=refund)
    .step("ship", ship, retries=1, backoff=QUICK)
)
