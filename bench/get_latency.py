"""The wait a producer sees: ``RunHandle.get`` on a real prefork worker, push against poll.

    python bench/get_latency.py [--runs 200] [--concurrency 2]

A 4-step no-op run on `celery worker -P prefork` (RabbitMQ, PostgreSQL), started and waited
for one at a time from this process. For each run: its own time (created -> finished, server
timestamps as stored) and the producer's overhead (from ``finished_at`` to the moment
``get()`` returned, on the same machine's clock). Runs alternate between push
(``LISTEN``/``NOTIFY``: the settling write wakes ``get``) and poll (``FLUX_PUSH_GET=0``: the
backoff loop), so that both see the same machine. Prints p50/p95/max of each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench.celery_overhead import AMQP, PG, start_worker  # noqa: E402
from fluxcelery import FluxEngine, SqlStorage  # noqa: E402
from fluxcelery.celery.app import build_app  # noqa: E402
from fluxcelery.settings import Settings  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 2),
        "p95": round(pct(values, 0.95), 2),
        "max": round(max(values), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per mode")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", default="bench/results/get_latency.json")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    schema, queue = f"flux_bench_{tag}", f"bench_get_{tag}"
    admin = sa.create_engine(PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    db_url = f"{PG}?options=-csearch_path%3D{schema}"
    env = {
        **os.environ,
        "FLUX_BROKER_URL": AMQP,
        "FLUX_DATABASE_URL": db_url,
        "FLUX_WORKFLOWS": "bench.bench_tasks",
        "FLUX_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
        "FLUX_TASK_EVENTS": "0",
    }
    logs = Path(f"/tmp/flux-bench-{tag}")
    logs.mkdir(parents=True, exist_ok=True)
    from bench import bench_tasks as bt

    storage = SqlStorage(db_url)
    settings = Settings(broker_url=AMQP, database_url=db_url, celery={"task_default_queue": queue})
    engine = FluxEngine(storage=storage, app=build_app(settings))
    engine.register(bt.flux_chain)
    worker = start_worker("fluxcelery", queue, env, logs / "worker.log", args.concurrency)
    own: dict[str, list[float]] = {"push": [], "poll": []}
    extra: dict[str, list[float]] = {"push": [], "poll": []}
    try:
        time.sleep(6)
        for _ in range(20):  # warm up both paths (connections, prepared statements)
            for push in (True, False):
                engine.push_get = push
                engine.start(bt.flux_chain, {"key": f"bench-get-{tag}"}).get(timeout=60)
        total = args.runs * 2
        for i in range(total):
            mode = "push" if i % 2 == 0 else "poll"
            engine.push_get = mode == "push"
            result = engine.start(bt.flux_chain, {"key": f"bench-get-{tag}"}).get(timeout=60)
            returned = datetime.now(UTC)
            state = storage.load_run(result.id)
            assert state is not None and state.finished_at is not None
            own[mode].append((state.finished_at - state.created_at).total_seconds() * 1000)
            extra[mode].append((returned - state.finished_at).total_seconds() * 1000)
            if (i + 1) % 100 == 0:
                print(f"  {i + 1}/{total} runs", file=sys.stderr)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        storage.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    out: dict[str, Any] = {
        mode: {"run_ms": summary(own[mode]), "get_overhead_ms": summary(extra[mode])}
        for mode in ("push", "poll")
    }
    out["overhead_p50_poll_over_push"] = round(
        out["poll"]["get_overhead_ms"]["p50"] / max(out["push"]["get_overhead_ms"]["p50"], 0.01), 1
    )
    print(f"{'mode':6} {'run p50':>9} {'run p95':>9} {'get extra p50':>14} {'p95':>8} {'max':>8}")
    for mode in ("push", "poll"):
        r, g = out[mode]["run_ms"], out[mode]["get_overhead_ms"]
        print(
            f"{mode:6} {r['p50']:>7.2f}ms {r['p95']:>7.2f}ms {g['p50']:>12.2f}ms "
            f"{g['p95']:>6.2f}ms {g['max']:>6.2f}ms"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
