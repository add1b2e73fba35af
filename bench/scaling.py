"""What fluxcelery costs PostgreSQL, and how many workers one PostgreSQL can feed.

    python bench/scaling.py cost [--runs 1000] [--partitioned]
    python bench/scaling.py rate [--clients 1,2,4,8] [--seconds 10]
    python bench/scaling.py workers [--concurrency 2,4,8] [--runs 600] [--batch 100]

Every mode works in a schema of its own (dropped at the end) of the database at
FLUX_BENCH_PG, on a 4-step no-op workflow (``bench/bench_tasks.py``'s ``flux_chain``).

``cost``: runs the workflow ``--runs`` times from one client the way Celery step tasks run it
(the producer's insert, then for each step ``StepRunner.run_step`` as a step task calls it:
claim, handler, outcome; no broker) and prints, per step, the database's own counters
around it: transactions committed, rows inserted / updated (``pg_stat_database``), WAL bytes
(``pg_current_wal_lsn``), and the tables' size per run. ``--partitioned`` first turns
``flux_traces`` into a table partitioned by day (``PARTITION_SQL``, docs/scaling.md): a check
that fluxcelery runs on it (the partitioned table's size then reads 0). The counters are
database-wide: keep the machine otherwise idle.

``rate``: the same driver from N client processes at once for ``--seconds``: the statements
per second this PostgreSQL sustains with fluxcelery's own statements, and how busy the
machine was (PostgreSQL's own CPU is not separated: the clients' backends exit with them).

``workers``: one ``celery -A fluxcelery worker -P prefork -c N`` on RabbitMQ per N, runs
started in batches of ``--batch`` (the last step pushes onto a Redis list, awaited with a
blocking pop): steps/s, transactions/s as PostgreSQL counted them, CPU per process group.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
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

from bench import cpu  # noqa: E402
from fluxcelery import FluxEngine, SqlStorage  # noqa: E402

AMQP = os.environ.get("FLUX_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
PG = os.environ.get("FLUX_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("FLUX_BENCH_REDIS", "redis://127.0.0.1:6379/0")
CELERY = str(Path(sys.executable).with_name("celery"))
STEPS = 4
TABLES = ("flux_runs", "flux_steps", "flux_traces")


def counters(conn: sa.Connection) -> dict[str, int]:
    row = conn.execute(
        sa.text(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint "
            "FROM pg_stat_database WHERE datname = current_database()"
        )
    ).one()
    return dict(zip(("commits", "inserted", "updated", "deleted", "wal_bytes"), row, strict=True))


def snapshot(admin: sa.Engine) -> dict[str, int]:
    # pg_stat_database is updated by backends at most every PGSTAT_MIN_INTERVAL (1 s) and at
    # their exit: flush this one's and wait for the others' before reading.
    time.sleep(1.2)
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return counters(conn)


def sizes(admin: sa.Engine, schema: str) -> dict[str, dict[str, int]]:
    out = {}
    with admin.connect() as conn:
        for t in TABLES:
            heap, total = conn.execute(
                sa.text(
                    "SELECT pg_relation_size(c.oid), pg_total_relation_size(c.oid) FROM pg_class "
                    "c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s "
                    "AND c.relname = :t"
                ),
                {"s": schema, "t": t},
            ).one()
            out[t] = {"heap": heap, "total": total}
    return out


# docs/scaling.md: flux_traces made a table partitioned by day on ``ts``, its rows so far the
# first partition. The primary key must include the partition key: (seq, ts), not (seq).
PARTITION_SQL = """
ALTER TABLE flux_traces RENAME TO flux_traces_before;
ALTER INDEX flux_traces_pkey RENAME TO flux_traces_before_pkey;
ALTER INDEX ix_flux_traces_run RENAME TO ix_flux_traces_before_run;
ALTER INDEX ix_flux_traces_workflow_type RENAME TO ix_flux_traces_before_workflow_type;
ALTER INDEX ix_flux_traces_status RENAME TO ix_flux_traces_before_status;
CREATE TABLE flux_traces (LIKE flux_traces_before INCLUDING DEFAULTS, PRIMARY KEY (seq, ts))
    PARTITION BY RANGE (ts);
ALTER SEQUENCE flux_traces_seq_seq OWNED BY flux_traces.seq;
CREATE INDEX ix_flux_traces_run ON flux_traces (run_id, seq);
CREATE INDEX ix_flux_traces_workflow_type ON flux_traces (workflow, type);
CREATE INDEX ix_flux_traces_status ON flux_traces (status);
ALTER TABLE flux_traces_before DROP CONSTRAINT flux_traces_before_pkey;
ALTER TABLE flux_traces ATTACH PARTITION flux_traces_before
    FOR VALUES FROM (MINVALUE) TO ('{today} 00:00+00');
CREATE TABLE flux_traces_{day1} PARTITION OF flux_traces
    FOR VALUES FROM ('{today} 00:00+00') TO ('{tomorrow} 00:00+00');
CREATE TABLE flux_traces_{day2} PARTITION OF flux_traces
    FOR VALUES FROM ('{tomorrow} 00:00+00') TO ('{after} 00:00+00');
"""


def partition_sql() -> str:
    from datetime import UTC, datetime, timedelta

    d = [datetime.now(UTC).date() + timedelta(days=i) for i in range(3)]
    return PARTITION_SQL.format(
        today=d[0],
        tomorrow=d[1],
        after=d[2],
        day1=d[0].strftime("%Y%m%d"),
        day2=d[1].strftime("%Y%m%d"),
    )


def make_schema(admin: sa.Engine, partitioned: bool = False) -> tuple[str, str]:
    schema = f"flux_scaling_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG}?options=-csearch_path%3D{schema}"
    storage = SqlStorage(url)
    storage.init()
    storage.close()
    if partitioned:
        with admin.begin() as conn:
            conn.execute(sa.text(f'SET LOCAL search_path = "{schema}"'))
            conn.exec_driver_sql(partition_sql())
    return schema, url


def drop_schema(admin: sa.Engine, schema: str) -> None:
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def step_engine(url: str) -> tuple[FluxEngine, Any]:
    os.environ.setdefault("FLUX_BENCH_REDIS", REDIS)
    from bench import bench_tasks as bt

    engine = FluxEngine(SqlStorage(url))
    engine.register(bt.flux_chain)
    return engine, bt.flux_chain


def one_run(engine: FluxEngine, wf: Any, key: str) -> None:
    """A run as the producer and the step tasks write it (``bench/large_runs.py``)."""
    state = engine._new_run(wf, {"key": key}, "celery", None)
    engine.storage.create_run(state, [])
    for i in range(len(wf.steps)):
        engine.runner.run_step(state.id, i, task_id=uuid.uuid4().hex, worker="b", workflow=wf.name)


def cost(args: argparse.Namespace) -> dict[str, Any]:
    admin = sa.create_engine(PG)
    schema, url = make_schema(admin, args.partitioned)
    key = f"bench:scaling:{uuid.uuid4().hex[:8]}"
    try:
        engine, wf = step_engine(url)
        for _ in range(20):  # warm up: prepared statements
            one_run(engine, wf, key)
        before_sizes = sizes(admin, schema)
        before = snapshot(admin)
        started = time.perf_counter()
        for _ in range(args.runs):
            one_run(engine, wf, key)
        wall = time.perf_counter() - started
        engine.close()  # its backend's last counts reach pg_stat_database at its exit
        after = snapshot(admin)
        after_sizes = sizes(admin, schema)
        with admin.connect() as conn:
            stored = conn.execute(sa.text(f'SELECT count(*) FROM "{schema}".flux_runs')).scalar()
            traces = conn.execute(sa.text(f'SELECT count(*) FROM "{schema}".flux_traces')).scalar()
    finally:
        drop_schema(admin, schema)
        redis.Redis.from_url(REDIS).delete(key)
    d = {k: after[k] - before[k] for k in after}
    steps = args.runs * STEPS
    # The snapshot reads themselves commit (one each, plus the stats query): negligible.
    out: dict[str, Any] = {
        "runs": args.runs,
        "steps": steps,
        "wall_s": round(wall, 2),
        "per_step": {k: round(v / steps, 2) for k, v in d.items()},
        "per_run": {k: round(v / args.runs, 1) for k, v in d.items()},
        "trace_rows_per_run": round(traces / stored, 2),
        "bytes_per_run": {
            t: {
                k: round((after_sizes[t][k] - before_sizes[t][k]) / args.runs)
                for k in ("heap", "total")
            }
            for t in TABLES
        },
        "table_bytes_after": {t: after_sizes[t]["total"] for t in TABLES},
        "stored_runs": stored,
        "partitioned": args.partitioned,
    }
    print(json.dumps(out, indent=2))
    return out


def _client(url: str, seconds: float, start_at: float, q: Any) -> None:
    engine, wf = step_engine(url)
    key = f"bench:scaling:rate:{os.getpid()}"
    for _ in range(5):
        one_run(engine, wf, key)
    while time.time() < start_at:
        time.sleep(0.01)
    runs, deadline = 0, start_at + seconds
    c0 = time.process_time()
    while time.time() < deadline:
        one_run(engine, wf, key)
        runs += 1
    q.put((runs, time.time() - start_at, time.process_time() - c0))
    engine.close()
    redis.Redis.from_url(REDIS).delete(key)


def rate(args: argparse.Namespace) -> dict[str, Any]:
    admin = sa.create_engine(PG)
    results = {}
    for n in [int(x) for x in args.clients.split(",")]:
        schema, url = make_schema(admin)
        try:
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            start_at = time.time() + 8 + n  # spawned clients import and warm up first
            procs = [
                ctx.Process(target=_client, args=(url, args.seconds, start_at, q)) for _ in range(n)
            ]
            for p in procs:
                p.start()
            while time.time() < start_at - 0.3:
                time.sleep(0.05)
            before = snapshot_nowait(admin)
            busy0 = machine_busy()
            got = [q.get(timeout=args.seconds + 120) for _ in procs]
            busy1 = machine_busy()
            for p in procs:
                p.join()
            after = snapshot(admin)
        finally:
            drop_schema(admin, schema)
        runs = sum(g[0] for g in got)
        wall = max(g[1] for g in got)
        row = {
            "clients": n,
            "runs_per_s": round(runs / wall, 1),
            "steps_per_s": round(runs * STEPS / wall, 1),
            "statements_per_s": round(runs * (1 + 2 * STEPS) / wall, 1),
            "commits_per_s (pg_stat_database)": round(
                (after["commits"] - before["commits"]) / wall, 1
            ),
            "wal_kb_per_s": round((after["wal_bytes"] - before["wal_bytes"]) / wall / 1024, 1),
            # the clients' backends exit with them: PostgreSQL's CPU is what the machine
            # spent beyond the clients' (also RabbitMQ's idle ticks, the OS)
            "machine_cores_busy": round((busy1 - busy0) / wall, 2),
            "clients_cores": round(sum(g[2] for g in got) / wall, 2),
        }
        results[str(n)] = row
        print(json.dumps(row), flush=True)
    return results


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / cpu.TICKS


def snapshot_nowait(admin: sa.Engine) -> dict[str, int]:
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return counters(conn)


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is not None:
        return
    try:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def workers(args: argparse.Namespace) -> dict[str, Any]:
    from bench.celery_overhead import start_worker, wait_done
    from fluxcelery.celery.app import build_app
    from fluxcelery.settings import Settings

    admin = sa.create_engine(PG)
    r = redis.Redis.from_url(REDIS, socket_timeout=None)
    results = {}
    for n in [int(x) for x in args.concurrency.split(",")]:
        schema, url = make_schema(admin)
        tag = schema.rsplit("_", 1)[1]
        queue = f"bench_scaling_{tag}"
        env = {
            **os.environ,
            "FLUX_BROKER_URL": AMQP,
            "FLUX_DATABASE_URL": url,
            "FLUX_WORKFLOWS": "bench.bench_tasks",
            "FLUX_QUEUE": queue,
            "PYTHONPATH": str(ROOT),
            "FLUX_TASK_EVENTS": "1" if args.events else "0",
        }
        env.pop("FLUX_TRACE_FILE", None)
        os.environ["FLUX_TASK_EVENTS"] = env["FLUX_TASK_EVENTS"]
        logs = Path(f"/tmp/flux-scaling-{tag}")
        logs.mkdir(parents=True, exist_ok=True)
        from bench import bench_tasks as bt

        engine = FluxEngine(
            storage=SqlStorage(url),
            app=build_app(
                Settings(broker_url=AMQP, database_url=url, celery={"task_default_queue": queue})
            ),
        )
        engine.register(bt.flux_chain)
        worker = start_worker("fluxcelery", queue, env, logs / "worker.log", n)
        groups = cpu.CpuGroups(worker.pid)
        try:
            time.sleep(6 + n)
            key = f"bench:{tag}:warm"
            for _ in range(40):
                engine.start(bt.flux_chain, {"key": key})
            wait_done(r, key, 40)
            used: dict[str, float] = {}
            elapsed, done = 0.0, 0
            before = snapshot(admin)
            for i in range(max(1, args.runs // args.batch)):
                key = f"bench:{tag}:thr:{i}"
                c0 = groups.snapshot()
                started = time.perf_counter()
                for _ in range(args.batch):
                    engine.start(bt.flux_chain, {"key": key})
                wait_done(r, key, args.batch)
                elapsed += time.perf_counter() - started
                done += args.batch
                for g, s in cpu.delta(c0, groups.snapshot()).items():
                    used[g] = used.get(g, 0.0) + s
            stop(worker)  # its backends' last counts reach pg_stat_database at their exit
            after = snapshot(admin)
        finally:
            stop(worker)
            with engine.dispatcher().app.connection_for_write() as conn:
                try:
                    conn.default_channel.queue_delete(queue)
                except Exception:
                    pass
            engine.close()
            drop_schema(admin, schema)
            for k in r.scan_iter(f"bench:{tag}:*"):
                r.delete(k)
        d = {k: after[k] - before[k] for k in after}
        row = {
            "processes": n,
            "runs_per_s": round(done / elapsed, 1),
            "steps_per_s": round(done * STEPS / elapsed, 1),
            "statements_per_s (9 per run)": round(done * (1 + 2 * STEPS) / elapsed, 1),
            # includes the 1.2 s waits of the two snapshots: a lower bound of the rate
            "commits_per_run (pg_stat_database)": round(d["commits"] / done, 2),
            "wal_bytes_per_step": round(d["wal_bytes"] / (done * STEPS)),
            "cpu_ms_per_run": {g: round(s / done * 1000, 2) for g, s in used.items()},
            "cores_busy": round(sum(used.values()) / elapsed, 2),
            "postgres_cores": round(used.get("postgresql", 0.0) / elapsed, 2),
            "postgres_share_of_busy": round(
                used.get("postgresql", 0.0) / max(sum(used.values()), 1e-9), 2
            ),
        }
        results[str(n)] = row
        print(json.dumps(row), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("cost")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--partitioned", action="store_true", help="flux_traces partitioned by day")
    p = sub.add_parser("rate")
    p.add_argument("--clients", default="1,2,4,8")
    p.add_argument("--seconds", type=float, default=10)
    p = sub.add_parser("workers")
    p.add_argument("--concurrency", default="2,4,8")
    p.add_argument("--runs", type=int, default=600)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--events", action="store_true", help="task events on (Flower)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = {"cost": cost, "rate": rate, "workers": workers}[args.mode](args)
    path = Path(args.json or f"bench/results/scaling_{args.mode}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
