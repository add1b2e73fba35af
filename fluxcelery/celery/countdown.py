"""Delays longer than a worker may hold a message are taken in hops.

A countdown message sits unacknowledged in the worker until it is due. RabbitMQ closes the
channel of a consumer holding a delivery longer than its ``consumer_timeout`` (30 minutes by
default), and the Celery worker exits with ``PreconditionFailed``; Redis delivers the message
again after its ``visibility_timeout``. So no countdown here is longer than
``FLUX_MAX_COUNTDOWN`` (600 s): a longer wait timeout re-schedules itself from the deadline
stored in the step row, and a longer retry delay carries its due time (``not_before``) and is
sent on again until then, without counting an attempt.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ..core.records import utcnow
from ..settings import DEFAULT_MAX_COUNTDOWN

#: Closer than this to its due time, a hop runs its work instead of hopping again.
EARLY_OK = 0.05


def max_countdown(app: Any) -> float:
    return float(app.conf.get("flux_max_countdown") or DEFAULT_MAX_COUNTDOWN)


def first_hop(app: Any, delay: float) -> tuple[float, dict[str, str]]:
    """The countdown to send a retry with, and the keyword it carries when the delay is
    longer than one hop: ``not_before``, its due time (ISO 8601, UTC)."""
    cap = max_countdown(app)
    if delay <= cap:
        return delay, {}
    return cap, {"not_before": (utcnow() + timedelta(seconds=delay)).isoformat()}


def seconds_left(due: str | None) -> float:
    """Seconds until ``due`` (``not_before``); 0 when it is due or there is none."""
    if not due:
        return 0.0
    left = (datetime.fromisoformat(due) - utcnow()).total_seconds()
    return left if left > EARLY_OK else 0.0
