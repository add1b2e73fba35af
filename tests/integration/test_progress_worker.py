"""Progress on a real prefork worker (SPEC section 13): a producer reads the running step's
``ctx.progress`` reports from SQL while the worker works, the trace holds them, and with a
result backend configured the step task's Celery state is ``PROGRESS`` with the report as
its meta (what Flower and ``AsyncResult.info`` show)."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from conftest import Cluster
from helpers import require_service, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REDIS_BACKEND = "redis://127.0.0.1:6379/3"


def test_progress_is_read_live_and_reaches_celerys_result_backend(rabbit_cluster: Cluster) -> None:
    import it_workflows as w

    require_service("redis")
    c = rabbit_cluster
    c.worker("progress", concurrency=1, env={"FLUX_RESULT_BACKEND": REDIS_BACKEND})
    handle = c.engine.start(w.progressing, {"chunks": 10, "chunk": 0.3})

    def midway() -> Any:
        state = c.engine.get(handle.id)
        step = state.steps[0] if state else None
        return step if step and step.progress and 3 <= step.progress["done"] < 10 else None

    step = wait_until(midway)
    assert step.status.value == "running" and step.progress["total"] == 10
    assert step.progress["message"] == f"chunk {step.progress['done']}"
    reader = Celery("progress-reader", backend=REDIS_BACKEND)
    try:
        result = AsyncResult(step.task_id, app=reader)
        info = wait_until(lambda: result.info if result.state == "PROGRESS" else None, timeout=10)
        assert info["total"] == 10 and 0 <= info["done"] <= 10
    finally:
        reader.close()
    final = handle.get(timeout=60)
    assert final.status.value == "completed"
    crunch = final.step("crunch")
    assert crunch.progress and crunch.progress["message"] == "done"
    events = [e for e in c.engine.traces(run_id=handle.id) if e.type == "step:progress"]
    # 11 reports over ~3 s, stored at most every 0.5 s, and the last one always.
    assert 4 <= len(events) <= 8
    assert events[-1].meta == {"done": 10, "total": 10, "message": "done"}
