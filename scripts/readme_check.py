"""Run README.md's quickstart and Python examples as a new user would, read from README.md
itself so that the README cannot drift from what works (``.ci/run``'s first stage).

    python scripts/readme_check.py quickstart --venv DIR   # the ```bash block of "Quickstart"
    python scripts/readme_check.py python "Ten lines" [--then "On Celery workers"] --venv DIR

``quickstart`` runs each command of the block in the repository root, with ``DIR/bin`` first
on PATH (so ``pip`` and ``fluxcelery`` are the bare venv's). ``python`` joins the Python
blocks of the named sections into one script and runs it with ``DIR/bin/python`` in an empty
directory. Both run without any ``FLUX_*`` variable, as on a machine that never set one.
Exit code: that of the first command that fails, else 0.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def section(readme: str, title: str) -> str:
    """The text of section ``## title`` (up to the next ``## ``)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if match is None:
        raise SystemExit(f"README.md has no section '## {title}'")
    return match.group(1)


def blocks(text: str, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(text) if kind == lang]


def bare_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_quickstart(readme: str, venv: Path) -> int:
    found = blocks(section(readme, "Quickstart"), "bash")
    if not found:
        raise SystemExit("README.md's Quickstart has no ```bash block")
    env = bare_env(venv)
    for line in found[0].splitlines():
        command = line.split("#", 1)[0].strip()
        if not command:
            continue
        print(f"$ {command}", flush=True)
        rc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env).returncode
        if rc != 0:
            print(f"README quickstart: {command!r} exited {rc}", file=sys.stderr)
            return rc
    return 0


def run_python(readme: str, titles: list[str], venv: Path) -> int:
    parts = []
    for title in titles:
        found = blocks(section(readme, title), "python")
        if not found:
            raise SystemExit(f"README.md's section {title!r} has no ```python block")
        parts.extend(found)
    script = "\n".join(parts)
    with tempfile.TemporaryDirectory(prefix="flux-readme-") as tmp:
        path = Path(tmp) / "readme_example.py"
        path.write_text(script)
        print(f"$ python {path.name}   # README: {' + '.join(titles)}", flush=True)
        rc = subprocess.run(
            [str(venv / "bin" / "python"), str(path)], cwd=tmp, env=bare_env(venv), timeout=300
        ).returncode
    if rc != 0:
        print(f"README example {' + '.join(titles)} exited {rc}", file=sys.stderr)
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    quick = sub.add_parser("quickstart", help="run the Quickstart's commands")
    quick.add_argument("--venv", type=Path, required=True)
    py = sub.add_parser("python", help="run the Python blocks of README sections")
    py.add_argument("section")
    py.add_argument("--then", action="append", default=[], help="a further section")
    py.add_argument("--venv", type=Path, required=True)
    args = parser.parse_args(argv)
    readme = (ROOT / "README.md").read_text()
    if args.what == "quickstart":
        return run_quickstart(readme, args.venv.resolve())
    return run_python(readme, [args.section, *args.then], args.venv.resolve())


if __name__ == "__main__":
    sys.exit(main())
