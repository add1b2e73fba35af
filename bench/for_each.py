"""for_each on real Celery workers against linear runs, measured in one run (SPEC section 11).

    python bench/for_each.py [--items 1000] [--rounds 3] [--concurrency 2]

One `celery worker -P prefork -c 2` on RabbitMQ with PostgreSQL, importing bench/bench_tasks.py.
Each round runs, on the same worker, ``items / 4`` runs of a 4-step linear workflow (started
together) and one run of a ``for_each`` over ``items`` no-op items (no max_concurrency), and
measures steps (items) per second from the first start to the last completion (a Redis list,
blocking pop: the measuring process takes no CPU meanwhile). Prints each round and the
median ratio for_each / linear; the target is >= 0.8x.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench import bench_tasks  # noqa: E402
from bench.celery_overhead import AMQP, PG, REDIS, start_worker, wait_done  # noqa: E402
from fluxcelery import FluxEngine, SqlStorage  # noqa: E402
from fluxcelery.celery.app import build_app  # noqa: E402
from fluxcelery.settings import Settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeline", action="store_true", help="print when the group began")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    schema, queue = f"bench_each_{tag}", f"bench_each_{tag}"
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
        "FLUX_TASK_EVENTS": "0",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("FLUX_TRACE_FILE", None)
    settings = Settings(
        broker_url=AMQP,
        database_url=db_url,
        workflows=("bench.bench_tasks",),
        celery={"task_default_queue": queue},
    )
    engine = FluxEngine(storage=SqlStorage(db_url), app=build_app(settings))
    engine.register(bench_tasks.flux_chain, bench_tasks.flux_each)
    r = redis.Redis.from_url(REDIS, socket_timeout=None)
    log = Path(f"/tmp/bench-each-{tag}.log")
    worker = start_worker("fluxcelery", queue, env, log, args.concurrency)
    rates: dict[str, list[float]] = {"linear": [], "for_each": []}
    redone: list[int] = []  # item outcomes whose write lost a race and was made again
    try:
        key = f"bench-each-warm-{tag}"
        engine.start(bench_tasks.flux_chain, {"key": key})
        engine.start(bench_tasks.flux_each, {"key": key, "n": 10})
        wait_done(r, key, 2, timeout=120)
        runs = args.items // 4
        for n in range(args.rounds):
            key = f"bench-each-linear-{tag}-{n}"
            began = time.perf_counter()
            for _ in range(runs):
                engine.start(bench_tasks.flux_chain, {"key": key})
            wait_done(r, key, runs, timeout=600)
            rates["linear"].append(runs * 4 / (time.perf_counter() - began))
            key = f"bench-each-items-{tag}-{n}"
            began = time.perf_counter()
            handle = engine.start(bench_tasks.flux_each, {"key": key, "n": args.items})
            wait_done(r, key, 1, timeout=600)
            rates["for_each"].append(args.items / (time.perf_counter() - began))
            done = engine.traces(run_id=handle.id, type="step:complete", limit=None)
            redone.append(sum(1 for e in done if (e.meta or {}).get("raced")))
            if args.timeline:
                events = engine.traces(run_id=handle.id, limit=None)
                starts = {
                    (e.meta or {}).get("item"): e.ts
                    for e in events
                    if e.type == "step:start" and e.step == "each"
                }
                ends = {
                    (e.meta or {}).get("item"): e.ts
                    for e in events
                    if e.type == "step:complete" and e.step == "each"
                }
                inside = sorted((ends[k] - starts[k]).total_seconds() for k in ends if k in starts)
                print(
                    f"  start->complete per item: median {inside[len(inside) // 2] * 1000:.1f} ms"
                )
                t0 = events[0].ts
                for e in events:
                    if e.type in ("parallel:start", "parallel:join", "workflow:complete") or (
                        e.step == "each" and (e.meta or {}).get("item") in (0, args.items - 1)
                    ):
                        at = (e.ts - t0).total_seconds()
                        print(f"  {at:7.3f}s {e.type} {e.step} {e.meta}")
            print(
                f"round {n + 1}: linear {rates['linear'][-1]:.0f} steps/s, "
                f"for_each {rates['for_each'][-1]:.0f} items/s "
                f"({rates['for_each'][-1] / rates['linear'][-1]:.2f}x; "
                f"{redone[-1]} item writes redone after a sibling's)",
                flush=True,
            )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        engine.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    linear, each = statistics.median(rates["linear"]), statistics.median(rates["for_each"])
    print(
        f"median: linear {linear:.0f} steps/s, for_each {each:.0f} items/s: "
        f"{each / linear:.2f}x (target >= 0.8x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
