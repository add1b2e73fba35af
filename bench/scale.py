"""How cost grows with stored history (PostgreSQL).

    python bench/scale.py [--sizes 1000,100000,1000000] [--suspended 100000] [--worker-runs 10000]

1. Per-step cost of `engine.execute` (a 4-step no-op workflow) with 1k, 100k and 1M runs
   already stored (each with 4 steps and 6 trace rows, generated in SQL).
2. Signal latency (signal -> run completed) with 200 suspended runs stored, then with 100k
   more (both sets generated in SQL and signalled alike).
3. Resident memory of a prefork worker child after N runs on RabbitMQ.
Ratios are computed within the run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from fluxcelery import FluxEngine, SqlStorage, wait_for, workflow  # noqa: E402

PG = os.environ.get("FLUX_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP = os.environ.get("FLUX_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


def noop(ctx: Any) -> None:
    return None


WF = workflow("bench-scale").step("a", noop).step("b", noop).step("c", noop).step("d", noop)
WAITER = workflow("bench-scale-wait").step("a", noop).step("w", lambda c: wait_for("go"))

FILL = """
INSERT INTO flux_runs (id, workflow, workflow_version, definition_hash, status, input, data,
    current_step, error, executor, version, created_at, updated_at, finished_at)
SELECT 'fill-' || g, :wf, NULL, :hash, 'completed', '{}'::jsonb, '{}'::jsonb, 4, NULL,
    'local', 5, now() - (g || ' seconds')::interval, now(), now()
FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) g;
INSERT INTO flux_steps (run_id, idx, name, kind, status, attempts, compensation_attempts,
    output, started_at, finished_at, duration_ms)
SELECT 'fill-' || g, i, chr(97 + i), 'step', 'completed', 1, 0, 'null'::jsonb, now(), now(), 0
FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) g, generate_series(0, 3) i;
INSERT INTO flux_traces (id, ts, run_id, workflow, type, status, step, step_index, kind)
SELECT md5(g::text || i::text), now(), 'fill-' || g, :wf,
    (ARRAY['workflow:start','step:start','step:complete','step:start','step:complete',
           'workflow:complete'])[i + 1], 'completed', NULL, NULL, NULL
FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) g, generate_series(0, 5) i;
"""

FILL_SUSPENDED = """
INSERT INTO flux_runs (id, workflow, workflow_version, definition_hash, status, input, data,
    current_step, error, executor, version, created_at, updated_at, finished_at)
SELECT 'susp-' || g, :wf, NULL, :hash, 'suspended', '{}'::jsonb, '{}'::jsonb, 1, NULL,
    'local', 3, now(), now(), NULL
FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) g;
INSERT INTO flux_steps (run_id, idx, name, kind, status, attempts, compensation_attempts,
    waiting_for, started_at)
SELECT 'susp-' || g, i, (ARRAY['a','w'])[i + 1], 'step',
    (ARRAY['completed','suspended'])[i + 1], 1, 0, CASE WHEN i = 1 THEN 'go' END, now()
FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) g, generate_series(0, 1) i;
"""


def fill(storage: SqlStorage, sql: str, **params: Any) -> None:
    with storage.engine.begin() as conn:
        for statement in sql.strip().split(";"):
            if statement.strip():
                conn.execute(sa.text(statement), params)
        conn.execute(sa.text("ANALYZE"))


def signal_latencies(engine: FluxEngine, numbers: Iterable[int]) -> list[float]:
    """Milliseconds from ``signal`` to the run completed (in-process), per stored run."""
    out = []
    for i in numbers:
        started = time.perf_counter()
        engine.signal(f"susp-{i}", "go", {"ok": True})
        out.append((time.perf_counter() - started) * 1000)
    return out


def steps_per_s(engine: FluxEngine, runs: int) -> float:
    for _ in range(30):
        engine.execute(WF, {})
    started = time.perf_counter()
    for _ in range(runs):
        engine.execute(WF, {})
    return runs * 4 / (time.perf_counter() - started)


def worker_memory(db_url: str, runs: int) -> dict[str, Any]:
    """RSS of the pool children of a real worker before and after ``runs`` runs."""
    from fluxcelery.celery.app import build_app
    from fluxcelery.settings import Settings

    queue = f"bench_scale_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "FLUX_BROKER_URL": AMQP,
        "FLUX_DATABASE_URL": db_url,
        "FLUX_WORKFLOWS": "bench.scale",
        "FLUX_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
        "FLUX_TASK_EVENTS": "0",
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "fluxcelery",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-Q",
            queue,
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def rss_kb() -> int:
        total = 0
        for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    engine = FluxEngine(
        storage=SqlStorage(db_url),
        app=build_app(
            Settings(broker_url=AMQP, database_url=db_url, celery={"task_default_queue": queue})
        ),
    )
    try:
        time.sleep(6)
        warm = [engine.start(WF, {}) for _ in range(200)]
        for h in warm:
            h.get(timeout=120)
        before = rss_kb()
        handles = [engine.start(WF, {}) for _ in range(runs)]
        for h in handles[-50:]:
            h.get(timeout=600)
        for h in handles:
            h.get(timeout=600)
        after = rss_kb()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        with engine.dispatcher().app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        engine.close()
    return {
        "runs": runs,
        "children_rss_mb_before": round(before / 1024, 1),
        "children_rss_mb_after": round(after / 1024, 1),
        "growth_mb": round((after - before) / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--runs", type=int, default=300, help="measured runs per size")
    parser.add_argument("--suspended", type=int, default=100000)
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--worker-runs", type=int, default=10000)
    parser.add_argument("--json", default="bench/results/scale.json")
    args = parser.parse_args()

    schema = f"flux_scale_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG}?options=-csearch_path%3D{schema}"
    storage = SqlStorage(url)
    engine = FluxEngine(storage=storage)
    out: dict[str, Any] = {"per_step": [], "signal": {}, "worker_memory": {}}
    try:
        stored = 0
        for size in [int(s) for s in args.sizes.split(",")]:
            if size > stored:
                t = time.perf_counter()
                fill(storage, FILL, wf=WF.name, hash=WF.definition_hash, lo=stored + 1, hi=size)
                print(f"  stored {size:,} runs ({time.perf_counter() - t:.0f}s)", file=sys.stderr)
                stored = size
            rate = steps_per_s(engine, args.runs)
            out["per_step"].append(
                {"stored_runs": size, "steps_per_s": round(rate), "us_per_step": round(1e6 / rate)}
            )
            print(f"  {size:>9,} stored: {rate:,.0f} steps/s", file=sys.stderr)

        # Signal latency with few suspended runs, then with many: both sets made by the same
        # fill and signalled the same way (ids drawn from the set just stored).
        engine.register(WAITER)
        few = args.signals
        fill(storage, FILL_SUSPENDED, wf=WAITER.name, hash=WAITER.definition_hash, lo=1, hi=few)
        small = signal_latencies(engine, range(1, few + 1))
        fill(
            storage,
            FILL_SUSPENDED,
            wf=WAITER.name,
            hash=WAITER.definition_hash,
            lo=few + 1,
            hi=few + args.suspended,
        )
        latencies = signal_latencies(
            engine, random.sample(range(few + 1, few + args.suspended + 1), args.signals)
        )
        out["signal"] = {
            "suspended_stored": args.suspended,
            "p50_ms": round(statistics.median(latencies), 2),
            "p95_ms": round(sorted(latencies)[int(len(latencies) * 0.95) - 1], 2),
            "p50_ms_few_stored": round(statistics.median(small), 2),
            "p95_ms_few_stored": round(sorted(small)[int(len(small) * 0.95) - 1], 2),
        }
        if args.worker_runs:
            out["worker_memory"] = worker_memory(url, args.worker_runs)
    finally:
        engine.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    first, last = out["per_step"][0], out["per_step"][-1]
    out["ratio_cost_largest_over_smallest"] = round(last["us_per_step"] / first["us_per_step"], 2)
    print(f"\n{'stored runs':>12}{'steps/s':>10}{'us/step':>10}")
    for row in out["per_step"]:
        print(f"{row['stored_runs']:>12,}{row['steps_per_s']:>10,}{row['us_per_step']:>10}")
    print(
        f"cost ratio {last['stored_runs']:,} vs {first['stored_runs']:,}: "
        f"{out['ratio_cost_largest_over_smallest']}"
    )
    s = out["signal"]
    print(
        f"signal latency with {s['suspended_stored']:,} suspended: p50 {s['p50_ms']} ms, "
        f"p95 {s['p95_ms']} ms (with {args.signals} suspended: p50 {s['p50_ms_few_stored']} ms, "
        f"p95 {s['p95_ms_few_stored']} ms)"
    )
    if out["worker_memory"]:
        m = out["worker_memory"]
        print(
            f"worker children RSS: {m['children_rss_mb_before']} MB -> "
            f"{m['children_rss_mb_after']} MB after {m['runs']:,} runs"
        )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
