"""Embedded engine throughput: steps/s for each storage, against a plain loop.

    python bench/embedded.py [--runs 2000] [--sql-runs 500] [--blocks 5]
                             [--json bench/results/embedded.json]

A run is a 4-step workflow of no-op handlers executed with ``engine.execute``. The baseline
calls the same four handlers in a plain Python loop; "engine cost per step" is the
difference. Each backend is timed in blocks: the table shows the median block (what a run
typically gets) and the best (the code's own cost, least disturbed by the machine). SQL
backends write every state change durably: one transaction per step, state and trace rows
together. PostgreSQL is measured when reachable (FLUX_BENCH_PG).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fluxcelery import FluxEngine, JsonFileTraceSink, MemoryStorage, SqlStorage, workflow

PG = os.environ.get("FLUX_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def noop(ctx: Any) -> None:
    return None


WF = workflow("bench-embedded").step("a", noop).step("b", noop).step("c", noop).step("d", noop)


def plain_loop(runs: int) -> float:
    """Seconds per step when the same handlers are called directly."""
    handlers = [s.handler for s in WF.steps]
    started = time.perf_counter()
    for _ in range(runs):
        for h in handlers:
            h(None)
    return (time.perf_counter() - started) / (runs * len(handlers))


def measure(engine: FluxEngine, runs: int, blocks: int) -> list[float]:
    """Steps/s of each of ``blocks`` consecutive blocks of ``runs // blocks`` runs. On a
    shared machine one long block mixes the code's cost with whatever else ran meanwhile;
    the best block shows the code's, the median what a user typically gets."""
    for _ in range(min(50, runs)):  # warm up: imports, caches, prepared statements
        engine.execute(WF, {})
    per_block = max(1, runs // blocks)
    rates = []
    for _ in range(blocks):
        started = time.perf_counter()
        for _ in range(per_block):
            result = engine.execute(WF, {})
        rates.append(per_block * len(WF.steps) / (time.perf_counter() - started))
        assert result.ok, result.error
    return rates


def pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs for in-memory backends")
    parser.add_argument("--sql-runs", type=int, default=500, help="runs for SQL backends")
    parser.add_argument("--blocks", type=int, default=5, help="blocks each backend is timed in")
    parser.add_argument("--json", default="bench/results/embedded.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="flux-bench-"))
    rows: list[dict[str, Any]] = []
    base = plain_loop(args.runs * 10)

    def record(name: str, engine: FluxEngine, runs: int) -> None:
        print(f"  {name} ...", end="", flush=True, file=sys.stderr)
        rates = measure(engine, runs, args.blocks)
        steps_s = statistics.median(rates)
        rows.append(
            {
                "backend": name,
                "steps_per_s": round(steps_s),
                "best_block_steps_per_s": round(max(rates)),
                "runs": runs,
                "blocks": args.blocks,
                "engine_cost_us_per_step": round((1 / steps_s - base) * 1e6, 1),
            }
        )
        print(f" {steps_s:,.0f} steps/s (best block {max(rates):,.0f})", file=sys.stderr)
        engine.close()

    record("memory", FluxEngine(MemoryStorage()), args.runs)
    record(
        "memory + NDJSON trace",
        FluxEngine(MemoryStorage(), trace=[JsonFileTraceSink(tmp / "trace.ndjson")]),
        args.runs,
    )
    record("sqlite (WAL)", FluxEngine(SqlStorage(f"sqlite:///{tmp}/bench.db")), args.sql_runs)
    if pg_available():
        import sqlalchemy as sa

        schema = f"flux_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = f"{PG}?options=-csearch_path%3D{schema}"
            record("postgresql", FluxEngine(SqlStorage(url)), args.sql_runs)
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    else:
        print("  postgresql: not reachable on 127.0.0.1:5432, skipped", file=sys.stderr)

    print()
    print(f"plain loop: {1 / base:,.0f} steps/s ({base * 1e6:.2f} us per step)")
    print(f"{'backend':<24}{'steps/s':>12}{'best block':>12}{'engine cost/step':>20}")
    for row in rows:
        print(
            f"{row['backend']:<24}{row['steps_per_s']:>12,}{row['best_block_steps_per_s']:>12,}"
            f"{row['engine_cost_us_per_step']:>17.1f} us"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "plain_loop_us_per_step": round(base * 1e6, 3),
                "rows": rows,
                "python": sys.version.split()[0],
            },
            indent=2,
        )
    )
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
