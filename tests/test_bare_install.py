"""The core install has no extras: fluxcelery imports, runs a workflow and says which extra
to install when a URL needs one. Each case runs in a fresh interpreter in which the optional
packages cannot be imported (``sys.modules[name] = None``), as on ``pip install fluxcelery``.
CI's first stage does the same on a real bare venv (``.ci/run``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

OPTIONAL = ("psycopg", "psycopg_binary", "redis", "flower", "opentelemetry", "uvicorn", "yaml")


def _run_bare(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    block = "".join(f"sys.modules[{name!r}] = None\n" for name in OPTIONAL)
    script = "import sys\n" + block + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])},
    )


def test_import_and_run_without_extras(tmp_path: Path) -> None:
    out = _run_bare(
        """
        from fluxcelery import FluxEngine, workflow
        wf = workflow("bare", version="1").step("a", lambda ctx: {"ok": True})
        result = FluxEngine().execute(wf, {})
        print(result.status, result.results)
        loaded = sorted(m for m, mod in sys.modules.items() if mod is not None
                        and m.split(".")[0] in ("psycopg", "redis", "flower", "opentelemetry"))
        print("optional modules loaded:", loaded)
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "completed {'a': {'ok': True}}" in out.stdout
    assert "optional modules loaded: []" in out.stdout
    assert (tmp_path / ".flux" / "flux.db").exists()


def test_postgres_url_without_psycopg_names_the_extra(tmp_path: Path) -> None:
    out = _run_bare(
        """
        from fluxcelery import MissingExtra, SqlStorage
        try:
            SqlStorage("postgresql://postgres:s3cret@127.0.0.1:5432/test")
        except MissingExtra as exc:
            print("refused:", exc)
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "pip install 'fluxcelery[postgres]'" in out.stdout
    assert "s3cret" not in out.stdout


def test_redis_broker_without_redis_names_the_extra(tmp_path: Path) -> None:
    out = _run_bare(
        """
        from fluxcelery import MissingExtra
        from fluxcelery.celery.app import build_app
        from fluxcelery.settings import Settings
        try:
            build_app(Settings(broker_url="redis://127.0.0.1:6379/0"))
        except MissingExtra as exc:
            print("refused:", exc)
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "refused: the broker URL redis:// needs the 'redis' package" in out.stdout
    assert "pip install 'fluxcelery[redis]'" in out.stdout


def test_cli_reports_the_missing_extra_on_one_line(tmp_path: Path) -> None:
    out = _run_bare(
        """
        from fluxcelery.cli import main
        sys.argv = ["fluxcelery", "--db", "postgresql://postgres@127.0.0.1/test", "runs"]
        sys.exit(main())
        """,
        tmp_path,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "pip install 'fluxcelery[postgres]'" in lines[0]
