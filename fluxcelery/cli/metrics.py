"""``fluxcelery metrics``: serve the store's Prometheus metrics (``fluxcelery.metrics``).

Every scrape reads the database, so any number of these processes (and Flower's
``/api/flux/metrics``) report the same values. The server is ``prometheus_client``'s, on
127.0.0.1 unless ``--address`` says otherwise; it has no authentication of its own.
"""

from __future__ import annotations

import click
from prometheus_client.exposition import start_http_server

from ..metrics import exposition, registry_for
from ..settings import is_loopback
from .context import EXIT_OK, Cli, CliError, pass_cli

DEFAULT_PORT = 9808


@click.command("metrics")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to serve /metrics on.",
)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (0.0.0.0: every interface; no authentication).",
)
@click.option("--once", is_flag=True, help="Print one scrape to stdout and exit.")
@pass_cli
def metrics_command(cli_obj: Cli, port: int, address: str, once: bool) -> int:
    """Serve Prometheus metrics read from the database on each scrape.

    Runs started and finished, step durations, runs by status, the age of the oldest
    pending and suspended runs: docs/operations.md lists them, with alert rules.

    \b
    Examples:
      fluxcelery metrics --once
      fluxcelery metrics --port 9808
      fluxcelery metrics --address 0.0.0.0 --port 9808
    """
    storage = cli_obj.engine().storage
    if once:
        body, _ = exposition(storage)
        click.echo(body.decode(), nl=False)
        return EXIT_OK
    registry = registry_for(storage)
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}")
    host = f"[{address}]" if ":" in address else address
    click.echo(f"serving metrics on http://{host}:{port}/metrics (Ctrl+C to stop)", err=True)
    if not is_loopback(address):
        click.echo("note: this endpoint has no authentication", err=True)
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return EXIT_OK
