"""fluxcelery on real Celery workers against plain Celery chains and a hand-written durable
chain, measured in one run.

    python bench/celery_overhead.py [--runs 400] [--batch 100] [--latency 100] [--events]
                                    [--concurrency 2] [--cpu]

Three sides, one setup: `celery worker -P prefork -c 2` on RabbitMQ (127.0.0.1:5672), one
worker per side on its own queue, and batches interleaved (flux, plain, durable, flux, ...)
so that drift in the machine's load hits all three. fluxcelery keeps its state and traces in
PostgreSQL; the plain chain keeps nothing; the durable chain (``bench/durable_chain.py``) is
plain Celery tasks that commit the same rows a fluxcelery step task commits (claim and
outcome, one durable transaction each, psycopg, no framework), in fluxcelery's own tables in
a schema of their own: the floor of "each step a Celery task with durable state". Each
run/chain is 4 no-op tasks; the last one pushes onto a Redis list, which is how completion
is observed for every side (a blocking pop: the measuring process takes no CPU while it
waits). Prints throughput (runs/s) and round-trip latency p50/p95, and the ratios; the
headline is fluxcelery / durable chain (throughput target >= 1.0x, p50 <= 1.0x).

Task events (what Flower shows) are off on every side by default, as in a plain Celery
install; ``--events`` turns them on for all (fluxcelery's own default, for Flower).

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

import psycopg  # noqa: E402
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
SIDES = ("fluxcelery", "plain celery", "durable chain")


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
        "--events", action="store_true", help="task events on for every side (for Flower)"
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
    durable_schema = f"flux_bench_{tag}_durable"
    flux_q, plain_q, durable_q = f"bench_flux_{tag}", f"bench_plain_{tag}", f"bench_durable_{tag}"
    admin = sa.create_engine(PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(sa.text(f'CREATE SCHEMA "{durable_schema}"'))
    db_url = f"{PG}?options=-csearch_path%3D{schema}"
    # The durable chain's tables: fluxcelery's, made by its migrations (same rows, indexes).
    durable_url = f"{PG}?options=-csearch_path%3D{durable_schema}"
    migrated = SqlStorage(durable_url)
    migrated.init()
    migrated.close()
    durable_dsn = (
        sa.engine.make_url(durable_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    env = {
        **os.environ,
        "FLUX_BROKER_URL": AMQP,
        "FLUX_DATABASE_URL": db_url,
        "FLUX_WORKFLOWS": "bench.bench_tasks",
        "FLUX_QUEUE": flux_q,
        "BENCH_PLAIN_QUEUE": plain_q,
        "BENCH_DURABLE_QUEUE": durable_q,
        "BENCH_DURABLE_DSN": durable_dsn,
        "PYTHONPATH": str(ROOT),
        "FLUX_TASK_EVENTS": "1" if args.events else "0",
    }
    env.pop("FLUX_TRACE_FILE", None)
    logs = Path(f"/tmp/flux-bench-{tag}")
    logs.mkdir(parents=True, exist_ok=True)
    os.environ["BENCH_PLAIN_QUEUE"] = plain_q
    os.environ["BENCH_DURABLE_QUEUE"] = durable_q
    os.environ["FLUX_BROKER_URL"] = AMQP
    os.environ["FLUX_TASK_EVENTS"] = env["FLUX_TASK_EVENTS"]  # the producer's "sent" events
    from bench import bench_tasks as bt
    from bench import durable_chain as dc

    engine = FluxEngine(
        storage=SqlStorage(db_url),
        app=build_app(
            Settings(broker_url=AMQP, database_url=db_url, celery={"task_default_queue": flux_q})
        ),
    )
    engine.register(bt.flux_chain)
    producer_db = psycopg.connect(durable_dsn)  # autocommit off: durable commits
    workers = [
        start_worker("fluxcelery", flux_q, env, logs / "flux.log", args.concurrency),
        start_worker("bench.bench_tasks", plain_q, env, logs / "plain.log", args.concurrency),
        start_worker("bench.durable_chain", durable_q, env, logs / "durable.log", args.concurrency),
    ]
    groups = {name: cpu.CpuGroups(w.pid) for name, w in zip(SIDES, workers, strict=True)}
    used: dict[str, dict[str, float]] = {name: {} for name in groups}
    # No socket timeout: redis-py 8 defaults to 5 s, which ends a longer BLPOP in an error.
    r = redis.Redis.from_url(REDIS, socket_timeout=None)
    results: dict[str, Any] = {}
    try:
        time.sleep(6)  # workers up (they print "ready" at WARNING level only if errors)

        def flux_one(key: str) -> None:
            engine.start(bt.flux_chain, {"key": key})

        def plain_one(key: str) -> None:
            chain(
                bt.plain_noop.si(key),
                bt.plain_noop.si(key),
                bt.plain_noop.si(key),
                bt.plain_finish.si(key),
            ).apply_async(queue=plain_q)

        def durable_one(key: str) -> None:
            dc.start(producer_db, key, durable_q)

        sides = dict(zip(SIDES, (flux_one, plain_one, durable_one), strict=True))
        # warm up every side
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
        f, p, d = (results[name] for name in SIDES)
        results["ratios"] = {
            "throughput_flux_over_plain": round(f["runs_per_s"] / p["runs_per_s"], 3),
            "p50_flux_over_plain": round(f["p50_ms"] / p["p50_ms"], 2),
            "p95_flux_over_plain": round(f["p95_ms"] / p["p95_ms"], 2),
            "throughput_durable_over_plain": round(d["runs_per_s"] / p["runs_per_s"], 3),
            "p50_durable_over_plain": round(d["p50_ms"] / p["p50_ms"], 2),
            "p95_durable_over_plain": round(d["p95_ms"] / p["p95_ms"], 2),
            "throughput_flux_over_durable": round(f["runs_per_s"] / d["runs_per_s"], 3),
            "p50_flux_over_durable": round(f["p50_ms"] / d["p50_ms"], 2),
            "p95_flux_over_durable": round(f["p95_ms"] / d["p95_ms"], 2),
        }
        # What each durable side wrote per run (a check that both write the same rows). The
        # last step signals from its handler, before its outcome commits: wait for that.
        expected = 20 + rounds * args.batch + args.latency
        for name, where in (("fluxcelery", schema), ("durable chain", durable_schema)):
            deadline = time.monotonic() + 10
            while True:
                with admin.connect() as conn:
                    completed, traces = conn.execute(
                        sa.text(
                            f'SELECT (SELECT count(*) FROM "{where}".flux_runs '
                            "WHERE status = 'completed'), "
                            f'(SELECT count(*) FROM "{where}".flux_traces)'
                        )
                    ).one()
                if completed == expected or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if completed != expected:
                raise RuntimeError(f"{name}: {completed} runs completed, not {expected}")
            results[name]["trace_rows_per_run"] = round(traces / completed, 2)
    finally:
        for w in workers:
            try:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait(timeout=20)
            except Exception:
                os.killpg(w.pid, signal.SIGKILL)
        with engine.dispatcher().app.connection_for_write() as conn:
            for q in (flux_q, plain_q, durable_q):
                try:
                    conn.default_channel.queue_delete(q)
                except Exception:
                    pass
        engine.close()
        producer_db.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            conn.execute(sa.text(f'DROP SCHEMA "{durable_schema}" CASCADE'))
        admin.dispose()
        for key in r.scan_iter(f"bench:{tag}:*"):
            r.delete(key)

    print(f"\n{'side':<16}{'runs/s':>10}{'tasks/s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for name in SIDES:
        row = results[name]
        print(
            f"{name:<16}{row['runs_per_s']:>10}{row['tasks_per_s']:>10}"
            f"{row['p50_ms']:>10}{row['p95_ms']:>10}"
        )
    if args.cpu:
        names = SIDES
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
    print(
        "trace rows per run: "
        + ", ".join(
            f"{n} {results[n]['trace_rows_per_run']}" for n in ("fluxcelery", "durable chain")
        )
    )
    print(f"\n{'ratio':<24}{'throughput':>12}{'p50':>8}{'p95':>8}")
    for label, suffix in (
        ("fluxcelery / plain", "flux_over_plain"),
        ("durable / plain", "durable_over_plain"),
        ("fluxcelery / durable", "flux_over_durable"),
    ):
        print(
            f"{label:<24}{ratios['throughput_' + suffix]:>12}{ratios['p50_' + suffix]:>8}"
            f"{ratios['p95_' + suffix]:>8}"
        )
    print(
        f"headline, fluxcelery / hand-written durable chain: throughput "
        f"{ratios['throughput_flux_over_durable']}x (target >= 1.0x), p50 "
        f"{ratios['p50_flux_over_durable']}x (target <= 1.0x)"
    )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
