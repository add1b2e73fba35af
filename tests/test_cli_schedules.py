"""``fluxcelery schedules`` and ``fluxcelery schedules run NAME`` (in-process, CliRunner, on
a SQLite file; the embedded broker runs a started run here)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fluxcelery import FluxEngine, RunStatus, SqlStorage
from fluxcelery.cli import cli

BASE_ENV: dict[str, str | None] = {
    "FLUX_BROKER_URL": "memory://",
    "FLUX_DATABASE_URL": None,
    "FLUX_WORKFLOWS": None,
    "FLUX_TRACE_FILE": None,
    "COLUMNS": "200",
}
CLOSED_BROKER = "amqp://guest:guest@127.0.0.1:1//"


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'flux.db'}"


def invoke(db: str, *args: str, env: dict[str, str | None] | None = None) -> Result:
    prefix = ["--workflows", "schedule_workflows", "--db", db]
    return CliRunner().invoke(cli, [*prefix, *args], env={**BASE_ENV, **(env or {})})


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def assert_one_error(result: Result, code: int, fragment: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]


def listed(db: str) -> dict[str, Any]:
    data = ok_json(invoke(db, "schedules", "--json"))
    return {s["name"]: s for s in data["schedules"] if s["name"].startswith("sched-cli-")}


def test_schedules_json_lists_each_schedule(db: str) -> None:
    before = datetime.now(UTC)
    found = listed(db)
    assert sorted(found) == ["sched-cli-nightly", "sched-cli-poll"]
    nightly, poll = found["sched-cli-nightly"], found["sched-cli-poll"]
    assert nightly["workflow"] == poll["workflow"] == "sched-cli-report"
    assert (nightly["cron"], nightly["every"], nightly["timezone"]) == (
        "0 3 * * *",
        None,
        "Europe/Paris",
    )
    assert (poll["cron"], poll["every"], poll["timezone"], poll["catch_up"]) == (
        None,
        300,
        "UTC",
        True,
    )
    local = datetime.fromisoformat(nightly["next_tick_local"])
    assert (local.hour, local.minute) == (3, 0)
    tick = datetime.fromisoformat(poll["next_tick"])
    assert tick > before and tick.timestamp() % 300 == 0
    assert poll["last_run_id"] is None and poll["last_run_status"] is None


def test_schedules_table(db: str) -> None:
    invoke(db, "schedules", "run", "sched-cli-nightly")
    result = invoke(db, "schedules")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    header = [c.strip() for c in lines[0].split("┃")]
    assert header == [
        "name",
        "workflow",
        "cron/every",
        "timezone",
        "next tick (UTC)",
        "last run",
        "status",
    ]
    rows = {cells[0]: cells for cells in ([c.strip() for c in ln.split("│")] for ln in lines[2:])}
    nightly, poll = rows["sched-cli-nightly"], rows["sched-cli-poll"]
    assert nightly[1:4] == ["sched-cli-report", "cron 0 3 * * *", "Europe/Paris"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d 0[12]:00:00", nightly[4])  # 03:00 Paris
    assert nightly[5].startswith("sched:sched-cli-nightly:") and nightly[5].endswith("(by hand)")
    assert nightly[6] == "completed"
    assert poll[2:4] == ["every 300s +catch_up", "UTC"]
    assert poll[5:] == ["-", "-"]


def test_schedules_run_starts_one_run_now_and_lists_it(db: str) -> None:
    result = invoke(db, "schedules", "run", "sched-cli-poll")
    assert result.exit_code == 0, result.stderr
    run_id = result.stdout.strip()
    assert re.fullmatch(r"sched:sched-cli-poll:\d{8}T\d{6}Z-m\d{6}", run_id), run_id
    engine = FluxEngine(storage=SqlStorage(db))
    try:
        state = engine.get(run_id)
        assert state is not None and state.status == RunStatus.COMPLETED
        # the input callable got "now" as its tick
        since = datetime.fromisoformat(state.input["since"])
        assert since.strftime("%Y%m%dT%H%M%SZ") == run_id.split(":")[2][:16]
    finally:
        engine.close()
    poll = listed(db)["sched-cli-poll"]
    assert (poll["last_run_id"], poll["last_run_status"], poll["last_run_manual"]) == (
        run_id,
        "completed",
        True,
    )
    again = ok_json(invoke(db, "schedules", "run", "sched-cli-poll", "--json"))
    assert again["id"] != run_id and again["status"] == "completed"
    assert again["schedule"] == "sched-cli-poll" and again["workflow"] == "sched-cli-report"
    assert listed(db)["sched-cli-poll"]["last_run_id"] == again["id"]  # the newest


def test_schedules_run_unknown_name(db: str) -> None:
    result = invoke(db, "schedules", "run", "sched-cli-nope")
    assert_one_error(result, 1, "unknown schedule 'sched-cli-nope' (declared: ")
    assert "sched-cli-poll" in result.stderr
    data = json.loads(invoke(db, "--json", "schedules", "run", "sched-cli-nope").stdout)
    assert data["error"]["code"] == "schedule_not_found"


def test_schedules_run_refuses_an_unreachable_broker(db: str) -> None:
    result = invoke(
        db, "schedules", "run", "sched-cli-nightly", env={"FLUX_BROKER_URL": CLOSED_BROKER}
    )
    assert_one_error(result, 1, "127.0.0.1:1")
    engine = FluxEngine(storage=SqlStorage(db))
    try:
        assert engine.list() == []  # nothing stored
    finally:
        engine.close()


@pytest.mark.parametrize("command", [["schedules"], ["schedules", "run"]], ids=" ".join)
def test_help_has_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"], env=BASE_ENV)
    assert result.exit_code == 0, result.output
    assert "fluxcelery" in result.stdout.split("Example", 1)[1]


def test_schedules_help_documents_the_run_id() -> None:
    result = CliRunner().invoke(cli, ["schedules", "run", "--help"], env=BASE_ENV)
    assert result.exit_code == 0
    assert "sched:<name>:<now, UTC>-m<microseconds>" in result.stdout
