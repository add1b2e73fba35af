"""``fluxcelery show`` draws a run's steps as an indented tree (SPEC section 11): a
parallel's branches under it, each branch's steps under its name, a for_each's items under
it in item order (not at the end where they are stored), and with many items the first and
the notable ones plus a line counting the others. At 80 and 120 columns every line fits and
no step name is cut; ``--json`` stays the full, flat list. Runs live in ``MemoryStorage``
behind an engine handed to the CLI (no service)."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from parallel_trip import EMAILS, trip
from rich.cells import cell_len
from rich.console import Console

from fluxcelery import FluxEngine, MemoryStorage, RunState, RunStatus, StepState, StepStatus
from fluxcelery.cli import cli
from fluxcelery.cli.context import Cli
from fluxcelery.cli.render import steps_table

ENV: dict[str, str | None] = {
    "FLUX_BROKER_URL": "memory://",
    "FLUX_DATABASE_URL": None,
    "FLUX_WORKFLOWS": None,
    "FLUX_TRACE_FILE": None,
}


@pytest.fixture
def engine() -> Iterator[FluxEngine]:
    engine = FluxEngine(storage=MemoryStorage())
    yield engine
    engine.close()


def invoke(engine: FluxEngine, *args: str, columns: int = 200) -> Result:
    env = {**ENV, "COLUMNS": str(columns)}
    return CliRunner().invoke(cli, list(args), env=env, obj=Cli(_engine=engine))


def table_lines(out: str) -> list[str]:
    """The steps table's rows (from the header to the blank line under it), each cut into
    its cells at the header's column separators (the tree draws "│" too)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#"))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    cuts = [i for i, char in enumerate(lines[start]) if char == "┃"]
    return ["\t".join(cells(line, cuts)) for line in lines[start + 2 : end]]


def cells(line: str, cuts: list[int]) -> list[str]:
    bounds = [-1, *cuts, len(line)]
    return [line[a + 1 : b].rstrip() for a, b in itertools.pairwise(bounds)]


def names(rows: list[str]) -> list[str]:
    """The name cell of each row, tree drawing included."""
    return [row.split("\t")[1] for row in rows]


def test_show_draws_branches_and_items_as_a_tree(engine: FluxEngine) -> None:
    run = engine.execute(trip(), {"emails": EMAILS})
    assert run.status == "completed", run.error
    shown = {}
    for columns in (80, 120):
        result = invoke(engine, "show", run.id, columns=columns)
        assert result.exit_code == 0, result.output
        assert max(cell_len(line) for line in result.stdout.splitlines()) <= columns
        rows = table_lines(result.stdout)
        assert names(rows) == [
            " quote",
            " book",
            " ├─ flight",
            " │  └─ reserve-flight",
            " └─ hotel",
            "    ├─ pick-hotel",
            "    └─ reserve-hotel",
            " notify",
            " ├─ notify[0]",
            " ├─ notify[1]",
            " ├─ notify[2]",
            " └─ notify[3]",
            " confirm",
        ], result.stdout
        assert "…" not in "".join(names(rows))  # no step name is cut
        assert all(row.split("\t")[1].startswith(" ") for row in rows)
        shown[columns] = rows
    # Stored indexes on the steps, none on the items (their rows sit at the end).
    assert [row.split("\t")[0].strip() for row in shown[120]] == [
        "0", "1", "", "2", "", "3", "4", "5", "", "", "", "", "6"
    ]  # fmt: skip
    wide = {names([r])[0].split()[-1]: r for r in shown[120]}
    assert "for_each" in wide["notify"] and "4 items completed" in wide["notify"]
    assert "parallel" in wide["book"] and "branch" in wide["hotel"]
    assert "commit" in wide["reserve-hotel"]
    # The trace names an item's events like the table names its rows.
    assert "notify[3]" in invoke(engine, "show", run.id).stdout.split("trace (")[1]
    # --json: the stored rows, flat and in full.
    detail = json.loads(invoke(engine, "show", run.id, "--json").stdout)
    assert [(s["name"], s["item"], s["parent"]) for s in detail["steps"]][-4:] == [
        ("notify", i, 5) for i in range(4)
    ]


def big_run(n: int, failed: set[int]) -> RunState:
    """A stored run whose for_each ``notify`` (row 1) has ``n`` items."""
    steps = [
        StepState("load", 0, status=StepStatus.COMPLETED, attempts=1),
        StepState(
            "notify",
            1,
            "for_each",
            StepStatus.FAILED,
            attempts=1,
            error="item 537 failed: ValueError: bad address",
            traceback="Traceback (most recent call last):\nValueError: bad address",
        ),
        StepState("done", 2),
    ]
    for i in range(n):
        bad = i in failed
        steps.append(
            StepState(
                "notify",
                3 + i,
                status=StepStatus.FAILED if bad else StepStatus.COMPLETED,
                attempts=1,
                error="ValueError: bad address" if bad else None,
                traceback="Traceback (most recent call last):\nValueError: bad address"
                if bad
                else None,
                duration_ms=12,
                item=i,
                parent=1,
            )
        )
    return RunState(
        id="big-run-0001",
        workflow="mail-merge",
        status=RunStatus.FAILED,
        input={},
        data={},
        steps=steps,
        error="item 537 failed: ValueError: bad address",
    )


def test_a_thousand_items_fold_into_one_summary_line(engine: FluxEngine) -> None:
    failed = {537, 612, 700, 801, 901, 950, 990}
    assert engine.storage.create_run(big_run(1000, failed), [])
    for columns in (80, 120):
        result = invoke(engine, "show", "big-run-0001", columns=columns)
        assert result.exit_code == 0, result.output
        assert max(cell_len(line) for line in result.stdout.splitlines()) <= columns
        rows = table_lines(result.stdout)
        assert len(rows) < 25, result.stdout  # not 1000 rows
        assert names(rows) == [
            " load",
            " notify",
            *(f" ├─ notify[{i}]" for i in range(10)),
            *(f" ├─ notify[{i}]" for i in (537, 612, 700, 801, 901)),  # failed: shown
            " └─ … 985 more items",
            " done",
        ]
        more = rows[-2]
        if columns == 120:
            assert "983 completed, 2 failed" in more
            assert "1000 items" not in more
        failed_row = rows[names(rows).index(" ├─ notify[537]")]
        assert "failed" in failed_row and "ValueError" in failed_row
    # Tracebacks: the shown items' ones (not again for the for_each), the others counted.
    out = invoke(engine, "show", "big-run-0001").stdout
    assert out.count("Traceback of step") == 5
    assert "Traceback of step 'notify[537]':" in out and "Traceback of step 'notify':" not in out
    assert "(2 more tracebacks of items: see --json)" in out
    detail = json.loads(invoke(engine, "show", "big-run-0001", "--json").stdout)
    assert len(detail["steps"]) == 1003


def test_a_running_for_each_counts_its_items(engine: FluxEngine) -> None:
    state = big_run(30, set())
    state.status = RunStatus.RUNNING
    state.steps[1].status = StepStatus.RUNNING
    state.steps[1].error = state.steps[1].traceback = None
    for s in state.steps[3 + 20 :]:
        s.status = StepStatus.PENDING
    for s in state.steps[3 + 18 : 3 + 20]:
        s.status = StepStatus.RUNNING
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(steps_table([s.to_dict() for s in state.steps]))
    text = console.export_text()
    assert "30 items: 18 completed, 2 running, 10 pending" in text
    # The running ones are notable: shown though they are past the first ten.
    assert "notify[18]" in text and "notify[19]" in text and "notify[17]" not in text
    assert "… 18 more items" in text and "8 completed, 10 pending" in text
