"""A trip booking with parallel branches and a for_each (SPEC section 11), for the tests of
the pages that group them: ``fluxcelery show``, the Flower tab and the viewer.

``trip()`` books a flight and a hotel at once (two branches whose times overlap), then
mails every address of ``input["emails"]``, two at a time; an address containing "bounce"
fails its item (and so the run, which is rolled back).
"""

from __future__ import annotations

import time
from typing import Any

from fluxcelery import NonRetryableError, Workflow, branch, workflow

NAME = "trip-parallel"
EMAILS = ["ada@example.com", "grace@example.com", "linus@example.com", "margaret@example.com"]


def _work(ms: int, result: Any = None) -> Any:
    def handler(ctx: Any) -> Any:
        time.sleep(ms / 1000)  # real durations: overlapping branches show on the timeline
        return result

    return handler


def _notify(ctx: Any) -> str:
    time.sleep(0.03)
    if "bounce" in str(ctx.item):
        raise NonRetryableError(f"mailbox {ctx.item} does not exist")
    return f"sent to {ctx.item}"


def trip(name: str = NAME) -> Workflow:
    return (
        workflow(name, version="1")
        .step("quote", _work(15, {"price": 1240}))
        .parallel(
            "book",
            branch("flight").commit("reserve-flight", _work(160, "LH-441"), compensate=_work(20)),
            branch("hotel")
            .step("pick-hotel", _work(50, "Hotel Adlon"))
            .commit("reserve-hotel", _work(70, "room 512"), compensate=_work(20)),
        )
        .for_each(
            "notify", _notify, items=lambda ctx: ctx.input["emails"], max_concurrency=2, retries=0
        )
        .step("confirm", _work(10, "confirmed"))
    )


def many_emails(n: int, bounce: int | None = None) -> list[str]:
    """``n`` addresses; the one at index ``bounce`` does not exist."""
    return [
        f"bounce-{i}@example.com" if i == bounce else f"guest-{i}@example.com" for i in range(n)
    ]
