"""The backoff of a step task retried because the database or broker is down counts that
task's outages only: Celery's ``request.retries`` also counts step retries and countdown hops,
and an outage after those waited 30 s from its first retry."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Retry

from fluxcelery import workflow
from fluxcelery.celery.app import build_app
from fluxcelery.celery.tasks import _outage_retry, outage_delay, register_workflow
from fluxcelery.core.errors import StorageError
from fluxcelery.settings import Settings


def noop(ctx: Any) -> None:
    return None


def test_outage_delay_doubles_up_to_30_seconds() -> None:
    assert [outage_delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


@pytest.mark.parametrize(
    ("kwargs", "mark", "delay", "sent"),
    [
        # Hopped seven times (request.retries = 7): the first outage still waits 1 s.
        ({"run_id": "r1"}, True, 1, {"run_id": "r1", "outage": True, "outages": 1}),
        (
            {"run_id": "r1", "outage": True, "outages": 3},
            True,
            8,
            {"run_id": "r1", "outage": True, "outages": 4},
        ),
        ({"run_id": "r1", "outages": 9}, False, 30, {"run_id": "r1", "outages": 10}),
    ],
)
def test_outage_retry_counts_its_own_outages(
    kwargs: dict[str, Any], mark: bool, delay: int, sent: dict[str, Any]
) -> None:
    app = build_app(Settings())  # memory:// broker: the retry message stays in-process
    [name] = register_workflow(app, workflow("outage-backoff").step("s", noop).freeze(), 30.0)
    task = app.tasks[name]
    task.push_request(id="t-1", retries=7, kwargs=kwargs, delivery_info={}, called_directly=False)
    try:
        with pytest.raises(Retry) as raised:
            _outage_retry(task, StorageError("database down"), mark=mark)
    finally:
        task.pop_request()
    assert raised.value.when == delay
    assert raised.value.sig is not None and raised.value.sig.kwargs == sent
