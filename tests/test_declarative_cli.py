"""``fluxcelery validate`` / ``fluxcelery schema``, and workflow files in ``--workflows``
(SPEC section 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from fluxcelery.cli import cli
from fluxcelery.core import builder
from fluxcelery.declarative import SCHEMA_PATH

TESTS = Path(__file__).parent
FILES = TESTS / "declarative_files"
FIVE = FILES / "five_mistakes.yaml"
FEATURES = FILES / "features.yaml"
ENV: dict[str, str | None] = {
    "FLUX_BROKER_URL": "memory://",
    "FLUX_DATABASE_URL": None,
    "FLUX_WORKFLOWS": None,
    "FLUX_TRACE_FILE": None,
    "COLUMNS": "200",
}
FIVE_PROBLEMS = [
    "6:5: unknown key 'retires' (did you mean 'retries'? valid keys: step, run, retries, "
    "timeout, backoff, when, compensate, retry_on, no_retry_on)",
    "8:10: 'run': declarative_handlers has no attribute 'no_such_handler'",
    "11:14: 'timeout' must be seconds > 0, or null for no limit, got -5",
    "14:11: 'when': syntax error at column 16 of the expression, near '&& data.ok'",
    "15:13: duplicate step name 'validate' (first used on line 4)",
]


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    saved = dict(builder._REGISTRY)
    yield
    builder._REGISTRY.clear()
    builder._REGISTRY.update(saved)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=ENV)


def test_validate_prints_every_problem_as_file_line_col_and_exits_1() -> None:
    result = invoke("validate", str(FIVE))
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [f"{FIVE}:{line}" for line in FIVE_PROBLEMS]
    assert result.stderr == ""


def test_validate_says_ok_with_the_definition_hash() -> None:
    result = invoke("validate", str(FEATURES))
    assert result.exit_code == 0, result.output
    digest = builder.registered_workflows()["every-feature"].definition_hash
    assert result.stdout == (
        f"{FEATURES}: OK: workflow every-feature v7, 9 steps, definition hash {digest}\n"
    )


def test_validate_checks_every_file_and_fails_if_one_fails(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = invoke("validate", str(FEATURES), str(FIVE), str(missing))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{FEATURES}: OK: ")
    assert lines[1:6] == [f"{FIVE}:{line}" for line in FIVE_PROBLEMS]
    assert lines[6].startswith(f"{missing}:1:1: cannot read the file")
    assert len(lines) == 7


def test_validate_json() -> None:
    result = invoke("--json", "validate", str(FIVE), str(FEATURES))
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["ok"] is False
    bad, good = out["files"]
    assert (bad["ok"], bad["workflow"], len(bad["problems"])) == (False, None, 5)
    assert bad["problems"][0] == {
        "line": 6,
        "col": 5,
        "message": FIVE_PROBLEMS[0].split(": ", 1)[1],
    }
    assert (good["ok"], good["workflow"], good["version"], good["steps"]) == (
        True,
        "every-feature",
        "7",
        9,
    )
    assert len(good["definition_hash"]) == 16


def test_validate_without_the_extra_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "celpy", None)
    result = invoke("validate", str(FEATURES))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: YAML/JSON workflows need cel-python, not installed: "
        "pip install 'fluxcelery[yaml]'\n"
    )


def test_schema_prints_the_shipped_json_schema() -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    assert result.stdout == SCHEMA_PATH.read_text()
    schema = json.loads(result.stdout)
    Draft202012Validator.check_schema(schema)  # a valid draft 2020-12 schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for example in (FEATURES, TESTS.parent / "workflows" / "order.yaml"):
        data = YAML(typ="safe").load(example.read_text())
        assert list(Draft202012Validator(schema).iter_errors(data)) == []


def test_workflows_option_takes_a_yaml_file(tmp_path: Path) -> None:
    flow = tmp_path / "gate.yaml"
    flow.write_text(
        "name: cli-gate\ninput: declarative_handlers.RefundIn\nsteps:\n"
        "  - {step: mark, run: declarative_handlers.mark}\n"
        "  - {commit: refund, run: declarative_handlers.refund, when: 'data.approved'}\n"
    )
    db = f"sqlite:///{tmp_path / 'flux.db'}"
    result = invoke(
        "--workflows",
        str(flow),
        "--db",
        db,
        "run",
        "cli-gate",
        "--local",
        "--json",
        "--input",
        '{"amount": "3.00", "approve": false}',
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    run = json.loads(result.stdout)
    assert run["status"] == "completed"
    assert [(s["name"], s["status"]) for s in run["steps"]] == [
        ("mark", "completed"),
        ("refund", "skipped"),
    ]
    listed = invoke("--workflows", str(flow), "--db", db, "--json", "runs")
    assert listed.exit_code == 0, listed.stderr
    assert [r["workflow"] for r in json.loads(listed.stdout)["runs"]] == ["cli-gate"]


def test_a_bad_file_in_workflows_names_its_problems(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'flux.db'}"
    result = invoke("--workflows", str(FIVE), "--db", db, "run", "five-mistakes", "--local")
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: --workflows: cannot load workflow file '{FIVE}': ")
    assert f"{FIVE}:6:5: unknown key 'retires'" in line
    assert f"{FIVE}:15:13: duplicate step name" in line


def test_the_console_script(tmp_path: Path) -> None:
    """The installed ``fluxcelery`` command, as a user runs it."""
    exe = Path(sys.executable).parent / "fluxcelery"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("FLUX_WORKFLOWS", None)
    done = subprocess.run(
        [str(exe), "validate", "declarative_files/five_mistakes.yaml"],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    expected = [f"declarative_files/five_mistakes.yaml:{line}" for line in FIVE_PROBLEMS]
    assert done.stdout.splitlines() == expected


# -- docs/declarative.md's example runs as written ---------------------------------------------
DOC = TESTS.parent / "docs" / "declarative.md"


def doc_block(language: str, first_line: str) -> str:
    text = DOC.read_text()
    start = text.index(f"```{language}\n{first_line}\n") + len(f"```{language}\n")
    return text[start : text.index("```", start)]


def test_the_documented_example_validates_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "refund.yaml").write_text(doc_block("yaml", "# refund.yaml"))
    (tmp_path / "refunds.py").write_text(doc_block("python", "# refunds.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)

    checked = invoke("validate", "refund.yaml")
    assert checked.exit_code == 0, checked.stdout
    assert f"# {checked.stdout.strip()}" in DOC.read_text()  # the OK line the doc shows

    db = f"sqlite:///{tmp_path / 'flux.db'}"
    given = '{"order_id": "A-1", "amount": "20.00", "channels": ["email", "sms"]}'
    ran = invoke(
        "--workflows",
        "refund.yaml",
        "--db",
        db,
        "--json",
        "run",
        "refund",
        "--local",
        "--input",
        given,
    )
    assert ran.exit_code == 0, (ran.stdout, ran.stderr)
    run = json.loads(ran.stdout)
    assert run["status"] == "completed"
    assert {s["name"]: s["status"] for s in run["steps"] if s.get("item") is None} == {
        "validate": "completed",
        "refund": "completed",
        "manager": "completed",
        "notify": "completed",
        "send-email": "completed",
        "send-sms": "completed",
        "ledger": "completed",
    }

    large = invoke(
        "--workflows",
        "refund.yaml",
        "--db",
        db,
        "--json",
        "run",
        "refund",
        "--local",
        "--input",
        '{"order_id": "A-2", "amount": "250.00"}',
    )
    assert large.exit_code == 0, large.stderr
    waiting = json.loads(large.stdout)
    assert waiting["status"] == "suspended"
    approved = invoke(
        "--workflows", "refund.yaml", "--db", db, "--json", "approve", waiting["id"], "--by", "ann"
    )
    assert approved.exit_code == 0, approved.stderr
    done = json.loads(approved.stdout)
    assert done["status"] == "completed"
    assert {s["name"]: s["status"] for s in done["steps"]}["send-sms"] == "skipped"
