"""Prometheus scrape time on a large store: the metrics of 1,000,000 stored runs.

    python bench/metrics_scrape.py [--runs 1000000] [--scrapes 30] [--events 20000]
                                   [--schema NAME --keep] [--explain]

Fills a PostgreSQL schema of its own (FLUX_BENCH_PG, database ``test``) with ``--runs``
runs, their steps and their trace events (bench/metrics_fill.py: ~10 events a run, 9 %
of the runs not finished for good), then times whole scrapes (``exposition``: the SQL
reads and the text), the way ``fluxcelery metrics`` and ``/api/flux/metrics`` answer one:

- catch-up: every stored event rolled up into the counters once (a store counting from
  its first event; an upgraded one counts from the upgrade on);
- idle: scrapes with no new event between them;
- busy: ``--events`` new trace events before each scrape (20,000: 15 s between scrapes
  at ~130 runs/s), which the scrape rolls up and reads.

Prints wall p50/p95/max per case (target: under 200 ms), the client's CPU time and the
machine's load average (on a shared machine the wall time is mostly waiting), and writes
bench/results/metrics_scrape.json. ``--keep`` leaves the schema (``--schema`` reuses it,
skipping the fill); ``--explain`` prints the plans of the scrape's queries.
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench.metrics_fill import fill  # noqa: E402
from fluxcelery import SqlStorage  # noqa: E402
from fluxcelery.metrics import exposition  # noqa: E402
from fluxcelery.metrics.sql import (  # noqa: E402
    Limits,
    advance,
    events_between,
    pending_since,
    runs_by_status,
)

PG = os.environ.get("FLUX_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# New events between two busy scrapes: copies of stored ones (the same mix of types).
APPEND_SQL = """
INSERT INTO flux_traces (id, ts, run_id, workflow, type, status, step, step_index, kind,
    attempt, duration_ms)
SELECT md5(random()::text), now(), run_id, workflow, type, status, step, step_index, kind,
    attempt, duration_ms
FROM flux_traces WHERE seq > CAST(:start AS bigint) AND seq <= CAST(:start AS bigint) + :n
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def figures(times: list[tuple[float, float]]) -> dict[str, float]:
    """Wall p50/p95/max and the median client CPU (ms) of timed scrapes."""
    ms = sorted(wall * 1000 for wall, _ in times)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(ms[-1], 1),
        "client_cpu_p50_ms": round(statistics.median(cpu * 1000 for _, cpu in times), 1),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }


def scrape(storage: SqlStorage) -> tuple[tuple[float, float], bytes]:
    """One scrape: (wall s, client CPU s), and its body."""
    wall, cpu = time.perf_counter(), time.process_time()
    body, _ = exposition(storage)
    return (time.perf_counter() - wall, time.process_time() - cpu), body


def catch_up(storage: SqlStorage) -> tuple[int, float]:
    """Count every stored event from the start: (events, seconds)."""
    with storage.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM flux_metric_totals"))
        conn.execute(
            sa.text(
                "UPDATE flux_metric_cursor SET counted = 0, settled = 0, seen = 0, seen_at = NULL"
            )
        )
        newest = int(
            conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM flux_traces")).scalar_one()
        )
    limits = Limits(roll=1_000_000)
    started = time.perf_counter()
    counted = 0
    while counted < newest:
        cursor = advance(storage, datetime.now(UTC), limits)
        if cursor is not None and cursor.counted > counted:
            counted = cursor.counted
            took = time.perf_counter() - started
            say(f"  counted {counted:>12,} / {newest:,} events ({took:5.1f} s)")
    return newest, time.perf_counter() - started


def explain(storage: SqlStorage, events: int) -> None:
    """The plans of a scrape's queries (gauges; a busy scrape's events above the cursor)."""
    queries = {
        "runs by status and workflow": runs_by_status(),
        "pending runs, since due": pending_since(datetime.now(UTC)),
    }
    with storage.engine.connect() as conn:
        newest = int(conn.execute(sa.text("SELECT max(seq) FROM flux_traces")).scalar_one())
        queries[f"{events:,} events above the cursor"] = events_between(newest - events, newest)
        for title, query in queries.items():
            compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
            plan = conn.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}")).scalars()
            print(f"\n-- {title}")
            print("\n".join(plan))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--events", type=int, default=20_000, help="new events per busy scrape")
    parser.add_argument("--schema", help="PostgreSQL schema to use (default: a new one)")
    parser.add_argument("--keep", action="store_true", help="leave the schema in place")
    parser.add_argument("--explain", action="store_true", help="print the queries' plans")
    parser.add_argument("--json", default="bench/results/metrics_scrape.json")
    args = parser.parse_args()

    schema = args.schema or f"flux_bench_metrics_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    storage = SqlStorage(f"{PG}?options=-csearch_path%3D{schema}")
    result: dict[str, Any] = {"runs": args.runs, "scrapes": args.scrapes}
    try:
        storage.init()
        with storage.engine.connect() as conn:
            stored = int(conn.execute(sa.text("SELECT count(*) FROM flux_runs")).scalar_one())
        if stored == 0:
            say(f"filling schema {schema} with {args.runs:,} runs")
            started = time.perf_counter()
            fill(storage.engine, args.runs, say=say)
            result["fill_s"] = round(time.perf_counter() - started, 1)
        elif stored != args.runs:
            say(f"schema {schema} holds {stored:,} runs, not {args.runs:,}: use another --schema")
            return 2
        with storage.engine.connect() as conn:
            counts = conn.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM flux_steps), "
                    "(SELECT count(*) FROM flux_traces), (SELECT count(*) FROM flux_runs "
                    "WHERE status NOT IN ('completed', 'cancelled'))"
                )
            ).one()
        result.update(steps=counts[0], events=counts[1], unsettled_runs=counts[2])
        say(f"{args.runs:,} runs, {counts[0]:,} steps, {counts[1]:,} events")

        say("catch-up: counting every stored event")
        events, seconds = catch_up(storage)
        result["catch_up"] = {
            "events": events,
            "s": round(seconds, 1),
            "events_per_s": round(events / seconds),
        }

        scrape(storage)  # warm: connections, plans
        idle: list[tuple[float, float]] = []
        for i in range(args.scrapes):
            took, body = scrape(storage)
            idle.append(took)
            say(f"  idle scrape {i + 1:>3}: {took[0] * 1000:6.1f} ms")
        result["idle"] = figures(idle)
        result["body_bytes"] = len(body)
        result["series"] = sum(
            1 for line in body.splitlines() if line and not line.startswith(b"#")
        )

        busy: list[tuple[float, float]] = []
        with storage.engine.connect() as conn:
            start = int(conn.execute(sa.text("SELECT min(seq) FROM flux_traces")).scalar_one())
        for i in range(args.scrapes):
            with storage.engine.begin() as conn:
                conn.execute(
                    sa.text(APPEND_SQL), {"start": start + i * args.events, "n": args.events}
                )
            took, body = scrape(storage)
            busy.append(took)
            say(f"  busy scrape {i + 1:>3}: {took[0] * 1000:6.1f} ms")
        result["busy"] = {"events_per_scrape": args.events, **figures(busy)}
        if args.explain:
            explain(storage, args.events)
    finally:
        storage.close()
        if not args.keep:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    print(f"\nmetrics scrape, PostgreSQL: {args.runs:,} runs, {result['events']:,} events")
    print(f"  {result['unsettled_runs']:,} runs not finished for good; {result['series']} series")
    catch = result["catch_up"]
    rate = f"{catch['events_per_s']:,}/s"
    print(f"  catch-up: {catch['events']:,} events counted in {catch['s']} s ({rate})")
    print(f"{'case':<40}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'CPU ms':>9}{'load':>7}")
    for case, label in (
        ("idle", "idle (no new events)"),
        ("busy", f"busy ({args.events:,} new events each)"),
    ):
        row = result[case]
        cells = f"{row['p50_ms']:>9}{row['p95_ms']:>9}{row['max_ms']:>9}"
        print(f"{label:<40}{cells}{row['client_cpu_p50_ms']:>9}{row['load_avg_1m']:>7}")
    out = ROOT / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
