"""Large runs: many steps, a sizeable input, data that grows at every step.

    python bench/large_runs.py [--steps 20] [--input-kb 48] [--runs 5]

A run of ``--steps`` steps whose input is ``--input-kb`` KB of JSON and whose every step adds
~5 KB to ``ctx.data`` and returns a small output. Measured two ways on PostgreSQL
(FLUX_BENCH_PG): as Celery workers run it (each step task loads and claims the run, runs the
handler, writes the outcome: ``StepRunner.run_step`` called the way a step task calls it,
without the broker), and in-process (``engine.execute``); the in-process run on
MemoryStorage too. Prints the client CPU and wall time per step: what grows with the size of
a run, where the 4-step no-op benchmarks cannot show it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from fluxcelery import FluxEngine, MemoryStorage, SqlStorage, Workflow, workflow

PG = os.environ.get("FLUX_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def grow(ctx: Any) -> dict[str, int]:
    ctx.data.setdefault("log", []).append({"step": ctx.step, "lines": ["x" * 48] * 100})
    return {"entries": len(ctx.data["log"])}


def build(steps: int) -> Workflow:
    wf = workflow(f"bench-large-{steps}")
    for i in range(steps):
        wf = wf.step(f"s{i}", grow)
    return wf


def make_input(kb: int) -> dict[str, Any]:
    item = {"sku": "A000", "qty": 1, "note": "x" * 40}
    per_item = len(json.dumps(item)) + 1
    return {"items": [{**item, "sku": f"A{i:03d}"} for i in range(kb * 1000 // per_item)]}


def as_step_tasks(engine: FluxEngine, wf: Workflow, payload: Any, runs: int) -> tuple[float, ...]:
    """Client CPU and wall ms per step, each step run the way a Celery step task runs it."""

    def one() -> None:
        state = engine._new_run(wf, payload, "celery", None)
        engine.storage.create_run(state, [])
        for i in range(len(wf.steps)):
            engine.runner.run_step(
                state.id, i, task_id=uuid.uuid4().hex, worker="bench", workflow=wf.name
            )

    one()  # warm up: prepared statements
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(runs):
        one()
    steps = runs * len(wf.steps)
    return (
        (time.process_time() - cpu) / steps * 1000,
        (time.perf_counter() - wall) / steps * 1000,
    )


def in_process(engine: FluxEngine, wf: Workflow, payload: Any, runs: int) -> tuple[float, ...]:
    result = engine.execute(wf, payload)
    assert result.ok, result.error
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(runs):
        engine.execute(wf, payload)
    steps = runs * len(wf.steps)
    return (
        (time.process_time() - cpu) / steps * 1000,
        (time.perf_counter() - wall) / steps * 1000,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--input-kb", type=int, default=48)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default="bench/results/large_runs.json")
    args = parser.parse_args()

    wf = build(args.steps)
    payload = make_input(args.input_kb)
    rows: list[dict[str, Any]] = []

    def record(name: str, figures: tuple[float, ...]) -> None:
        cpu_ms, wall_ms = figures
        rows.append({"case": name, "client_cpu_ms_per_step": round(cpu_ms, 2)})
        rows[-1]["wall_ms_per_step"] = round(wall_ms, 2)
        print(f"  {name}: {cpu_ms:.2f} ms CPU, {wall_ms:.2f} ms wall per step", file=sys.stderr)

    memory = FluxEngine(MemoryStorage())
    record("memory, in-process", in_process(memory, wf, payload, args.runs))
    memory.close()

    schema = f"flux_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        pg = FluxEngine(SqlStorage(f"{PG}?options=-csearch_path%3D{schema}"))
        pg.register(wf)
        record("postgresql, in-process", in_process(pg, wf, payload, args.runs))
        record("postgresql, as step tasks", as_step_tasks(pg, wf, payload, args.runs))
        final = pg.list(workflow=wf.name, limit=1)[0]
        data_kb = len(json.dumps(final.data)) // 1000
        pg.close()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    input_kb = len(json.dumps(payload)) // 1000
    print(f"\n{args.steps} steps, input {input_kb} KB, data growing to {data_kb} KB by the end")
    print(f"{'case':<28}{'client CPU ms/step':>20}{'wall ms/step':>14}")
    for row in rows:
        print(f"{row['case']:<28}{row['client_cpu_ms_per_step']:>20}{row['wall_ms_per_step']:>14}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"steps": args.steps, "input_kb": input_kb, "data_kb": data_kb, "rows": rows},
            indent=2,
        )
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
