"""``fluxcelery recover --older-than 1`` while a step runs on a live worker leaves that run
alone: the CLI's engine asks the workers which tasks they hold even though it has sent
nothing itself. Before, its live set was empty and the healthy run failed ("WorkerLost")."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fluxcelery import RunStatus, StepStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_recover_leaves_a_step_running_on_a_live_worker_alone(rabbit_cluster, tmp_path) -> None:
    import it_workflows as w

    rabbit_cluster.worker("recover-live", concurrency=1)
    handle = rabbit_cluster.engine.start(w.crash, {"sleep": 6})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = rabbit_cluster.engine.get(handle.id)
        if state is not None and state.step("slow").status == StepStatus.RUNNING:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the slow step never started")
    time.sleep(1.5)  # older than --older-than 1
    code = "import sys; from fluxcelery.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run(
        [sys.executable, "-c", code, "recover", "--older-than", "1"],
        env=rabbit_cluster.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert handle.id[:8] not in out.stdout, out.stdout  # not acted on
    result = handle.get(timeout=60)
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.step("slow").attempts == 1
    assert rabbit_cluster.effects(result.id, "charge") == 1
