"""scripts/verify.py reports each stage and stops at the first failing one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERIFY = ROOT / "scripts" / "verify.py"
UNREACHABLE_DB = "postgresql+psycopg://postgres@127.0.0.1:1/nope"


def verify(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(VERIFY), "--log-dir", str(tmp_path / "logs"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def stage_lines(output: str) -> dict[str, str]:
    """stage name -> its report line."""
    lines = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("✓", "✗", "-") and parts[1] in STAGES:
            lines[parts[1]] = line
        elif len(parts) >= 2 and parts[0] in STAGES and parts[1] == "not":
            lines[parts[0]] = line
    return lines


STAGES = ("install", "migrate", "doctor", "tests", "e2e")


def test_a_broken_database_fails_migrate_and_stops_there(tmp_path: Path) -> None:
    result = verify(tmp_path, "--skip", "install", "--database-url", UNREACHABLE_DB)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = stage_lines(result.stdout)
    assert lines["install"].startswith("-") and "skipped" in lines["install"]
    assert lines["migrate"].startswith("✗ migrate") and "fail" in lines["migrate"]
    for later in ("doctor", "tests", "e2e"):
        assert "not run" in lines[later], result.stdout
    assert "first failing stage: migrate" in result.stdout
    assert (tmp_path / "logs" / "migrate.log").exists()


def test_passing_stages_are_reported_with_their_time(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'verify.db'}"
    result = verify(tmp_path, "--skip", "install,doctor,tests,e2e", "--database-url", db)
    assert result.returncode == 0, result.stdout + result.stderr
    line = stage_lines(result.stdout)["migrate"]
    assert line.startswith("✓ migrate") and line.split()[2].endswith("s")
    assert "OK: 1 stage(s) passed" in result.stdout


def test_a_failing_test_command_is_the_first_failing_stage(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'verify.db'}"
    failing = f"{sys.executable} -c 'import sys; print(\"3 failed\"); sys.exit(3)'"
    result = verify(
        tmp_path, "--skip", "install,doctor", "--database-url", db, "--test-cmd", failing
    )
    assert result.returncode == 1
    lines = stage_lines(result.stdout)
    assert lines["migrate"].startswith("✓")
    assert lines["tests"].startswith("✗ tests") and "exited 3" in lines["tests"]
    assert "3 failed" in result.stdout  # the tail of the failing command's output
    assert "not run" in lines["e2e"]
    assert "first failing stage: tests" in result.stdout


@pytest.mark.parametrize("args", [["--skip", "nonsense"], ["--orders", "0"]])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    assert verify(tmp_path, *args).returncode == 2
