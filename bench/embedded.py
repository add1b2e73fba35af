"""Embedded engine throughput: steps/s for each storage, against a plain loop.

    python bench/embedded.py [--runs 2000] [--sql-runs 500] [--blocks 5]
                             [--json bench/results/embedded.json]

A run is a 4-step workflow of no-op handlers executed with ``engine.execute``. The baseline
calls the same four handlers in a plain Python loop; "engine cost per step" is the
difference. Each backend is timed in blocks: the table shows the median block (what a run
typically gets) and the best (the code's own cost, least disturbed by the machine). SQL
backends write every state change durably: one transaction per step, state and trace rows
together. PostgreSQL is measured when reachable (FLUX_BENCH_PG).

With PostgreSQL, the same workflow written with DBOS Transact (``bench/dbos_side.py``: a
``@DBOS.workflow()`` calling four ``@DBOS.step()`` no-ops, its system database a bench-only
database on the same server) is timed the same way, right after fluxcelery's PostgreSQL
side, and the ratio of the two is printed. It needs ``dbos`` (``pip install -e ".[bench]"``)
and is skipped without it.
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
from collections.abc import Callable
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


def flux_run(engine: FluxEngine) -> Callable[[], None]:
    """One run of ``WF`` on ``engine``, to its end."""

    def run() -> None:
        result = engine.execute(WF, {})
        assert result.ok, result.error

    return run


def measure(run: Callable[[], None], runs: int, blocks: int) -> list[float]:
    """Steps/s of each of ``blocks`` consecutive blocks of ``runs // blocks`` calls of
    ``run`` (one 4-step run each). On a shared machine one long block mixes the code's cost
    with whatever else ran meanwhile; the best block shows the code's, the median what a
    user typically gets."""
    for _ in range(min(50, runs)):  # warm up: imports, caches, prepared statements
        run()
    per_block = max(1, runs // blocks)
    rates = []
    for _ in range(blocks):
        started = time.perf_counter()
        for _ in range(per_block):
            run()
        rates.append(per_block * len(WF.steps) / (time.perf_counter() - started))
    return rates


def pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


DBOS_ROW = "dbos (postgresql)"


def record_dbos(record: Callable[[str, Callable[[], None], int], None], runs: int) -> None:
    """Time the DBOS side like fluxcelery's PostgreSQL side, or say why it is skipped."""
    try:
        from bench.dbos_side import DbosSide
    except ImportError as exc:
        print(
            f"  {DBOS_ROW}: skipped, {exc.name or 'dbos'} is not installed "
            '(pip install -e ".[bench]")',
            file=sys.stderr,
        )
        return
    with DbosSide(PG) as side:
        record(DBOS_ROW, side.run, runs)


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

    def record(name: str, run: Callable[[], None], runs: int) -> None:
        print(f"  {name} ...", end="", flush=True, file=sys.stderr)
        rates = measure(run, runs, args.blocks)
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

    def record_flux(name: str, engine: FluxEngine, runs: int) -> None:
        try:
            record(name, flux_run(engine), runs)
        finally:
            engine.close()

    record_flux("memory", FluxEngine(MemoryStorage()), args.runs)
    record_flux(
        "memory + NDJSON trace",
        FluxEngine(MemoryStorage(), trace=[JsonFileTraceSink(tmp / "trace.ndjson")]),
        args.runs,
    )
    record_flux("sqlite (WAL)", FluxEngine(SqlStorage(f"sqlite:///{tmp}/bench.db")), args.sql_runs)
    if pg_available():
        import sqlalchemy as sa

        schema = f"flux_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = f"{PG}?options=-csearch_path%3D{schema}"
            record_flux("postgresql", FluxEngine(SqlStorage(url)), args.sql_runs)
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        record_dbos(record, args.sql_runs)
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
    by_name = {row["backend"]: row for row in rows}
    ratios = {}
    if "postgresql" in by_name and DBOS_ROW in by_name:
        flux, dbos = by_name["postgresql"], by_name[DBOS_ROW]
        ratios = {
            "postgresql_over_dbos": round(flux["steps_per_s"] / dbos["steps_per_s"], 2),
            "best_block_postgresql_over_dbos": round(
                flux["best_block_steps_per_s"] / dbos["best_block_steps_per_s"], 2
            ),
        }
        print(
            f"\nfluxcelery on PostgreSQL / DBOS: {ratios['postgresql_over_dbos']}x steps/s "
            f"(median blocks), {ratios['best_block_postgresql_over_dbos']}x (best blocks)"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "plain_loop_us_per_step": round(base * 1e6, 3),
                "rows": rows,
                "ratios": ratios,
                "python": sys.version.split()[0],
            },
            indent=2,
        )
    )
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
