"""The AMQP ingress waits out PostgreSQL: a ``fluxcelery consume`` process started while the
database is down, and the database restarted while messages stream in. Every message ends
as exactly one run, dispatched exactly once; nothing is dead-lettered, nothing left queued,
and the process exits 0 when it goes idle. Before the fix, the process exited 1 at start
("ingress stopped: StorageError: ... Connection refused")."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import pytest
from conftest import OutageCluster, chaos_bench
from helpers import AMQP_URL

from fluxcelery.ingress import Publisher, Topology

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(240)]

MESSAGES = 40


def _publish(queue: str, ids: list[str]) -> None:
    with Publisher(AMQP_URL, queue) as publisher:
        for message_id in ids:
            publisher.publish_json({"sleep": 0, "n": message_id}, message_id=message_id)
            time.sleep(0.02)


def _depth(queue: str) -> int:
    from kombu import Connection

    with Connection(AMQP_URL) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def test_consumer_waits_out_postgres_at_start_and_mid_stream(
    outage_cluster: OutageCluster,
) -> None:
    c = outage_cluster
    queue = f"flux.test.ingress-db.{uuid.uuid4().hex[:8]}"
    first = [f"dbo-{i}" for i in range(MESSAGES)]
    second = [f"dbo-{i}" for i in range(MESSAGES, 2 * MESSAGES)]
    _publish(queue, first[:5])  # waiting in the queue before the consumer starts
    cmd = [sys.executable, "-m", "fluxcelery", "consume", "--queue", queue]
    cmd += ["--workflow", "chaos-outage", "--idle-timeout", "12", "--log-level", "WARNING"]
    chaos_bench._pg_ctl("stop")
    try:
        proc = subprocess.Popen(
            cmd, env=c.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(4)  # the consumer has tried the database and is waiting
        assert proc.poll() is None, proc.communicate()
    finally:
        chaos_bench._pg_ctl("start")
        chaos_bench.wait_port(5432)
    feeder = threading.Thread(target=_publish, args=(queue, first[5:] + second))
    feeder.start()
    time.sleep(0.5)
    chaos_bench.restart_database(down_for=2.0)  # connections die mid-stream
    feeder.join()
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "unreachable" in err  # it said what it was waiting for
    assert f"{2 * MESSAGES} received, {2 * MESSAGES} started" in out, (out, err[-3000:])
    runs = {run_id: c.get(run_id) for run_id in first + second}
    missing = [r for r, state in runs.items() if state is None]
    assert not missing
    assert all(state.input["n"] == run_id for run_id, state in runs.items() if state)
    assert _depth(c.queue) == 2 * MESSAGES  # each run dispatched once (no worker runs here)
    assert _depth(queue) == 0 and _depth(f"{queue}.dlq") == 0
    from kombu import Connection

    with Connection(AMQP_URL) as conn:
        Topology(queue).delete(conn.default_channel)
