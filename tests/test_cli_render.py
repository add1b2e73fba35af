"""What the ``fluxcelery`` tables and lines look like in a terminal: they fit its width
(80 and 120 columns), show short run ids, keep each cell on one line, and never pass a
control character from storage to the terminal. Runs live in ``MemoryStorage`` behind an
engine handed to the CLI, so these tests need no service."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from rich.cells import cell_len
from rich.console import Console

from fluxcelery import (
    FluxEngine,
    MemoryStorage,
    NonRetryableError,
    RunState,
    RunStatus,
    StepContext,
    StepState,
    wait_for,
    workflow,
)
from fluxcelery.cli import cli
from fluxcelery.cli.context import Cli
from fluxcelery.cli.render import runs_table, short_id, terminal_safe

ENV: dict[str, str | None] = {
    "FLUX_BROKER_URL": "memory://",
    "FLUX_DATABASE_URL": None,
    "FLUX_WORKFLOWS": None,
    "FLUX_TRACE_FILE": None,
    "COLUMNS": "200",
}
LONG_NAME = "settle-the-quarterly-supplier-invoices-across-every-regional-warehouse"
LONG_ERROR = (
    "SupplierLedgerError: the ledger of supplier ACME-EU-0042 rejected invoice 2026-11-0815\n"
    "  because its currency EUR differs from the purchase order's currency USD;\n"
    "  fix the purchase order and retry"
)
ESCAPES = "red \x1b[31malert\x1b[0m\rover"
FAKE_TRACEBACK = (
    'Traceback (most recent call last):\n  File "flows.py", line 12, in charge\n'
    "    raise NonRetryableError(msg)\nNonRetryableError: bad \x1b[2Jclear\rwipe"
)


def ledger(ctx: StepContext) -> None:
    raise NonRetryableError(LONG_ERROR)


def note(ctx: StepContext) -> None:
    ctx.data["note"] = ESCAPES


def noisy(ctx: StepContext) -> None:
    raise NonRetryableError(f"declined: {ESCAPES}")


WIDE = workflow(LONG_NAME).step("reconcile-the-ledger-entries", ledger)
OK = workflow("cli-render-ok").step("noop", lambda ctx: {"done": True})
WAITING = workflow("cli-render-waiting").step("await-approval", lambda ctx: wait_for("ok"))
NOISY = workflow("cli-render-noisy").step("note", note).step("charge", noisy)


class TracebackStorage(MemoryStorage):
    """Memory storage whose failed steps carry a traceback, whether or not the engine
    stores one yet."""

    def load_run(self, run_id: str) -> RunState | None:
        state = super().load_run(run_id)
        for step in state.steps if state is not None else []:
            if step.status.value == "failed" and not step.traceback:
                step.traceback = FAKE_TRACEBACK
        return state


@pytest.fixture
def engine() -> Iterator[FluxEngine]:
    engine = FluxEngine(storage=TracebackStorage())
    yield engine
    engine.close()


def invoke(engine: FluxEngine, *args: str, columns: int = 200) -> Result:
    env = {**ENV, "COLUMNS": str(columns)}
    return CliRunner().invoke(cli, list(args), env=env, obj=Cli(_engine=engine))


def widest(text: str) -> int:
    return max((cell_len(line) for line in text.splitlines()), default=0)


def shown_prefix(text: str, output: str) -> int:
    """How many leading characters of ``text`` (on one line) the output shows."""
    flat = terminal_safe(text)
    return max((n for n in range(1, len(flat) + 1) if flat[:n] in output), default=0)


# -- pure pieces --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "multiline", "shown"),
    [
        ("plain text", False, "plain text"),
        ("a\x1b[31mb", False, "a\\x1b[31mb"),
        ("progress\rdone", False, "progress\\rdone"),
        ("first line\n  second line\r\nthird", False, "first line second line third"),
        ("tab\there", False, "tab here"),
        ("bell\x07 nul\x00 del\x7f", False, "bell\\x07 nul\\x00 del\\x7f"),
        ("csi\x9b2J nel\x85", False, "csi\\x9b2J nel\\x85"),
        ("\u202eevil\u2066", False, "\\u202eevil\\u2066"),
        ("é ✓ 名前", False, "é ✓ 名前"),
        (None, False, ""),
        ("a\r\nb\x1b[0m\n\tc\rd", True, "a\nb\\x1b[0m\n    c\\rd"),
    ],
)
def test_terminal_safe(raw: str | None, multiline: bool, shown: str) -> None:
    assert terminal_safe(raw, multiline=multiline) == shown


@pytest.mark.parametrize(
    ("run_id", "short"),
    [
        ("3f2a9c1e-0d5b-4a51-9a57-2f6f1c0e8b11", "3f2a9c1e"),
        ("order-A-1001", "order-A-1001"),
        ("msg-" + "ab" * 20, "msg-abababa…"),
        ("x", "x"),
    ],
)
def test_short_id(run_id: str, short: str) -> None:
    assert short_id(run_id) == short


def test_a_table_never_exceeds_the_console_width() -> None:
    row = {
        "id": "3f2a9c1e-0d5b-4a51-9a57-2f6f1c0e8b11",
        "workflow": LONG_NAME,
        "version": "12",
        "status": "compensation_failed",
        "current_step": "x" * 90,
        "steps_done": 3,
        "steps_total": 12,
        "created_at": "2026-12-02T09:14:03.120000+00:00",
        "duration_ms": 3_600_000,
        "error": LONG_ERROR,
    }
    for width in (40, 60, 80, 100, 120, 160):
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(runs_table([row] * 3))
        text = console.export_text()
        assert widest(text) <= width, (width, text)
        assert len(text.splitlines()) == 5, text  # header, rule, three rows: one line each


# -- the commands at 80 and 120 columns ---------------------------------------------------
def test_runs_and_trace_list_fit_80_and_120_columns(engine: FluxEngine) -> None:
    failed = engine.execute(WIDE).id
    done = engine.execute(OK).id
    waiting = engine.execute(WAITING).id
    error = engine.get(failed).error  # type: ignore[union-attr]
    assert error and LONG_ERROR in error
    shown: dict[int, dict[str, int]] = {}
    for columns in (80, 120):
        runs = invoke(engine, "runs", columns=columns)
        assert runs.exit_code == 0, runs.output
        trace = invoke(engine, "trace", "list", columns=columns)
        assert trace.exit_code == 0, trace.output
        show = invoke(engine, "show", failed[:8], columns=columns)
        assert show.exit_code == 0, show.output
        for result in (runs, trace, show):
            assert widest(result.stdout) <= columns, result.stdout
            assert "…" in result.stdout  # the long name and error are cut, not wrapped
        for result in (runs, trace):
            assert "  because its currency" not in result.stdout  # errors on one line
        assert "\n  because its currency" in show.stdout  # show's header has it all
        for run_id in (failed, done, waiting):
            assert run_id[:8] in runs.stdout and run_id not in runs.stdout
        assert failed[:8] in trace.stdout and failed not in trace.stdout
        assert failed in show.stdout  # show has the full id
        shown[columns] = {
            "error": shown_prefix(error, runs.stdout),
            "name": shown_prefix(LONG_NAME, runs.stdout),
            "trace error": shown_prefix(error, trace.stdout),
        }
        assert "await-ap" in runs.stdout
    for what in shown[80]:
        assert shown[120][what] > shown[80][what] >= 5, shown
    full = json.loads(invoke(engine, "runs", "--json").stdout)["runs"]
    assert {r["id"] for r in full} == {failed, done, waiting}  # --json keeps whole ids
    assert next(r for r in full if r["id"] == failed)["error"] == error


def test_text_from_storage_never_reaches_the_terminal_raw(engine: FluxEngine) -> None:
    run_id = engine.execute(NOISY).id
    odd = RunState(
        id="odd\x1b[2Jrun-0001",
        workflow="evil\x1b]0;title\x07wf",
        status=RunStatus.FAILED,
        input={"k": "\x1b[5mblink\x9b"},
        data={},
        steps=[StepState(name="st\x1bep", index=0, kind="step", error="e\rrr")],
        error="boom \x1b[31mred\r",
    )
    assert engine.storage.create_run(odd, [])
    outputs = {
        "runs": invoke(engine, "runs"),
        "show": invoke(engine, "show", run_id[:8]),
        "show odd": invoke(engine, "show", "odd\x1b[2Jrun-0001"),
        "trace list": invoke(engine, "trace", "list"),
        "missing": invoke(engine, "show", "gone\x1b[2J"),
        "retry": invoke(engine, "retry", run_id),  # fails again: an error line with it
    }
    for name, result in outputs.items():
        text = result.stdout + result.stderr
        for raw in ("\x1b", "\r", "\x07", "\x9b"):
            assert raw not in text, (name, raw, text)
    assert "\\x1b[31malert\\x1b[0m\\rover" in outputs["show"].stdout  # data and error
    assert "declined: red \\x1b[31malert" in outputs["runs"].stdout
    assert "evil\\x1b]0;title\\x07wf" in outputs["runs"].stdout
    assert "st\\x1bep" in outputs["show odd"].stdout
    assert '"\\u001b[5mblink\\x9b"' in outputs["show odd"].stdout  # JSON, then escaped
    assert "declined: red \\x1b[31malert" in outputs["trace list"].stdout
    assert outputs["missing"].stderr == "error: Run not found: gone\\x1b[2J\n"
    assert outputs["retry"].exit_code == 1
    assert "\\x1b[31malert\\x1b[0m\\rover" in outputs["retry"].stderr
    # --json is JSON: the text as stored, escaped the JSON way.
    detail = json.loads(invoke(engine, "show", run_id, "--json").stdout)
    assert detail["data"]["note"] == ESCAPES and ESCAPES in detail["error"]


def test_show_prints_the_failed_steps_traceback(engine: FluxEngine) -> None:
    run_id = engine.execute(NOISY).id
    state = engine.get(run_id)
    assert state is not None
    traceback = state.step("charge").traceback
    assert traceback
    shown = invoke(engine, "show", run_id)
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "Traceback of step 'charge':" in out
    steps_at, traceback_at, trace_at = (
        out.index("attempts"),
        out.index("Traceback of step 'charge':"),
        out.index("trace ("),
    )
    assert steps_at < traceback_at < trace_at  # under the steps table, above the trace
    for line in terminal_safe(traceback, multiline=True).splitlines():
        assert line.rstrip() in out
    assert "\x1b" not in out and "\r" not in out
    steps = json.loads(invoke(engine, "show", run_id, "--json").stdout)["steps"]
    step = next(s for s in steps if s["name"] == "charge")
    assert step["traceback"] == traceback


def test_no_traceback_section_without_one(engine: FluxEngine) -> None:
    run_id = engine.execute(OK).id
    out = invoke(engine, "show", run_id).stdout
    assert "Traceback" not in out
