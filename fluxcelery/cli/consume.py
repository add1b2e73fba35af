"""``fluxcelery consume`` / ``python -m fluxcelery.ingress``: the ingress as a process."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import threading

from ..errors import WorkflowNotFound
from .consumer import consume
from .messages import DEFAULT_QUEUE, DEFAULT_WORKFLOW, MAX_MESSAGE_BYTES

log = logging.getLogger("fluxcelery.ingress")


def _import_workflows(modules: list[str]) -> None:
    for name in modules:
        importlib.import_module(name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fluxcelery consume",
        description="Start one workflow run per AMQP message; malformed messages go to the "
        "dead-letter queue <queue>.dlq with the reason in their headers.",
    )
    p.add_argument("--queue", default=os.environ.get("FLUX_INGRESS_QUEUE", DEFAULT_QUEUE))
    p.add_argument("--workflow", default=os.environ.get("FLUX_INGRESS_WORKFLOW", DEFAULT_WORKFLOW))
    p.add_argument(
        "--broker",
        default=None,
        help="AMQP URL of the ingress queue (default: FLUX_INGRESS_URL, else FLUX_BROKER_URL)",
    )
    p.add_argument(
        "--workflows",
        default="",
        help="extra comma-separated modules to import (FLUX_WORKFLOWS is always imported)",
    )
    p.add_argument("--prefetch", type=int, default=10)
    p.add_argument("--max-messages", type=int, default=None)
    p.add_argument("--idle-timeout", type=float, default=None, help="stop after N idle seconds")
    p.add_argument("--max-bytes", type=int, default=MAX_MESSAGE_BYTES)
    p.add_argument("--progress-interval", type=float, default=10.0)
    p.add_argument(
        "--health-file",
        default=os.environ.get("FLUX_INGRESS_HEALTH_FILE") or None,
        help="touch this file every 5 s while consuming (container health checks)",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    """``fluxcelery consume``: 0 when stopped (SIGTERM/SIGINT, limits), 1 on failure,
    2 on a usage error (unknown workflow, no broker)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from ..settings import load_settings

    settings = load_settings()
    broker = args.broker or os.environ.get("FLUX_INGRESS_URL") or settings.broker_url
    if broker.startswith("memory://"):
        log.error("no broker: set --broker, FLUX_INGRESS_URL or FLUX_BROKER_URL to amqp://...")
        return 2
    try:
        _import_workflows(
            [*settings.workflows, *[m.strip() for m in args.workflows.split(",") if m.strip()]]
        )
    except ImportError as exc:
        log.error("cannot import a workflow module: %s (is it on PYTHONPATH?)", exc)
        return 2
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        stats = consume(
            args.queue,
            args.workflow,
            broker_url=broker,
            prefetch=args.prefetch,
            max_messages=args.max_messages,
            idle_timeout=args.idle_timeout,
            stop=stop,
            max_bytes=args.max_bytes,
            progress_interval=args.progress_interval,
            health_file=args.health_file,
        )
    except WorkflowNotFound as exc:
        log.error("%s; set FLUX_WORKFLOWS or --workflows", exc)
        return 2
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:
        log.error("ingress stopped: %s: %s", type(exc).__name__, exc)
        return 1
    print(stats.line(), flush=True)
    return 0
