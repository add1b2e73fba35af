"""fluxcelery on real Celery workers against plain Celery chains, measured in one run.

    python bench/celery_overhead.py [--runs 400] [--batch 100] [--latency 100] [--events]
                                    [--concurrency 2] [--cpu]

Both sides use the same setup: `celery worker -P prefork -c 2` on RabbitMQ (127.0.0.1:5672),
one worker per side on its own queue, and batches interleaved (flux, plain, flux, ...) so
that drift in the machine's load hits both. fluxcelery keeps its state and traces in
PostgreSQL; the plain chain keeps nothing. Each run/chain is 4 no-op tasks; the last one
pushes onto a Redis list, which is how completion is observed for both (a blocking pop: the
measuring process takes no CPU while it waits).
Prints throughput (runs/s) and round-trip latency p50/p95, and the ratios.

Task events (what Flower shows) are off on both sides by default, as in a plain Celery
install; ``--events`` turns them on for both (fluxcelery's own default, for Flower).

``--cpu`` (Linux) also prints CPU per run of each process group during the throughput
batches (worker parent, pool children, PostgreSQL, RabbitMQ, Redis, this producer) and how
busy the cores were: all servers' processes are counted, so keep the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from celery import chain  # noqa: E402

from bench import cpu  # noqa: E402
from fluxcelery import FluxEngine, SqlStorage  # noqa: E402
from fluxcelery.celery.app import build_app  # noqa: E402
from fluxcelery.settings import Settings  # noqa: E402

AMQP = os.environ.get("FLUX_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
PG = os.environ.get("FLUX_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("FLUX_BENCH_REDIS", "redis://127.0.0.1:6379/0")
CELERY = str(Path(sys.executable).with_name("celery"))


def start_worker(
    app: str, queue: str, env: dict[str, str], log: Path, concurrency: int
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            CELERY,
            "-A",
            app,
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-Q",
            queue,
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
            "-n",
            f"{queue}@%h",
        ],
        env=env,
        cwd=str(ROOT),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc


def wait_done(r: redis.Redis, key: str, count: int, timeout: float = 300) -> None:
    """Block until ``count`` runs pushed their completion onto ``key``."""
    deadline = time.monotonic() + timeout
    for seen in range(count):
        left = deadline - time.monotonic()
        if left <= 0 or r.blpop([key], timeout=max(left, 0.01)) is None:
            raise TimeoutError(f"{key}: {seen} of {count} runs completed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400, help="runs per side, in total")
    parser.add_argument("--batch", type=int, default=100, help="runs per interleaved batch")
    parser.add_argument("--latency", type=int, default=100, help="sequential runs per side")
    parser.add_argument(
        "--events", action="store_true", help="task events on for both sides (for Flower)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=2, help="prefork processes of each side's worker"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="CPU per run by process group (reads /proc)"
    )
    parser.add_argument("--json", default="bench/results/celery_overhead.json")
    args = parser.parse_args()
    if args.cpu and not cpu.available():
        parser.error("--cpu reads /proc: Linux only")

    tag = uuid.uuid4().hex[:8]
    schema = f"flux_bench_{tag}"
    flux_q, plain_q = f"bench_flux_{tag}", f"bench_plain_{tag}"
    admin = sa.create_engine(PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    db_url = f"{PG}?options=-csearch_path%3D{schema}"
    env = {
        **os.environ,
        "FLUX_BROKER_URL": AMQP,
        "FLUX_DATABASE_URL": db_url,
        "FLUX_WORKFLOWS": "bench.bench_tasks",
        "FLUX_QUEUE": flux_q,
        "BENCH_PLAIN_QUEUE": plain_q,
        "PYTHONPATH": str(ROOT),
        "FLUX_TASK_EVENTS": "1" if args.events else "0",
    }
    env.pop("FLUX_TRACE_FILE", None)
    logs = Path(f"/tmp/flux-bench-{tag}")
    logs.mkdir(parents=True, exist_ok=True)
    os.environ["BENCH_PLAIN_QUEUE"] = plain_q
    os.environ["FLUX_BROKER_URL"] = AMQP
    os.environ["FLUX_TASK_EVENTS"] = env["FLUX_TASK_EVENTS"]  # the producer's "sent" events
    from bench import bench_tasks as bt

    engine = FluxEngine(
        storage=SqlStorage(db_url),
        app=build_app(
            Settings(broker_url=AMQP, database_url=db_url, celery={"task_default_queue": flux_q})
        ),
    )
    engine.register(bt.flux_chain)
    workers = [
        start_worker("fluxcelery", flux_q, env, logs / "flux.log", args.concurrency),
        start_worker("bench.bench_tasks", plain_q, env, logs / "plain.log", args.concurrency),
    ]
    groups = {
        "fluxcelery": cpu.CpuGroups(workers[0].pid),
        "plain celery": cpu.CpuGroups(workers[1].pid),
    }
    used: dict[str, dict[str, float]] = {name: {} for name in groups}
    r = redis.Redis.from_url(REDIS)
    results: dict[str, Any] = {}
    try:
        time.sleep(6)  # both workers up (they print "ready" at WARNING level only if errors)

        def flux_one(key: str) -> None:
            engine.start(bt.flux_chain, {"key": key})

        def plain_one(key: str) -> None:
            chain(
                bt.plain_noop.si(key),
                bt.plain_noop.si(key),
                bt.plain_noop.si(key),
                bt.plain_finish.si(key),
            ).apply_async(queue=plain_q)

        sides = {"fluxcelery": flux_one, "plain celery": plain_one}
        # warm up both sides
        for name, fn in sides.items():
            key = f"bench:{tag}:warm:{name}"
            for _ in range(20):
                fn(key)
            wait_done(r, key, 20)

        elapsed = {name: 0.0 for name in sides}
        done = {name: 0 for name in sides}
        rounds = max(1, args.runs // args.batch)
        for i in range(rounds):
            for name, fn in sides.items():
                key = f"bench:{tag}:thr:{name}:{i}"
                before = groups[name].snapshot() if args.cpu else {}
                started = time.perf_counter()
                for _ in range(args.batch):
                    fn(key)
                wait_done(r, key, args.batch)
                elapsed[name] += time.perf_counter() - started
                done[name] += args.batch
                if args.cpu:
                    for group, spent in cpu.delta(before, groups[name].snapshot()).items():
                        used[name][group] = used[name].get(group, 0.0) + spent
            print(
                f"  round {i + 1}/{rounds}: "
                + ", ".join(f"{n} {done[n] / elapsed[n]:.0f} runs/s" for n in sides),
                file=sys.stderr,
            )

        latencies: dict[str, list[float]] = {name: [] for name in sides}
        for i in range(args.latency):
            for name, fn in sides.items():
                key = f"bench:{tag}:lat:{name}:{i}"
                started = time.perf_counter()
                fn(key)
                wait_done(r, key, 1)
                latencies[name].append((time.perf_counter() - started) * 1000)

        for name in sides:
            lat = sorted(latencies[name])
            results[name] = {
                "runs_per_s": round(done[name] / elapsed[name], 1),
                "tasks_per_s": round(4 * done[name] / elapsed[name], 1),
                "p50_ms": round(statistics.median(lat), 2),
                "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 2),
            }
        if args.cpu:
            for name in sides:
                results[name]["cpu_ms_per_run"] = {
                    group: round(spent / done[name] * 1000, 2)
                    for group, spent in used[name].items()
                }
                results[name]["cores_busy"] = round(sum(used[name].values()) / elapsed[name], 2)
        results["task_events"] = args.events
        f, p = results["fluxcelery"], results["plain celery"]
        results["ratios"] = {
            "throughput_flux_over_plain": round(f["runs_per_s"] / p["runs_per_s"], 3),
            "p50_flux_over_plain": round(f["p50_ms"] / p["p50_ms"], 2),
            "p95_flux_over_plain": round(f["p95_ms"] / p["p95_ms"], 2),
        }
    finally:
        for w in workers:
            try:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait(timeout=20)
            except Exception:
                os.killpg(w.pid, signal.SIGKILL)
        with engine.dispatcher().app.connection_for_write() as conn:
            for q in (flux_q, plain_q):
                try:
                    conn.default_channel.queue_delete(q)
                except Exception:
                    pass
        engine.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        for key in r.scan_iter(f"bench:{tag}:*"):
            r.delete(key)

    print(f"\n{'side':<16}{'runs/s':>10}{'tasks/s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for name in ("fluxcelery", "plain celery"):
        row = results[name]
        print(
            f"{name:<16}{row['runs_per_s']:>10}{row['tasks_per_s']:>10}"
            f"{row['p50_ms']:>10}{row['p95_ms']:>10}"
        )
    if args.cpu:
        names = ("fluxcelery", "plain celery")
        print(f"\n{'CPU ms per run':<16}" + "".join(f"{n:>14}" for n in names))
        for group in results["fluxcelery"]["cpu_ms_per_run"]:
            print(
                f"{group:<16}"
                + "".join(f"{results[n]['cpu_ms_per_run'][group]:>14.2f}" for n in names)
            )
        print(
            f"{'total':<16}"
            + "".join(f"{sum(results[n]['cpu_ms_per_run'].values()):>14.2f}" for n in names)
        )
        print(f"{'cores busy':<16}" + "".join(f"{results[n]['cores_busy']:>14.2f}" for n in names))
    ratios = results["ratios"]
    print(f"\nthroughput ratio (flux / plain): {ratios['throughput_flux_over_plain']}")
    print(
        f"latency ratio p50 / p95: {ratios['p50_flux_over_plain']} / "
        f"{ratios['p95_flux_over_plain']}"
    )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
