"""docs/approvals.md's runnable example runs, and prints what the page shows (ids and times
aside), so the page cannot drift from what works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "approvals.md"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SHORT = re.compile(r"run [0-9a-f]{8}$")
STAMP = re.compile(r"'at': '[^']+'")


def example() -> tuple[str, str]:
    """The Python block of "A runnable example" and the text block after it."""
    text = DOC.read_text(encoding="utf-8").split("## A runnable example", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S)
    shown = re.search(r"```text\n(.*?)```", text, re.S)
    assert code and shown, "docs/approvals.md lost its runnable example"
    return code.group(1), shown.group(1)


def normal(output: str) -> list[str]:
    lines = [UUID.sub("<id>", line) for line in output.strip().splitlines()]
    return [SHORT.sub("run <id>", STAMP.sub("'at': <at>", line)) for line in lines]


def test_the_runnable_example_prints_what_the_page_shows(tmp_path: Path) -> None:
    code, shown = example()
    script = tmp_path / "refund_approval.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert normal(done.stdout) == normal(shown)
