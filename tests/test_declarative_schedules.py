"""A workflow file's ``schedules:`` (SPEC sections 14 and 15): declared with ``schedule()``
when the file loads, every problem at its line and column through ``load_workflow`` and
``fluxcelery validate``, the JSON Schema refusing what it can, re-loading the same file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from fluxcelery import DefinitionError, FluxEngine, MemoryStorage, load_workflow, schedule
from fluxcelery.cli import cli
from fluxcelery.core import builder
from fluxcelery.declarative import WorkflowFileError, check_workflow_file, json_schema
from fluxcelery.schedules import declared_schedules, forget_schedule

TESTS = Path(__file__).parent
FILES = TESTS / "declarative_files"
GOOD = FILES / "schedules.yaml"
BAD = FILES / "bad_schedules.yaml"
DOC = TESTS.parent / "docs" / "declarative.md"
ENV: dict[str, str | None] = {
    "FLUX_BROKER_URL": "memory://",
    "FLUX_DATABASE_URL": None,
    "FLUX_WORKFLOWS": None,
    "FLUX_TRACE_FILE": None,
    "COLUMNS": "200",
}
BAD_PROBLEMS = [
    "8:11: schedule 'nightly': bad cron '0 25 * * *': [0 25 * * *] is not acceptable, out of range",
    "11:15: schedule 'berlin': unknown timezone 'Europe/Berln' (an IANA name like 'Europe/Paris')",
    "14:5: schedule 'poll' has both 'cron' and 'every': keep one",
    "17:5: unknown key 'catchup' (did you mean 'catch_up'? valid keys: name, cron, every, "
    "input, timezone, catch_up)",
]
HEAD = "name: sched-case\nsteps:\n  - {step: a, run: declarative_handlers.validate}\nschedules:\n"


@pytest.fixture(autouse=True)
def registries() -> Iterator[None]:
    """Workflows and schedules as they were: every schedule a test declares is forgotten."""
    workflows = dict(builder._REGISTRY)
    schedules = set(declared_schedules())
    yield
    builder._REGISTRY.clear()
    builder._REGISTRY.update(workflows)
    for name in set(declared_schedules()) - schedules:
        forget_schedule(name)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=ENV)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(WorkflowFileError) as info:
        load_workflow(path)
    return [f"{p.line}:{p.col}: {p.message}" for p in info.value.problems]


def case(tmp_path: Path, entries: str, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEAD + entries)
    return path


# -- a file declares its schedules --------------------------------------------------------
def test_a_file_declares_its_schedules_for_its_workflow() -> None:
    wf = load_workflow(GOOD)
    nightly = declared_schedules()["file-nightly-report"]
    poll = declared_schedules()["file-poll-report"]
    assert nightly.workflow is wf and poll.workflow is wf
    assert (nightly.cron, nightly.every, nightly.timezone, nightly.catch_up) == (
        "0 3 * * *",
        None,
        "Europe/Berlin",
        False,
    )
    assert nightly.input == {"scope": "all"}
    assert (poll.cron, poll.every, poll.timezone, poll.catch_up, poll.input) == (
        None,
        300,
        "UTC",
        True,
        None,
    )

    engine = FluxEngine(storage=MemoryStorage())
    try:
        now = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
        views = {v.name: v for v in engine.schedules(now)}
    finally:
        engine.close()
    view = views["file-nightly-report"]
    assert (view.workflow, view.cron, view.timezone) == (
        "scheduled-report",
        "0 3 * * *",
        "Europe/Berlin",
    )
    assert view.next_tick == datetime(2026, 1, 16, 2, 0, tzinfo=UTC)  # 03:00 in Berlin (CET)
    assert (views["file-poll-report"].every, views["file-poll-report"].catch_up) == (300, True)


def test_loading_the_same_file_again_replaces_its_own_declarations() -> None:
    """validate, then a load, or two tests: the same declaration is not a duplicate."""
    assert invoke("validate", str(GOOD)).exit_code == 0
    first = declared_schedules()["file-nightly-report"]
    wf = load_workflow(GOOD)
    again = declared_schedules()["file-nightly-report"]
    assert again is not first and again.workflow is wf  # points at the workflow just built
    assert again.describe() == first.describe()
    assert load_workflow(GOOD) is not wf


def test_a_name_declared_differently_is_a_problem_of_the_file(tmp_path: Path) -> None:
    other = builder.workflow("sched-case-other").step("a", lambda ctx: None)
    schedule("file-taken", other, every=60)
    path = case(tmp_path, "  - name: file-taken\n    every: 60\n")
    assert problems_of(path) == [
        "5:11: schedule 'file-taken' is already declared in this process, differently "
        "(workflow 'sched-case-other', every 60s, timezone UTC): schedule names are unique"
    ]
    assert declared_schedules()["file-taken"].workflow is other  # the first one stays


def test_a_file_changed_since_it_was_loaded_cannot_redeclare(tmp_path: Path) -> None:
    path = case(tmp_path, "  - name: file-changed\n    every: 60\n")
    load_workflow(path)
    path.write_text(HEAD + "  - name: file-changed\n    every: 120\n")
    assert problems_of(path) == [
        "5:11: schedule 'file-changed' is already declared in this process, differently "
        "(workflow 'sched-case', every 60s, timezone UTC): schedule names are unique"
    ]
    assert declared_schedules()["file-changed"].every == 60


def test_a_file_with_any_problem_declares_no_schedule(tmp_path: Path) -> None:
    path = tmp_path / "half.yaml"
    path.write_text(
        "name: sched-half\nsteps:\n  - {step: a, run: declarative_handlers.no_such}\n"
        "schedules:\n  - {name: file-half, every: 60}\n"
    )
    assert problems_of(path) == ["3:20: 'run': declarative_handlers has no attribute 'no_such'"]
    assert "file-half" not in declared_schedules()
    assert "sched-half" not in builder.registered_workflows()


# -- every problem at its line and column -------------------------------------------------
def test_bad_schedules_through_load_workflow() -> None:
    assert problems_of(BAD) == BAD_PROBLEMS
    assert not {"nightly", "berlin", "poll", "weekly"} & set(declared_schedules())
    assert "badly-scheduled" not in builder.registered_workflows()


def test_bad_schedules_through_validate() -> None:
    result = invoke("validate", str(BAD))
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [f"{BAD}:{line}" for line in BAD_PROBLEMS]
    assert result.stderr == ""


def test_validate_names_the_schedules_of_a_good_file() -> None:
    result = invoke("validate", str(GOOD))
    assert result.exit_code == 0, result.output
    digest = builder.registered_workflows()["scheduled-report"].definition_hash
    assert result.stdout == (
        f"{GOOD}: OK: workflow scheduled-report v1, 1 step, 2 schedules (file-nightly-report, "
        f"file-poll-report), definition hash {digest}\n"
    )
    data = json.loads(invoke("--json", "validate", str(GOOD)).stdout)
    (found,) = data["files"]
    assert [(s["name"], s["cron"], s["every"], s["timezone"]) for s in found["schedules"]] == [
        ("file-nightly-report", "0 3 * * *", None, "Europe/Berlin"),
        ("file-poll-report", None, 300, "UTC"),
    ]


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (
            "  - name: case\n    every: 0\n",
            "6:12: 'every' must be a whole number of seconds > 0, got 0",
        ),
        (
            "  - name: case\n    every: -5\n",
            "6:12: 'every' must be a whole number of seconds > 0, got -5",
        ),
        (
            "  - name: case\n    every: 1.5\n",
            "6:12: 'every' must be a whole number of seconds > 0, got 1.5",
        ),
        (
            "  - name: case\n    cron: '0 3 * *'\n",
            "6:11: 'cron' must be a cron expression of 5 fields (minute, hour, day of month, "
            "month, day of week) such as '0 3 * * *', got \"0 3 * *\"",
        ),
        (
            "  - name: case\n    cron: '0 0 30 2 *'\n",
            "6:11: schedule 'case': bad cron '0 0 30 2 *': it never matches a date",
        ),
        (
            "  - name: case\n    cron: '61 * * * *'\n    timezone: Europe/Paris\n",
            "6:11: schedule 'case': bad cron '61 * * * *': [61 * * * *] is not acceptable, "
            "out of range",
        ),
        (
            "  - name: case\n    every: 60\n    timezone: ''\n",
            "7:15: 'timezone' must be an IANA time zone name such as 'Europe/Paris' (default "
            'UTC), got ""',
        ),
        (
            "  - name: has space\n    every: 60\n",
            "5:11: 'name' must be a schedule name of letters, digits, '.', '_' or '-' (starting "
            'with a letter or digit, at most 200 characters), got "has space"',
        ),
        (
            "  - name: case:1\n    every: 60\n",
            "5:11: 'name' must be a schedule name of letters, digits, '.', '_' or '-' (starting "
            'with a letter or digit, at most 200 characters), got "case:1"',
        ),
        (
            "  - name: case\n    timezone: UTC\n",
            "5:5: schedule 'case' needs one of the keys 'cron' (5 fields) or 'every' (seconds)",
        ),
        (
            "  - every: 60\n",
            "5:5: missing key 'name'",
        ),
        (
            "  - name: case\n    every: 60\n    catch_up: 'yes'\n",
            "7:15: 'catch_up' must be true or false (default false): start the latest tick "
            'missed while no beat ran, got "yes"',
        ),
        (
            "  - name: case\n    every: 60\n  - name: case\n    cron: '0 3 * * *'\n",
            "7:11: duplicate schedule name 'case' (first used on line 5)",
        ),
        (
            "  - nightly\n",
            "5:5: item 1 of 'schedules' must be a schedule: a map of name, cron or every, input, "
            'timezone and catch_up, got "nightly"',
        ),
        (
            "  name: case\n",
            "5:3: 'schedules' must be a list of schedules of this workflow (SPEC section 14), "
            "got a map",
        ),
    ],
)
def test_each_problem_has_its_line_and_column(tmp_path: Path, entries: str, expected: str) -> None:
    path = case(tmp_path, entries)
    assert problems_of(path) == [expected]
    result = invoke("validate", str(path))
    assert (result.exit_code, result.stdout) == (1, f"{path}:{expected}\n")
    assert not {"case", "has space", "case:1"} & set(declared_schedules())


def test_a_typo_for_cron_is_one_problem(tmp_path: Path) -> None:
    path = case(tmp_path, "  - name: case\n    crn: '0 3 * * *'\n")
    assert problems_of(path) == [
        "6:5: unknown key 'crn' (did you mean 'cron'? valid keys: name, cron, every, input, "
        "timezone, catch_up)"
    ]


def test_a_json_file_declares_schedules_too(tmp_path: Path) -> None:
    path = tmp_path / "flow.json"
    path.write_text(
        json.dumps(
            {
                "name": "sched-json",
                "steps": [{"step": "a", "run": "declarative_handlers.validate"}],
                "schedules": [{"name": "file-json", "every": 600, "input": {"n": 1}}],
            },
            indent=2,
        )
    )
    wf = load_workflow(path)
    spec = declared_schedules()["file-json"]
    assert (spec.workflow, spec.every, spec.input) == (wf, 600, {"n": 1})
    path.write_text(path.read_text().replace("600", "0"))
    assert problems_of(path) == ["12:16: 'every' must be a whole number of seconds > 0, got 0"]


# -- the JSON Schema refuses what it can, at the same place --------------------------------
def schema_errors(path: Path) -> list[tuple[tuple[Any, ...], str]]:
    data = YAML(typ="safe").load(path.read_text())
    validator = Draft202012Validator(json_schema())
    return sorted((tuple(e.absolute_path), str(e.validator)) for e in validator.iter_errors(data))


def test_the_schema_accepts_the_good_file_and_refuses_the_bad_one() -> None:
    assert schema_errors(GOOD) == []
    # The cron field out of range and the unknown time zone need croniter and the tz
    # database: only loading finds them. Both keys and the unknown key, the schema does.
    assert schema_errors(BAD) == [
        (("schedules", 2), "oneOf"),
        (("schedules", 3), "additionalProperties"),
    ]


@pytest.mark.parametrize(
    ("entries", "refused"),
    [
        ("  - name: case\n    every: 60\n", None),
        ("  - name: case\n    cron: '0 3 * * *'\n    timezone: Asia/Tokyo\n    input: [1]\n", None),
        ("  - name: case\n    every: 0\n", ("schedules", 0, "every")),
        ("  - name: case\n    every: 2.5\n", ("schedules", 0, "every")),
        ("  - name: case\n    cron: '0 3 * *'\n", ("schedules", 0, "cron")),
        ("  - name: case\n    cron: '* * * * *'\n    every: 60\n", ("schedules", 0)),
        ("  - name: case\n", ("schedules", 0)),
        ("  - name: a b\n    every: 60\n", ("schedules", 0, "name")),
        ("  - name: case\n    every: 60\n    crn: x\n", ("schedules", 0)),
        ("  - name: case\n    every: 60\n    catch_up: 1\n", ("schedules", 0, "catch_up")),
    ],
)
def test_the_schema_refuses_what_loading_refuses(
    tmp_path: Path, entries: str, refused: tuple[Any, ...] | None
) -> None:
    path = case(tmp_path, entries)
    found = {where for where, _ in schema_errors(path)}
    assert found == (set() if refused is None else {refused})
    checked = check_workflow_file(path)
    assert checked.ok is (refused is None), checked.problems


# -- the CLI and the docs -----------------------------------------------------------------
def test_schedules_command_lists_a_files_schedules(tmp_path: Path) -> None:
    flow = tmp_path / "listed.yaml"  # a path of its own: FLUX_WORKFLOWS loads a file once
    shutil.copy(GOOD, flow)
    db = f"sqlite:///{tmp_path / 'flux.db'}"
    result = invoke("--workflows", str(flow), "--db", db, "--json", "schedules")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    found = {s["name"]: s for s in json.loads(result.stdout)["schedules"]}
    assert found["file-nightly-report"]["workflow"] == "scheduled-report"
    assert found["file-nightly-report"]["cron"] == "0 3 * * *"
    assert found["file-poll-report"]["every"] == 300


def test_the_documented_output_is_what_validate_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOC.read_text()
    start = text.index("$ fluxcelery validate bad_schedules.yaml\n")
    block = text[start : text.index("```", start)].splitlines()[1:]
    monkeypatch.chdir(FILES)
    result = invoke("validate", "bad_schedules.yaml")
    assert result.stdout.splitlines() == block
    assert block == [f"bad_schedules.yaml:{line}" for line in BAD_PROBLEMS]


def test_python_schedule_still_refuses_any_second_declaration() -> None:
    load_workflow(GOOD)
    spec = declared_schedules()["file-poll-report"]
    with pytest.raises(DefinitionError, match="declared twice"):
        schedule("file-poll-report", spec.workflow, every=300, catch_up=True)
