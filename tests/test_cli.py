"""The ``fluxcelery`` command, against SQLite and PostgreSQL.

Most tests drive the click group in-process with ``CliRunner`` (fast, and the error policy
is the same as in a shell); a few run the installed console script and a real
``celery worker`` on RabbitMQ. Every bad-input case asserts the same contract: one
``error:`` line on stderr, exit 1 or 2, no traceback, and nothing changed in the store."""

from __future__ import annotations

import json
import os
import signal as signals
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_workflows import ORDER_EVENTS, approval, order
from click.testing import CliRunner, Result
from helpers import AMQP_URL, require_service

from fluxcelery import FluxEngine, RunState, RunStatus, SqlStorage, StepState
from fluxcelery.cli import cli
from fluxcelery.cli.doctor import check_guest_account
from fluxcelery.storage.migrate import head_revision

TESTS = Path(__file__).parent
ROOT = TESTS.parent
BIN = Path(sys.executable).parent
FLUXCELERY = str(BIN / "fluxcelery")
CELERY = str(BIN / "celery")
CLOSED_BROKER = "amqp://guest:guest@127.0.0.1:1//"
#: The environment every in-process invocation sees: embedded broker, nothing inherited.
BASE_ENV: dict[str, str | None] = {
    "FLUX_BROKER_URL": "memory://",
    "FLUX_DATABASE_URL": None,
    "FLUX_WORKFLOWS": None,
    "FLUX_TRACE_FILE": None,
    "FLUX_DEMO_APPROVE": None,
    "COLUMNS": "200",
}

Invoke = Callable[..., Result]


def invoke_cli(
    *args: str, db: str | None = None, env: dict[str, str | None] | None = None, **kw: Any
) -> Result:
    prefix = ["--workflows", "cli_workflows"] + (["--db", db] if db else [])
    return CliRunner().invoke(cli, [*prefix, *args], env={**BASE_ENV, **(env or {})}, **kw)


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def assert_one_error(result: Result, code: int, fragment: str) -> None:
    """The error contract: exit code, exactly one ``error:`` line naming the problem."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    assert fragment in lines[0], lines[0]
    # No crash dump (a step's stored traceback may be in the --json document on stdout).
    assert "Traceback" not in result.stderr


@pytest.fixture
def store(sql_storage: SqlStorage) -> Iterator[FluxEngine]:
    """An engine on the same database the CLI is pointed at, to set up and inspect runs."""
    engine = FluxEngine(storage=sql_storage)
    yield engine


@pytest.fixture
def run(sql_storage: SqlStorage) -> Invoke:
    """``run("show", id)``: the CLI with ``--db`` on this test's database."""

    def call(*args: str, **kw: Any) -> Result:
        return invoke_cli(*args, db=sql_storage.url, **kw)

    return call


def snapshot(engine: FluxEngine, run_id: str | None = None) -> tuple[Any, ...]:
    """What must not change when a command fails: the run's version, the trace count, the
    number of runs."""
    version = None
    if run_id is not None:
        state = engine.get(run_id)
        version = state.version if state is not None else None
    return version, len(engine.traces(limit=None)), len(engine.list(limit=None))


# -- reading and running ------------------------------------------------------------------
def test_demo_on_each_database(
    run: Invoke, store: FluxEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the demo's trace file goes to ./.flux/
    report = ok_json(run("demo", "--json"))
    assert report["ok"] is True
    assert [r["status"] for r in report["runs"]] == ["completed", "rolled_back"]
    completed, declined = report["runs"]
    assert [s["status"] for s in completed["steps"]][1] == "skipped"
    assert completed["steps"][3]["attempts"] == 2
    assert "step:retry" in [e["type"] for e in completed["traces"]]
    assert declined["steps"][2]["status"] == "compensated"
    assert declined["input"]["card"] == "***"
    assert {r.id for r in store.list()} == {completed["id"], declined["id"]}
    trace_file = tmp_path / ".flux" / "trace.ndjson"
    assert len(trace_file.read_text().splitlines()) == len(store.traces(limit=None))


def test_run_local_then_runs_show_and_trace(run: Invoke, store: FluxEngine) -> None:
    result = ok_json(
        run("run", "cli-order", "--input", '{"n": 2, "password": "hunter2"}', "--local", "--json")
    )
    run_id = result["id"]
    assert result["status"] == "completed"
    assert result["results"]["total"] == {"total": 2}
    assert result["input"]["password"] == "***"

    listing = ok_json(run("runs", "--json"))
    assert [r["id"] for r in listing["runs"]] == [run_id]
    assert listing["counts"]["completed"] == 1
    assert ok_json(run("runs", "--status", "failed,rolled_back", "--json"))["runs"] == []
    assert ok_json(run("runs", "--workflow", "cli-approval", "--json"))["runs"] == []

    detail = ok_json(run("show", run_id, "--json"))
    assert [s["status"] for s in detail["steps"]] == ["completed"] * 4
    assert detail["definition"]["definition_hash"] == order.definition_hash
    assert detail["input"]["password"] == "***"
    assert [e["type"] for e in detail["traces"]] == ORDER_EVENTS

    events = ok_json(run("trace", "list", "--run", run_id, "--json"))
    assert [e["type"] for e in events] == ORDER_EVENTS
    completes = ok_json(run("trace", "list", "--type", "step:complete", "--json"))
    assert [e["step"] for e in completes] == ["add", "record", "gated", "total"]
    latest = ok_json(run("trace", "list", "--run", run_id, "--limit", "3", "--json"))
    assert [e["type"] for e in latest] == ORDER_EVENTS[-3:]  # the latest, in time order
    first = ok_json(run("trace", "list", "--run", run_id, "--limit", "3", "--oldest", "--json"))
    assert [e["type"] for e in first] == ORDER_EVENTS[:3]
    assert ok_json(run("trace", "list", "--status", "failed", "--json")) == []

    # The readable forms: tables with short ids and the names, `show` with the full id,
    # and no secret anywhere.
    table = run("runs")
    assert table.exit_code == 0 and "completed 1" in table.stdout
    assert run_id[:8] in table.stdout and run_id not in table.stdout
    shown = run("show", run_id[:8])
    assert shown.exit_code == 0
    for text in (run_id, "cli-order", "record", "commit", "workflow:complete"):
        assert text in shown.stdout
    assert "hunter2" not in shown.stdout + table.stdout
    listed = run("trace", "list", "--workflow", "cli-order")
    assert listed.exit_code == 0 and "step:complete" in listed.stdout
    assert run_id[:8] in listed.stdout and run_id not in listed.stdout


def test_failed_run_exits_1_and_retry_completes_it(
    run: Invoke, store: FluxEngine, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    failed = run(
        "run", "cli-order", "--input", json.dumps({"gate": str(gate)}), "--local", "--json"
    )
    assert_one_error(failed, 1, "ended rolled_back")
    run_id = json.loads(failed.stdout)["id"]
    state = store.get(run_id)
    assert state is not None and state.status == RunStatus.ROLLED_BACK
    assert state.step("record").status.value == "compensated"

    # Still closed: the retry runs here and the run rolls back again (exit 1).
    assert_one_error(run("retry", run_id), 1, "ended rolled_back")
    gate.write_text("open")
    retried = ok_json(run("retry", run_id, "--json"))
    assert retried["status"] == "completed"
    assert [s["status"] for s in retried["steps"]] == ["completed"] * 4

    before = snapshot(store, run_id)
    assert_one_error(run("retry", run_id), 1, "completed -> running")
    assert snapshot(store, run_id) == before


def test_signal_then_cancel(run: Invoke, store: FluxEngine, tmp_path: Path) -> None:
    waiting = ok_json(run("run", "cli-approval", "--local", "--json"))
    assert waiting["status"] == "suspended"
    run_id = waiting["id"]

    payload = tmp_path / "approval.json"
    payload.write_text('{"by": "ann", "token": "s3cret"}')
    done = ok_json(run("signal", run_id, "approval", "--payload", f"@{payload}", "--json"))
    assert done["status"] == "completed"
    assert done["results"]["after"] == {"approved_by": "ann"}
    assert done["results"]["approve"]["token"] == "***"

    other = ok_json(run("run", "cli-approval", "--local", "--json"))["id"]
    cancelled = ok_json(run("cancel", other, "--reason", "customer asked", "--json"))
    assert cancelled["status"] == "cancelled"
    assert "customer asked" in cancelled["error"]
    before = snapshot(store, other)
    assert_one_error(run("cancel", other), 1, "cancelled -> cancelled")
    assert_one_error(run("signal", other, "approval"), 1, "not suspended")
    assert snapshot(store, other) == before


def test_cancel_compensate_undoes_the_booking(run: Invoke, store: FluxEngine) -> None:
    waiting = ok_json(run("run", "cli-trip", "--local", "--json"))
    assert waiting["status"] == "suspended"
    cancelled = ok_json(run("cancel", waiting["id"], "--compensate", "--json"))
    assert cancelled["status"] == "cancelled"
    state = store.get(waiting["id"])
    assert state is not None and state.step("book").status.value == "compensated"
    assert state.cancel_reason == "cancelled from the CLI"
    shown = run("cancel", waiting["id"])
    assert_one_error(shown, 1, "cancelled -> cancelled")


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["show", "{missing}"], 1, "Run not found: {missing}"),
        (["retry", "{missing}"], 1, "Run not found: {missing}"),
        (["cancel", "{missing}"], 1, "Run not found: {missing}"),
        (["signal", "{missing}", "approval"], 1, "Run not found: {missing}"),
        (["signal", "{run}", "approvel"], 1, "waiting for signal 'approval', received 'approvel'"),
        (
            ["signal", "{run}", "approval", "--payload", "[not json"],
            2,
            "--payload is not valid JSON",
        ),
        (["signal", "{run}", "approval", "--payload", "@/nonexistent/p.json"], 2, "cannot read"),
        (["retry", "{run}"], 1, "suspended -> running"),
        (["run", "no-such-workflow", "--local"], 1, "Unknown workflow: 'no-such-workflow'"),
        (["--broker", CLOSED_BROKER, "run", "cli-order"], 1, "cannot connect to broker"),
        (["run", "cli-order", "--input", "[1, 2", "--local"], 2, "--input is not valid JSON"),
        (
            ["run", "demo-order", "--input", '{{"order_id": 7}}', "--local"],
            2,
            "Invalid input for workflow 'demo-order'",
        ),
        (
            ["run", "cli-order", "--input", "[1, 2]"],
            2,
            "--input must be a JSON object, got an array",
        ),
        (["run", "cli-order", "--input", '"x"', "--local"], 2, "got a string"),
        (["run", "cli-order", "--input", "null", "--local"], 2, "got null"),
        (["show", "{run_prefix}"], 1, "Run not found: {run_prefix}"),
        (["runs", "--status", "finished"], 2, "'finished'"),
        (["runs", "--limit", "0"], 2, "--limit"),
        (["trace", "list", "--type", "step:done"], 2, "'step:done'"),
        (["show"], 2, "Missing argument 'RUN_ID'"),
        (["nope"], 2, "No such command 'nope'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_bad_input_is_one_line_and_changes_nothing(
    run: Invoke, store: FluxEngine, args: list[str], code: int, fragment: str
) -> None:
    run_id = ok_json(run("run", "cli-approval", "--local", "--json"))["id"]
    missing = str(uuid.uuid4())
    names = {"run": run_id, "missing": missing, "run_prefix": "zz" + run_id[:6]}
    argv = [a.format(**names) for a in args]
    before = snapshot(store, run_id)
    result = run(*argv)
    assert_one_error(result, code, fragment.format(**names))
    assert snapshot(store, run_id) == before

    as_json = run("--json", *argv)
    assert as_json.exit_code == code
    error = json.loads(as_json.stdout)["error"]
    assert fragment.format(**names) in error["message"]
    assert error["exit_code"] == code
    assert snapshot(store, run_id) == before


def test_input_file_that_is_not_an_object_is_refused(
    run: Invoke, store: FluxEngine, tmp_path: Path
) -> None:
    body = tmp_path / "order.json"
    body.write_text("[1, 2]")
    before = snapshot(store)
    result = run("run", "cli-order", "--input", f"@{body}", "--local")
    assert_one_error(result, 2, f"--input @{body} must be a JSON object, got an array")
    assert (
        json.loads(run("--json", "run", "cli-order", "--input", f"@{body}").stdout)["error"]["code"]
        == "invalid_input"
    )
    assert snapshot(store) == before


def test_a_unique_prefix_stands_for_the_run_id(
    run: Invoke, store: FluxEngine, tmp_path: Path
) -> None:
    """show, retry, signal, cancel and trace list --run take the short id tables show (or
    any unique prefix of 4+ characters); an ambiguous prefix is exit 2, none matching 1."""
    first = "feedface-0000-4000-8000-000000000001"
    second = "feedface-1111-4000-8000-000000000002"
    gate = json.dumps({"gate": str(tmp_path / "closed")})
    store.execute(order, json.loads(gate), run_id=first)  # rolls back: the gate is closed
    store.execute(approval, None, run_id=second)  # suspends
    assert_one_error(run("show", "feedface"), 2, "'feedface' is ambiguous")
    assert first in run("show", "feedface").stderr and second in run("show", "feedface").stderr
    assert ok_json(run("show", "feedface-0", "--json"))["id"] == first
    assert ok_json(run("show", "feedface-0…", "--json"))["id"] == first  # pasted from a table
    events = ok_json(run("trace", "list", "--run", "feedface-1", "--json"))
    assert {e["run_id"] for e in events} == {second}
    for missing in ("fee", "FEEDFACE-0", "feed%", "feed_ace", "feed*", "feed?ace", "feed[f]"):
        assert_one_error(run("show", missing), 1, f"Run not found: {missing}")
    assert_one_error(run("retry", first[:8] + "-0"), 1, "ended rolled_back")
    assert_one_error(run("cancel", first[:10]), 1, "rolled_back -> cancelled")
    done = ok_json(run("signal", second[:10], "approval", "--payload", '{"by": "al"}', "--json"))
    assert (done["id"], done["status"]) == (second, "completed")
    third = store.execute(approval).id
    cancelled = run("cancel", third[:8])
    assert cancelled.exit_code == 0, cancelled.output
    assert f"run {third} cancelled" in cancelled.stdout


def test_prefix_lookup_on_memory_storage() -> None:
    from fluxcelery import MemoryStorage
    from fluxcelery.cli.context import Cli

    engine = FluxEngine(storage=MemoryStorage())
    for run_id in ("cafe0001-x", "cafe0002-x", "beef0001-x"):
        engine.execute(order, {"n": 1}, run_id=run_id)

    def show(prefix: str) -> Result:
        argv = ["--workflows", "cli_workflows", "show", prefix, "--json"]
        return CliRunner().invoke(cli, argv, env=BASE_ENV, obj=Cli(_engine=engine))

    assert ok_json(show("beef"))["id"] == "beef0001-x"
    assert ok_json(show("cafe0002"))["id"] == "cafe0002-x"
    assert_one_error(show("cafe"), 2, "it matches cafe0001-x, cafe0002-x")
    assert_one_error(show("dead"), 1, "Run not found: dead")


def test_retry_with_unknown_step_changes_nothing(
    run: Invoke, store: FluxEngine, tmp_path: Path
) -> None:
    gate = json.dumps({"gate": str(tmp_path / "closed")})
    run_id = json.loads(run("run", "cli-order", "--input", gate, "--local", "--json").stdout)["id"]
    before = snapshot(store, run_id)
    assert_one_error(run("retry", run_id, "--step", "nope"), 1, "has no step 'nope'")
    assert snapshot(store, run_id) == before


def test_recover_continues_a_stuck_run(run: Invoke, store: FluxEngine) -> None:
    assert ok_json(run("recover", "--json")) == {"recovered": []}
    stuck = RunState(
        id=str(uuid.uuid4()),
        workflow="cli-order",
        status=RunStatus.PENDING,
        input={"n": 3},
        data={},
        steps=[StepState(name=s.name, index=s.index, kind=s.kind) for s in order.steps],
        definition_hash=order.definition_hash,
        executor="local",
    )
    assert store.storage.create_run(stuck, [])
    recovered = ok_json(run("recover", "--older-than", "0", "--json"))["recovered"]
    assert [r["id"] for r in recovered] == [stuck.id]
    assert recovered[0]["status"] == "completed"


# -- database and doctor ------------------------------------------------------------------
def test_prune_counts_then_deletes_finished_runs(run: Invoke, store: FluxEngine) -> None:
    done = store.execute(order, {"n": 1}).id
    waiting = ok_json(run("run", "cli-approval", "--input", "{}", "--local", "--json"))["id"]
    assert ok_json(run("prune", "--older-than", "1d", "--json"))["matching"] == 0
    preview = ok_json(run("prune", "--older-than", "0s", "--dry-run", "--json"))
    assert preview == {
        "pruned": 0,
        "matching": 1,
        "dry_run": True,
        "older_than_s": 0.0,
        "statuses": ["cancelled", "completed", "failed", "rolled_back"],
    }
    assert store.get(done) is not None
    result = run("prune", "--older-than", "0")
    assert result.exit_code == 0, result.output
    assert "pruned 1 run(s)" in result.stdout and "pruned 1 run(s)…" in result.stderr
    assert store.get(done) is None and store.traces(run_id=done) == []
    assert store.get(waiting) is not None  # suspended: not finished, kept
    for bad, hint in (("soon", "--older-than"), ("-1d", "--older-than")):
        assert_one_error(run("prune", "--older-than", bad), 2, hint)
    assert_one_error(run("prune", "--older-than", "1d", "--status", "running"), 2, "--status")


def test_db_upgrade_on_a_new_and_a_migrated_database(run: Invoke, tmp_path: Path) -> None:
    head = head_revision(SqlStorage("sqlite://"))
    migrated = ok_json(run("db", "upgrade", "--json"))
    assert migrated["before"] == migrated["after"] == migrated["head"] == head

    url = f"sqlite:///{tmp_path}/new.db"
    fresh = ok_json(invoke_cli("--db", url, "db", "upgrade", "--json"))
    assert (fresh["before"], fresh["after"]) == (None, head)
    again = invoke_cli("--db", url, "db", "upgrade")
    assert again.exit_code == 0 and "already at head" in again.stdout


def test_doctor_embedded_passes(run: Invoke, sql_storage: SqlStorage) -> None:
    result = run("--broker", "memory://", "doctor", "--json")
    report = ok_json(result)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True
    assert checks["database"]["status"] == "ok"
    assert checks["migrations"]["status"] == "ok"
    assert checks["migrations"]["data"]["current"] == head_revision(sql_storage)
    assert checks["broker"]["status"] == "skip"
    assert checks["workers"]["status"] == "info"  # no remote workers: a fact, not a failure
    assert "no remote workers" in checks["workers"]["detail"]
    assert "queue" not in checks and "tasks" not in checks
    hashes = {w["name"]: w["definition_hash"] for w in checks["workflows"]["data"]["workflows"]}
    assert hashes["cli-order"] == order.definition_hash
    readable = run("--broker", "memory://", "doctor")
    assert readable.exit_code == 0
    assert len(readable.stdout.strip().splitlines()) == len(report["checks"])
    assert readable.stdout.startswith("✓ settings")
    assert "i workers     embedded broker memory://: no remote workers" in readable.stdout


def test_doctor_fails_naming_a_closed_broker(run: Invoke) -> None:
    result = run("--broker", CLOSED_BROKER, "doctor")
    assert_one_error(result, 1, "broker")
    broker_line = next(line for line in result.stdout.splitlines() if "broker" in line[:9])
    assert broker_line.startswith("✗ broker")
    assert "amqp://guest:***@127.0.0.1:1//" in broker_line and "fix:" in broker_line
    assert "guest:guest" not in result.output
    assert "start the broker" in broker_line
    report = json.loads(run("--broker", CLOSED_BROKER, "doctor", "--json").stdout)
    assert report["ok"] is False
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["workers"] == statuses["queue"] == statuses["tasks"] == "skip"


def test_doctor_names_the_credentials_when_the_broker_refuses_them(run: Invoke) -> None:
    require_service("rabbitmq")
    wrong = "amqp://guest:wr0ng-pass@127.0.0.1:5672//"
    result = run("--broker", wrong, "doctor")
    assert_one_error(result, 1, "refused the login")
    broker_line = next(line for line in result.stdout.splitlines() if "broker" in line[:9])
    assert broker_line.startswith("✗ broker") and "ACCESS_REFUSED" in broker_line
    assert "check the user and password in FLUX_BROKER_URL" in broker_line
    assert "start the broker" not in result.output and "wr0ng-pass" not in result.output
    started = run("--broker", wrong, "run", "cli-order")  # the same hint, before storing
    assert_one_error(started, 1, "check the user and password in FLUX_BROKER_URL")


def test_doctor_fails_on_unreachable_or_unmigrated_database(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres:pa55word@127.0.0.1:1/test"
    result = invoke_cli("--db", url, "--broker", "memory://", "doctor")
    assert_one_error(result, 1, "database")
    assert "✗ database" in result.stdout and "pa55word" not in result.output

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    result = invoke_cli("--db", f"sqlite:///{empty}", "--broker", "memory://", "doctor")
    assert_one_error(result, 1, "migrations")
    assert "fluxcelery db upgrade" in result.stdout


@pytest.mark.parametrize(
    ("url", "warns"),
    [
        ("amqp://guest:guest@rabbit.internal:5672//", True),
        ("amqp://rabbit.internal//", True),
        ("amqp://guest:guest@127.0.0.1:5672//", False),
        ("amqp://guest:guest@localhost//", False),
        ("amqp://app:Str0ng@rabbit.internal//", False),
        ("redis://rabbit.internal:6379/0", False),
    ],
)
def test_guest_account_warning(url: str, warns: bool) -> None:
    check = check_guest_account(url)
    assert (check is not None and check.status == "warn") is warns


def test_doctor_warns_of_steps_longer_than_rabbitmqs_consumer_timeout() -> None:
    from fluxcelery import workflow
    from fluxcelery.cli.doctor import check_step_timeouts
    from fluxcelery.settings import Settings

    wf = (
        workflow("doctor-long")
        .step("quick", lambda c: None)  # the 30 s default
        .step("report", lambda c: None, timeout=3600)
        .step("forever", lambda c: None, timeout=None)
        .step("fits", lambda c: None, timeout=1700)
    )
    rabbit = Settings(broker_url="amqp://app:pw@rabbit:5672//")
    check = check_step_timeouts(rabbit, lambda: {wf.name: wf})
    assert check is not None and check.status == "warn"
    assert check.data["steps"] == [
        "doctor-long.report (3600 s)",
        "doctor-long.forever (no timeout)",
    ]
    assert "consumer_timeout" in str(check.fix)
    quick = workflow("doctor-quick").step("a", lambda c: None)
    assert check_step_timeouts(rabbit, lambda: {quick.name: quick}) is None
    redis = Settings(broker_url="redis://127.0.0.1:6379/0")  # no consumer timeout there
    assert check_step_timeouts(redis, lambda: {wf.name: wf}) is None


def test_commands_need_an_existing_database(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path}/nothing-here.db"
    assert_one_error(invoke_cli("--db", missing, "runs"), 1, "no database at")
    assert not (tmp_path / "nothing-here.db").exists()


# -- dev and flower hand over to their modules --------------------------------------------
def test_dev_and_flower_call_their_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    viewer = types.ModuleType("fluxcelery.web.viewer")
    viewer.serve = lambda *a, **kw: calls.append(("serve", a, kw))  # type: ignore[attr-defined]
    flower = types.ModuleType("fluxcelery.contrib.flower")
    flower.main = lambda argv: calls.append(("flower", argv)) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fluxcelery.web.viewer", viewer)
    monkeypatch.setitem(sys.modules, "fluxcelery.contrib.flower", flower)
    trace = tmp_path / "trace.ndjson"
    trace.write_text("")

    assert invoke_cli("dev", "--trace", str(trace), "--port", "4281").exit_code == 0
    assert invoke_cli("dev", "--db", "sqlite:///x.db", "--host", "127.0.0.2").exit_code == 0
    result = invoke_cli("flower", "--port=5555", "--basic-auth=a:b", "extra")
    assert result.exit_code == 3
    assert calls == [
        ("serve", (str(trace), None), {"host": "127.0.0.1", "port": 4281, "open_browser": False}),
        (
            "serve",
            (None, "sqlite:///x.db"),
            {"host": "127.0.0.2", "port": 4280, "open_browser": False},
        ),
        ("flower", ["--port=5555", "--basic-auth=a:b", "extra"]),
    ]
    assert_one_error(
        invoke_cli("dev", "--trace", str(trace), "--db", "sqlite:///x.db"), 2, "not both"
    )
    assert_one_error(invoke_cli("dev", "--port", "99999"), 2, "--port")

    monkeypatch.setitem(sys.modules, "fluxcelery.web.viewer", None)
    monkeypatch.setitem(sys.modules, "fluxcelery.contrib.flower", None)
    assert_one_error(invoke_cli("dev"), 1, "fluxcelery.web.viewer is missing")
    assert_one_error(invoke_cli("flower"), 1, "fluxcelery.contrib.flower is missing")


COMMANDS = [
    [],
    ["demo"],
    ["run"],
    ["runs"],
    ["show"],
    ["trace", "list"],
    ["retry"],
    ["signal"],
    ["cancel"],
    ["recover"],
    ["prune"],
    ["doctor"],
    ["db", "upgrade"],
    ["dev"],
    ["flower"],
    ["consume"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fluxcelery")
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"], env=BASE_ENV)
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout
    assert "fluxcelery" in result.stdout.split("Example", 1)[1]


# -- the installed console script ---------------------------------------------------------
def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    env.pop("PYTHONPATH", None)
    return {**env, **extra}


def test_console_script_demo_in_an_empty_directory(tmp_path: Path) -> None:
    def fluxcelery(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLUXCELERY, *args],
            cwd=tmp_path,
            env=_clean_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    demo = fluxcelery("demo")
    assert demo.returncode == 0, demo.stderr
    out = demo.stdout
    for text in ("skipped", "GatewayTimeout", "attempt 2", "compensated", "rolled_back"):
        assert text in out
    assert "fluxcelery dev --db sqlite:///.flux/flux.db" in out
    assert "http://127.0.0.1:4280" in out
    assert "4242" not in out  # the card number is redacted
    assert (tmp_path / ".flux" / "flux.db").exists()
    assert (tmp_path / ".flux" / "trace.ndjson").stat().st_size > 0

    runs = json.loads(fluxcelery("--json", "runs").stdout)
    assert runs["counts"]["completed"] == 1 and runs["counts"]["rolled_back"] == 1
    declined = next(r["id"] for r in runs["runs"] if r["status"] == "rolled_back")
    assert f"retry {declined}" in out
    retried = fluxcelery("--json", "retry", declined, FLUX_DEMO_APPROVE="1")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["status"] == "completed"

    module = subprocess.run(
        [sys.executable, "-m", "fluxcelery", "show", "nope"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert module.returncode == 1
    assert module.stderr == "error: Run not found: nope\n"


# -- a real worker on RabbitMQ and PostgreSQL ---------------------------------------------
@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, pg_schema_url: str) -> Iterator[str]:
    """One ``celery worker`` on its own queue; yields the queue name."""
    require_service("rabbitmq")
    queue = f"flux_cli_{uuid.uuid4().hex[:8]}"
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = _clean_env(
        FLUX_BROKER_URL=AMQP_URL,
        FLUX_DATABASE_URL=pg_schema_url,
        FLUX_WORKFLOWS="cli_workflows",
        FLUX_QUEUE=queue,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]),
    )
    argv = [CELERY, "-A", "fluxcelery", "worker", "-P", "threads", "-c", "2", "-Q", queue]
    argv += ["-n", f"{queue}@%h", "--without-mingle", "--without-gossip", "-l", "INFO"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 40
        while " ready." not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield queue
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signals.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signals.SIGKILL)
                proc.wait(timeout=10)
        _delete_queue(queue)


def _delete_queue(queue: str) -> None:
    """Leave the shared broker as we found it."""
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=5) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception as exc:  # cleanup must not hide the test's own outcome
        print(f"could not delete queue {queue}: {exc}")


@pytest.fixture
def on_workers(worker: str, pg_storage: SqlStorage) -> Invoke:
    """The CLI pointed at RabbitMQ and the worker's database and queue."""

    def call(*args: str, env: dict[str, str | None] | None = None) -> Result:
        return invoke_cli(
            "--broker",
            AMQP_URL,
            *args,
            db=pg_storage.url,
            env={"FLUX_QUEUE": worker, **(env or {})},
        )

    return call


def test_doctor_passes_with_services_and_a_worker(worker: str, pg_storage: SqlStorage) -> None:
    """The console script in a clean process, so that the workflows it checks the worker's
    tasks against are the configured ones (the suite's registry holds many more)."""
    result = subprocess.run(
        [FLUXCELERY, "doctor"],
        cwd=ROOT,
        env=_clean_env(
            FLUX_BROKER_URL=AMQP_URL,
            FLUX_DATABASE_URL=pg_storage.url,
            FLUX_WORKFLOWS="cli_workflows",
            FLUX_QUEUE=worker,
            PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["✓", "settings"],
        ["✓", "database"],
        ["✓", "migrations"],
        ["✓", "broker"],
        ["✓", "workers"],
        ["✓", "queue"],
        ["✓", "workflows"],
        ["✓", "tasks"],
    ], result.stdout
    assert worker in lines[4]  # the worker answered by name
    assert f"'{worker}' (FLUX_QUEUE) consumed by {worker}@" in lines[5]
    assert "have the tasks of all 3 registered workflow(s)" in lines[7]
    assert "guest:guest" not in result.stdout + result.stderr


def test_doctor_fails_when_nobody_consumes_the_step_queue(on_workers: Invoke) -> None:
    """A live worker on another queue: runs would wait on this one for good."""
    nobody = f"flux_nobody_{uuid.uuid4().hex[:8]}"
    result = on_workers("doctor", env={"FLUX_QUEUE": nobody})
    assert_one_error(result, 1, f"doctor: queue: no live worker consumes the step queue {nobody!r}")
    lines = result.stdout.splitlines()
    assert next(line for line in lines if "workers" in line[:10]).startswith("✓ workers")
    queue_line = next(line for line in lines if line[2:].startswith("queue"))
    assert queue_line.startswith("✗ queue") and f"FLUX_QUEUE={nobody}" in queue_line
    assert next(line for line in lines if line[2:].startswith("tasks")).startswith("- tasks")
    report = json.loads(on_workers("doctor", "--json", env={"FLUX_QUEUE": nobody}).stdout)
    queue_check = next(c for c in report["checks"] if c["name"] == "queue")
    assert queue_check["data"]["consumers"] == [] and report["ok"] is False


def test_doctor_fails_when_the_workers_lack_a_workflows_tasks(on_workers: Invoke) -> None:
    from fluxcelery import workflow

    workflow("cli-doctor-unknown-to-workers").step("only", lambda ctx: None)
    result = on_workers("doctor")
    assert result.exit_code == 1, result.output
    tasks = [line for line in result.stdout.splitlines() if line[2:].startswith("tasks")]
    missing = next(line for line in tasks if "'cli-doctor-unknown-to-workers'" in line)
    assert missing.startswith("✗ tasks") and "flux.cli-doctor-unknown-to-workers.only" in missing
    assert "FLUX_WORKFLOWS" in missing
    assert not any("'cli-order'" in line or "'cli-approval'" in line for line in tasks)


def test_run_and_signal_on_a_real_worker(on_workers: Invoke, pg_storage: SqlStorage) -> None:
    done = ok_json(on_workers("run", "cli-order", "--input", '{"n": 5}', "--wait", "--json"))
    assert done["status"] == "completed"
    assert done["results"]["total"] == {"total": 5}
    assert all(s["task_id"] for s in done["steps"])  # each step ran as its own Celery task

    started = on_workers("run", "cli-approval")
    assert started.exit_code == 0, started.output
    run_id = started.stdout.strip()
    engine = FluxEngine(storage=pg_storage)
    deadline = time.monotonic() + 30
    while engine.get(run_id).status != RunStatus.SUSPENDED:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the run never suspended"
        time.sleep(0.05)
    signalled = ok_json(
        on_workers("signal", run_id, "approval", "--payload", '{"by": "bo"}', "--wait", "--json")
    )
    assert signalled["status"] == "completed"
    assert signalled["results"]["after"] == {"approved_by": "bo"}
    assert signalled["steps"][2]["task_id"]
