"""Celery's time limits of a step come from its resolved timeout (the step's, else the worker
engine's ``default_timeout``), never from a second constant (SPEC section 5): a worker whose
engine allows 90 s runs a 40 s step to completion on prefork, where Celery enforces limits."""

from __future__ import annotations

import pytest

from fluxcelery import RunStatus

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(150)]


def test_a_step_within_the_engines_default_timeout_is_not_killed(rabbit_cluster) -> None:
    import it_workflows as w

    worker = rabbit_cluster.worker("patient", concurrency=1, env={"FLUX_DEFAULT_TIMEOUT": "90"})
    result = rabbit_cluster.engine.start(w.long_step, {"sleep": 40}).get(timeout=120)
    assert result.status == RunStatus.COMPLETED, (result.error, worker.log()[-2000:])
    step = result.step("work")
    assert step.attempts == 1 and step.output == "slept"
    assert step.duration_ms is not None and step.duration_ms >= 40_000
    assert "SoftTimeLimitExceeded" not in worker.log()
