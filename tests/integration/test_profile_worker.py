"""``fluxcelery profile`` on a real prefork worker (SPEC section 17): attempts run by the
worker's pool processes record their CPU time on their outcome events, and the profile read
from PostgreSQL tells the CPU-bound step from the I/O-bound one as it does in process."""

from __future__ import annotations

import json

import it_profile_flows as flows
import pytest
from click.testing import CliRunner
from conftest import Cluster

from fluxcelery.cli import cli
from fluxcelery.profile import first_starts, profile_workflows, read_events
from fluxcelery.sizing import advise_pools

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RUNS = 10


def test_worker_attempts_record_cpu_time_and_profile_alike(rabbit_cluster: Cluster) -> None:
    c = rabbit_cluster
    c.engine.register(flows.profiled)
    c.worker("profile", concurrency=2, env={"FLUX_WORKFLOWS": "it_workflows,it_profile_flows"})
    handles = [c.engine.start(flows.profiled, {"n": n}) for n in range(RUNS)]
    for h in handles:
        assert h.get(timeout=60).status.value == "completed"

    done = [
        e
        for h in handles
        for e in c.engine.traces(run_id=h.id, type="step:complete")
        if e.worker  # run by the worker, not this process
    ]
    assert len(done) == 2 * RUNS
    assert all("cpu_ms" in (e.meta or {}) for e in done)
    cpu = {e.step: (e.meta or {})["cpu_ms"] for e in done}
    assert cpu["crunch"] >= flows.WORK_S * 1000 * 0.95 and cpu["fetch"] < 5

    read = read_events(c.storage, workflow="it-profile")
    (wf,) = profile_workflows(read.events, c.storage.due_times(first_starts(read.events)))
    assert [(s.step, s.attempts, s.bound) for s in wf.steps] == [
        ("crunch", RUNS, "cpu"),
        ("fetch", RUNS, "io"),
    ]
    # Each first step waited in the broker from the run's creation: a wait measured.
    assert len(wf.steps[0].waits) == RUNS and all(w > 0 for w in wf.steps[0].waits)
    (advice,) = advise_pools([wf], lambda w, s: c.queue, target_rate=20.0, cores=2)
    assert advice.queue == c.queue and advice.pool == "split"
    assert [p.pool for p in advice.parts] == ["prefork", "threads"]

    env = {
        "FLUX_BROKER_URL": None,
        "FLUX_DATABASE_URL": None,
        "FLUX_WORKFLOWS": None,
        "FLUX_QUEUE": c.queue,
        "FLUX_TRACE_FILE": None,
    }
    argv = ["--db", c.db_url, "--broker", "memory://", "--workflows", "it_profile_flows"]
    out = CliRunner().invoke(cli, [*argv, "profile", "--workflow", "it-profile", "--json"], env=env)
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [s["bound"] for s in doc["workflows"][0]["steps"]] == ["cpu", "io"]
    assert [q["queue"] for q in doc["queues"]] == [c.queue]
