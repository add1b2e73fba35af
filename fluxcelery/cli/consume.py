"""``fluxcelery consume`` / ``python -m fluxcelery.ingress``: the ingress as a process.

A click command like the rest of the CLI, run through the same error policy
(``cli_context.run``): one ``error:`` line and exit 2 for a usage problem (an unknown
workflow, no AMQP broker), 1 when the consumer fails, 0 once it stopped.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from ..core.errors import WorkflowNotFound
from ..declarative.sources import import_workflow_source
from ..ingress.consumer import consume
from ..ingress.messages import DEFAULT_QUEUE, DEFAULT_WORKFLOW, MAX_MESSAGE_BYTES
from .context import EXIT_OK, EXIT_USAGE, Cli, CliError, pass_cli, run, setup_logging

log = logging.getLogger("fluxcelery.ingress")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@click.command(
    "consume",
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "--queue",
    envvar="FLUX_INGRESS_QUEUE",
    show_envvar=True,
    default=DEFAULT_QUEUE,
    help="Queue to consume; its dead letters go to <queue>.dlq.",
)
@click.option(
    "--workflow",
    "workflow_name",
    envvar="FLUX_INGRESS_WORKFLOW",
    show_envvar=True,
    default=DEFAULT_WORKFLOW,
    help="Workflow each message starts (a message may name another in x-flux-workflow).",
)
@click.option(
    "--broker",
    "broker_url",
    metavar="URL",
    envvar="FLUX_INGRESS_URL",
    show_envvar=True,
    show_default="FLUX_BROKER_URL",
    help="AMQP URL of the ingress queue.",
)
@click.option(
    "--workflows",
    "extra_modules",
    metavar="MOD1,MOD2",
    default="",
    show_default=False,
    help="More workflow modules to import (FLUX_WORKFLOWS is always imported).",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=1),
    default=10,
    help="Messages the broker sends ahead of their acks.",
)
@click.option(
    "--max-messages",
    type=click.IntRange(min=1),
    show_default="no limit",
    help="Stop after handling this many messages.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    show_default="never",
    help="Stop once the queue stayed empty this long.",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=MAX_MESSAGE_BYTES,
    help="Larger messages are dead-lettered (payload_too_large).",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    metavar="SECONDS",
    help="Log a progress line this often (at INFO).",
)
@click.option(
    "--health-file",
    metavar="PATH",
    envvar="FLUX_INGRESS_HEALTH_FILE",
    show_envvar=True,
    help="Touch this file every 5 s while consuming (container health checks).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    help="Log lines from this level up go to stderr, each with a timestamp.",
)
@pass_cli
def consume_command(
    cli_obj: Cli,
    queue: str,
    workflow_name: str,
    broker_url: str | None,
    extra_modules: str,
    prefetch: int,
    max_messages: int | None,
    idle_timeout: float | None,
    max_bytes: int,
    progress_interval: float,
    health_file: str | None,
    log_level: str,
) -> int:
    """AMQP ingress: each message on --queue starts one run of --workflow.

    A message is acked once its run is stored; its message id is the run id, so a
    redelivered message starts nothing. A message that is not a JSON object, too large,
    or rejected by the workflow's input schema goes to <queue>.dlq with the reason in its
    x-flux-error headers. Broker and database outages are waited out. Stops on SIGTERM or
    Ctrl-C (exit 0) and prints what it did.

    \b
    Examples:
      fluxcelery consume --queue orders.workflow --workflow order-fulfillment
      fluxcelery --workflows myapp.flows consume --workflow order --log-level DEBUG
      fluxcelery consume --broker amqp://ingress:s3cret@mq:5672// --idle-timeout 30
      python -m fluxcelery.ingress --queue orders.workflow
    """
    setup_logging(log_level, timestamps=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    cli_obj.export_env()  # the group's --db/--broker/--workflows reach the default engine
    broker = broker_url or cli_obj.settings.broker_url
    if broker.startswith("memory://"):
        raise CliError(
            "no broker for the ingress: set --broker, FLUX_INGRESS_URL or FLUX_BROKER_URL "
            "to amqp://...",
            EXIT_USAGE,
            "usage",
        )
    extra = [m.strip() for m in extra_modules.split(",") if m.strip()]
    for module in [*cli_obj.settings.workflows, *extra]:
        try:
            import_workflow_source(module)  # a module, or a workflow file
        except ImportError as exc:
            raise CliError(
                f"cannot import workflow module {module!r}: {exc} (is it on PYTHONPATH?)",
                EXIT_USAGE,
                "workflow_import_error",
            ) from exc
    stop = threading.Event()
    try:
        with _stop_on_signals(stop.set):
            stats = consume(
                queue,
                workflow_name,
                broker_url=broker,
                prefetch=prefetch,
                max_messages=max_messages,
                idle_timeout=idle_timeout,
                stop=stop,
                max_bytes=max_bytes,
                progress_interval=progress_interval,
                health_file=health_file,
            )
    except WorkflowNotFound as exc:
        raise CliError(f"{exc}; set FLUX_WORKFLOWS or --workflows", EXIT_USAGE, exc.code) from exc
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE, "usage") from exc
    except Exception as exc:
        raise CliError(f"ingress stopped: {type(exc).__name__}: {exc}") from exc
    click.echo(stats.line())
    return EXIT_OK


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT ask the consumer to finish its message and stop (exit 0); the
    previous handlers come back afterwards. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda *_: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """``python -m fluxcelery.ingress [options]``: the exit code. Without options it
    consumes with the defaults, as ``fluxcelery consume`` does."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run(consume_command, args, "python -m fluxcelery.ingress", help_if_empty=False)


class _ArgsParser:
    """``parse_args`` on top of the click command, for callers of the argparse parser this
    module used to have (tests/test_compose.py checks the compose file's command with it)."""

    def parse_args(self, argv: list[str]) -> argparse.Namespace:
        with consume_command.make_context("consume", list(argv)) as ctx:
            params = dict(ctx.params)
        params["workflow"] = params.pop("workflow_name")
        return argparse.Namespace(**params)


def _parser() -> _ArgsParser:
    return _ArgsParser()
