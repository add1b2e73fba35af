"""``fluxcelery consume`` (a click command like the others, also ``python -m
fluxcelery.ingress``) and the CLI's log lines, each labelled with its own level.

Anything that reaches ``consume()`` runs in a subprocess: it builds the process-wide default
engine, which must not leak into other tests."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import AMQP_URL, require_service

from fluxcelery.cli import cli
from fluxcelery.cli.consume import _parser
from fluxcelery.cli.context import LevelFormatter

TESTS = Path(__file__).parent
ROOT = TESTS.parent
FLUXCELERY = str(Path(sys.executable).parent / "fluxcelery")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (debug|info|warning|error): ")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    env.update(
        FLUX_DATABASE_URL=f"sqlite:///{tmp_path}/flux.db",
        PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]),
        **extra,
    )
    return env


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False
    )


@pytest.fixture
def ingress_queue() -> Iterator[str]:
    """A queue of this test's own, deleted afterwards with its dead-letter queue."""
    require_service("rabbitmq")
    queue = f"flux.test.consume.{uuid.uuid4().hex[:8]}"
    yield queue
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=5) as conn:
        channel = conn.default_channel
        for name in (queue, f"{queue}.dlq"):
            channel.queue_delete(name)
        for name in (queue, f"{queue}.dlx"):
            channel.exchange_delete(name)


def test_help_shows_options_defaults_and_examples() -> None:
    result = CliRunner().invoke(cli, ["consume", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())  # click wraps help at 80 columns
    for text in (
        "Examples:",
        "fluxcelery consume --queue orders.workflow --workflow order-fulfillment",
        "default: orders.workflow",
        "env var: FLUX_INGRESS_WORKFLOW",
        "env var: FLUX_INGRESS_QUEUE",
        "default: (FLUX_BROKER_URL)",
        "default: 10",
        f"default: {1024 * 1024}",
        "default: INFO",
        "--health-file",
        "--progress-interval",
        "--max-messages",
        "--idle-timeout",
        "--workflows",
    ):
        assert text in out, text


def test_the_compose_command_still_parses() -> None:
    args = _parser().parse_args(["--queue", "orders.workflow", "--workflow", "order-fulfillment"])
    assert (args.queue, args.workflow, args.prefetch) == (
        "orders.workflow",
        "order-fulfillment",
        10,
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--prefetch", "0"], "--prefetch"),
        (["--log-level", "LOUD"], "--log-level"),
        (["--max-messages", "-1"], "--max-messages"),
        (["--progress-interval", "0"], "--progress-interval"),
        (["--no-such-option"], "No such option"),
        (["--broker", "memory://"], "no broker for the ingress"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    env = {"FLUX_BROKER_URL": "memory://", "FLUX_INGRESS_URL": None, "COLUMNS": "200"}
    result = CliRunner().invoke(cli, ["consume", *args], env=env)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def test_python_m_fluxcelery_ingress_is_the_same_command(tmp_path: Path) -> None:
    helped = _run([sys.executable, "-m", "fluxcelery.ingress", "--help"], _env(tmp_path))
    assert helped.returncode == 0, helped.stderr
    assert "--queue" in helped.stdout and "python -m fluxcelery.ingress" in helped.stdout
    no_broker = _run([sys.executable, "-m", "fluxcelery.ingress"], _env(tmp_path))
    assert no_broker.returncode == 2
    assert no_broker.stderr.startswith("error: no broker for the ingress")
    assert len(no_broker.stderr.strip().splitlines()) == 1


def test_log_level_info_prints_the_info_lines(tmp_path: Path, ingress_queue: str) -> None:
    argv = [FLUXCELERY, "--workflows", "cli_workflows", "consume", "--queue", ingress_queue]
    argv += ["--workflow", "cli-order", "--idle-timeout", "0.5", "--log-level", "INFO"]
    result = _run(argv, _env(tmp_path, FLUX_BROKER_URL=AMQP_URL))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert any(
        f"info: ingress: consuming {ingress_queue} -> workflow cli-order" in line for line in lines
    )
    assert any("info: ingress: idle for 0.5s, stopping" in line for line in lines)
    assert result.stdout.startswith(f"queue {ingress_queue}: 0 received, 0 started")


def test_log_level_warning_keeps_the_info_lines_out(tmp_path: Path, ingress_queue: str) -> None:
    argv = [sys.executable, "-m", "fluxcelery.ingress", "--queue", ingress_queue]
    argv += ["--workflow", "cli-order", "--idle-timeout", "0.5", "--log-level", "warning"]
    result = _run(argv, _env(tmp_path, FLUX_INGRESS_URL=AMQP_URL, FLUX_WORKFLOWS="cli_workflows"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "info:" not in result.stderr
    assert result.stdout.startswith(f"queue {ingress_queue}: 0 received")


def test_unknown_workflow_is_a_usage_error(tmp_path: Path, ingress_queue: str) -> None:
    argv = [FLUXCELERY, "consume", "--queue", ingress_queue, "--workflow", "no-such-flow"]
    result = _run(argv, _env(tmp_path, FLUX_BROKER_URL=AMQP_URL))
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: Unknown workflow: 'no-such-flow'")
    )


# -- log lines ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("level", "label"),
    [
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warning"),
        (logging.ERROR, "error"),
    ],
)
def test_each_log_line_says_its_own_level(level: int, label: str) -> None:
    record = logging.LogRecord("flower", level, __file__, 1, "Visit me at %s", ("http://x",), None)
    assert LevelFormatter().format(record) == f"{label}: Visit me at http://x"


def test_a_logged_exception_is_one_line_and_escaped() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "step \x1b[31m%s", ("a",), exc_info)
    assert LevelFormatter().format(record) == "error: step \\x1b[31ma (bad)"
    stamped = LevelFormatter(timestamps=True).format(record)
    assert LOG_LINE.match(stamped), stamped


def test_the_console_script_labels_info_lines_as_info(tmp_path: Path) -> None:
    """What ``fluxcelery flower`` does: Flower raises the root level to INFO and logs
    "Visit me at …", which used to come out as ``warning: Visit me at …``."""
    code = (
        "import logging, sys\n"
        "from fluxcelery.cli.context import run\n"
        "import click\n"
        "@click.command()\n"
        "def flowerish():\n"
        "    logging.getLogger().setLevel(logging.INFO)\n"
        "    logging.getLogger('flower.command').info('Visit me at http://localhost:5555')\n"
        "    logging.getLogger('flower.command').warning('Running without authentication')\n"
        "    logging.getLogger('flower.command').debug('not shown')\n"
        "sys.exit(run(flowerish, [], 'x', help_if_empty=False))\n"
    )
    result = _run([sys.executable, "-c", code], _env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "info: Visit me at http://localhost:5555",
        "warning: Running without authentication",
    ]
