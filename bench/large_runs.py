"""Large runs: many steps, a sizeable input, data that grows at every step.

    python bench/large_runs.py [--steps 20] [--input-kb 48] [--runs 5]

A run of ``--steps`` steps whose input is ``--input-kb`` KB of JSON and whose every step adds
~5 KB to ``ctx.data`` and returns a small output.

``--by-position`` measures instead what one step costs by its position in a long run
(``--steps 200``): each step reads the previous step's output from ``ctx.results`` and returns
a 200-byte one, ``ctx.data`` does not grow; every step is run as a step task does, on
PostgreSQL; prints the wall and CPU time of steps 2-4 and of the last three, and the ratio
(issue: step 200 of a 200-step run at most 1.2x step 2). Measured two ways on PostgreSQL
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
import statistics
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


def reads_previous(ctx: Any) -> dict[str, Any]:
    before = ctx.results[f"s{ctx.step_index - 1}"] if ctx.step_index else None
    return {"i": ctx.step_index, "before": before and before["i"], "note": "x" * 200}


def by_position(storage: SqlStorage, steps: int, runs: int) -> dict[str, Any]:
    """Per-step wall and CPU ms at each position, each step run as a step task runs it."""
    wf = workflow(f"bench-position-{steps}")
    for i in range(steps):
        wf = wf.step(f"s{i}", reads_previous)
    engine = FluxEngine(storage)
    engine.register(wf)
    wall: dict[int, list[float]] = {i: [] for i in range(steps)}
    cpu: dict[int, list[float]] = {i: [] for i in range(steps)}
    for r in range(runs + 2):  # the first two warm up (prepared statements)
        state = engine._new_run(wf, {}, "celery", None)
        engine.storage.create_run(state, [])
        for i in range(steps):
            w, c = time.perf_counter(), time.process_time()
            engine.runner.run_step(
                state.id, i, task_id=uuid.uuid4().hex, worker="bench", workflow=wf.name
            )
            if r >= 2:
                wall[i].append((time.perf_counter() - w) * 1000)
                cpu[i].append((time.process_time() - c) * 1000)
        print(f"  run {r + 1}/{runs + 2}", file=sys.stderr)
        final = engine.get(state.id)
        assert final is not None and final.status.value == "completed", final

    def median(d: dict[int, list[float]], positions: range) -> float:
        return statistics.median([x for i in positions for x in d[i]])

    early, late = range(1, 4), range(steps - 3, steps)
    out = {
        "steps": steps,
        "wall_ms_steps_2_4": round(median(wall, early), 3),
        "wall_ms_last_3": round(median(wall, late), 3),
        "cpu_ms_steps_2_4": round(median(cpu, early), 3),
        "cpu_ms_last_3": round(median(cpu, late), 3),
    }
    out["wall_ratio"] = round(out["wall_ms_last_3"] / out["wall_ms_steps_2_4"], 2)
    out["cpu_ratio"] = round(out["cpu_ms_last_3"] / out["cpu_ms_steps_2_4"], 2)
    return out


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
    parser.add_argument("--by-position", action="store_true", help="cost by step position")
    parser.add_argument("--json", default="bench/results/large_runs.json")
    args = parser.parse_args()
    if args.by_position:
        return position_main(args.steps, args.runs)

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


def position_main(steps: int, runs: int) -> int:
    schema = f"flux_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        storage = SqlStorage(f"{PG}?options=-csearch_path%3D{schema}")
        out = by_position(storage, steps, runs)
        storage.close()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    print(f"\n{steps}-step run, each step as a step task (PostgreSQL), ms per step:")
    print(f"{'':8}{'steps 2-4':>12}{'last 3':>12}{'ratio':>8}")
    for kind in ("wall", "cpu"):
        a, b = out[f"{kind}_ms_steps_2_4"], out[f"{kind}_ms_last_3"]
        print(f"{kind:8}{a:>12.3f}{b:>12.3f}{out[f'{kind}_ratio']:>8.2f}")
    path = Path("bench/results/large_runs_by_position.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
