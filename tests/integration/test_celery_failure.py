"""A step that fails is visible where Celery users look (SPEC section 5): its retried attempts
end their task in RETRY, the last one in FAILURE with the handler's own exception type,
message and traceback (secrets masked), the worker logs it at ERROR, and the chain stops.
The same traceback is stored on the step."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from fluxcelery import RunStatus, StepStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "tok-live-9f8e7d6c5b4a"


@contextmanager
def task_events(app: Any) -> Iterator[list[dict[str, Any]]]:
    """Every task event the workers send while the block runs, as Flower receives them."""
    seen: list[dict[str, Any]] = []
    ready, done = threading.Event(), threading.Event()

    def capture() -> None:
        with app.connection() as conn:
            recv = app.events.Receiver(conn, handlers={"*": seen.append})
            ready.set()
            while not done.is_set():
                try:
                    for _ in recv.itercapture(limit=None, timeout=1.0, wakeup=False):
                        if done.is_set():
                            break
                except TimeoutError:  # a second with no event: listen on
                    continue

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.5)  # let the event queue bind before the run starts
    try:
        yield seen
    finally:
        done.set()
        thread.join(5)


def wait_for_event(seen: list[dict[str, Any]], type_: str, uuid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for event in list(seen):
            if event.get("type") == type_ and event.get("uuid") == uuid:
                return event
        time.sleep(0.1)
    raise AssertionError(f"no {type_} event for {uuid}: {[e.get('type') for e in seen]}")


def test_a_step_failing_for_good_ends_its_task_in_failure(rabbit_cluster) -> None:
    import it_workflows as w

    worker = rabbit_cluster.worker("failure", concurrency=1)
    with task_events(rabbit_cluster.app) as seen:
        result = rabbit_cluster.engine.start(w.declined, {"api_token": SECRET}).get(timeout=30)
        charge = result.step("charge")
        retried = wait_for_event(seen, "task-retried", charge.task_id)
        failed = wait_for_event(seen, "task-failed", charge.task_id)

    # fluxcelery's own record: rolled back, the chain stopped at the failed step.
    assert result.status == RunStatus.ROLLED_BACK
    assert [s.status for s in result.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
        StepStatus.PENDING,
    ]
    assert result.error == "PaymentDeclined: card declined for ***"
    assert not [e for e in rabbit_cluster.engine.traces(run_id=result.id) if e.step == "ship"]

    # The first attempt: RETRY with the handler's exception and frames.
    assert retried["exception"].startswith("ConnectionError('gateway timed out for ***')")
    assert "in decline" in retried["traceback"]
    # The last: FAILURE with the user's exception type and message, and its traceback.
    assert failed["exception"] == "PaymentDeclined('card declined for ***')"
    assert 'it_workflows.py", line' in failed["traceback"]
    assert "in decline" in failed["traceback"]
    assert "PaymentDeclined: card declined for ***" in failed["traceback"]
    # No succeeded event for that task id after it failed.
    assert not [e for e in seen if e["type"] == "task-succeeded" and e["uuid"] == charge.task_id]

    # The worker's log: ERROR with the traceback, the secret nowhere.
    log = worker.log()
    error_lines = [line for line in log.splitlines() if "ERROR" in line and charge.task_id in line]
    assert error_lines, log[-3000:]
    assert "PaymentDeclined('card declined for ***')" in error_lines[0]
    assert 'it_workflows.py", line' in log and "in decline" in log
    assert SECRET not in log

    # The step stores the same traceback, masked.
    assert charge.traceback is not None
    assert charge.traceback.startswith("Traceback (most recent call last):")
    assert "in decline" in charge.traceback
    assert charge.traceback.endswith("PaymentDeclined: card declined for ***")
    assert SECRET not in charge.traceback
    assert result.step("reserve").traceback is None


def test_a_handlers_oserror_is_a_failure_not_a_database_outage(rabbit_cluster) -> None:
    """Step tasks retry database and broker outages (``OSError`` among them) without
    counting an attempt; a handler's own ``OSError`` must still fail its step."""
    import it_workflows as w

    rabbit_cluster.worker("oserror", concurrency=1)
    with task_events(rabbit_cluster.app) as seen:
        result = rabbit_cluster.engine.start(w.missing, {}).get(timeout=30)
        read = result.step("read")
        failed = wait_for_event(seen, "task-failed", read.task_id)
    assert result.status == RunStatus.FAILED
    assert read.attempts == 1
    assert (
        result.error
        == "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/flux-it'"
    )
    assert failed["exception"].startswith("FileNotFoundError(2, 'No such file or directory')")
    assert result.step("after").status == StepStatus.PENDING
