"""What bench/celery_overhead.py runs on workers: a 4-step fluxcelery workflow and a plain
Celery chain of 4 tasks (the third side, a hand-written durable chain, is in
``bench/durable_chain.py``). All end by pushing onto a Redis list, so completion is seen the
same way for every side (no result backend involved), and the benchmark blocks on the list
(``BLPOP``) instead of polling: a polling loop would take CPU from the workers it measures,
more of it from the slower side."""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

from fluxcelery import workflow

REDIS_URL = os.environ.get("FLUX_BENCH_REDIS", "redis://127.0.0.1:6379/0")
_redis: redis.Redis | None = None


def counter() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(REDIS_URL)
    return _redis


def done(key: str) -> None:
    counter().rpush(key, 1)


def noop(ctx: Any) -> None:
    return None


def finish(ctx: Any) -> None:
    done(ctx.input["key"])


flux_chain = (
    workflow("bench-overhead").step("a", noop).step("b", noop).step("c", noop).step("d", finish)
)


def bench_app(name: str, queue: str) -> Celery:
    """A Celery app set up like fluxcelery's (``fluxcelery/celery/app.py``): JSON only, no
    results, acks late, requeue on a lost worker, prefetch 1, task events as
    ``FLUX_TASK_EVENTS`` says. The plain chain and the hand-written durable chain
    (``bench/durable_chain.py``) both use it, so that every side runs the same worker setup."""
    events = os.environ.get("FLUX_TASK_EVENTS", "1") not in ("0", "false")
    app = Celery(name, broker=os.environ.get("FLUX_BROKER_URL", "memory://"))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=events,
        task_send_sent_event=events,
    )
    return app


plain = bench_app("bench_plain", os.environ.get("BENCH_PLAIN_QUEUE", "bench_plain"))
app = plain


@plain.task(name="bench.plain.noop")
def plain_noop(key: str) -> None:
    return None


@plain.task(name="bench.plain.finish")
def plain_finish(key: str) -> None:
    done(key)


def items(ctx: Any) -> list[int]:
    return list(range(int(ctx.input["n"])))


flux_each = (
    workflow("bench-each")
    .for_each("each", noop, items=items, max_concurrency=None)
    .step("done", finish)
)
