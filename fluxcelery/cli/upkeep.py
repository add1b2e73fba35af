"""``fluxcelery recover`` and ``fluxcelery prune``: the upkeep commands (upkeep.py and
retention.py do the work)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import click

from .. import ops
from ..core.states import MOVING_RUN, values
from ..handle import RunHandle
from ..retention import FINISHED
from .context import (
    BUNDLED,
    EXIT_OK,
    Cli,
    json_option,
    parse_choices,
    parse_duration,
    pass_cli,
)
from .render import runs_table

if TYPE_CHECKING:
    from rich.console import Console


@click.command()
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Treat runs not updated for this long as stuck (default: per step timeout).",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0)
@json_option
@pass_cli
def recover(cli_obj: Cli, older_than: float | None, limit: int, timeout: float) -> int:
    """Continue runs stuck mid-way (a dead worker or process) and expire overdue waits.

    \b
    Examples:
      fluxcelery recover
      fluxcelery recover --older-than 300
    """
    cli_obj.import_workflows()
    engine = cli_obj.engine()
    for name, module in BUNDLED.items():
        if engine.list(workflow=name, status=list(values(MOVING_RUN)), limit=1):
            importlib.import_module(module)
    ids = engine.recover(older_than, limit=limit)
    if cli_obj.settings.embedded:  # this process is the worker: let the runs finish
        for run_id in ids:
            RunHandle(engine, run_id).get(timeout=timeout)
    rows = [ops.run_row(s) for s in (engine.get(i) for i in ids) if s is not None]

    def render(console: Console) -> None:

        console.print(f"recovered {len(rows)} run(s)")
        if rows:
            console.print(runs_table(rows))

    cli_obj.out({"recovered": rows}, render)
    return EXIT_OK


@click.command()
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="DURATION",
    help="Prune runs finished at least this long ago: 30d, 12h, 15m, 90s.",
)
@click.option(
    "--status",
    multiple=True,
    help="Only these finished statuses (default: completed, failed, rolled_back, cancelled).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; delete nothing.")
@json_option
@pass_cli
def prune(cli_obj: Cli, older_than: str, status: tuple[str, ...], dry_run: bool) -> int:
    """Delete finished runs, with their steps and traces, finished long enough ago.

    Runs go in batches of 500, each its own transaction; a failed run can no longer be
    retried once pruned.

    \b
    Examples:
      fluxcelery prune --older-than 30d --dry-run
      fluxcelery prune --older-than 7d --status completed
    """

    age = parse_duration(older_than, "--older-than")
    statuses = parse_choices(status, FINISHED, "--status") or list(FINISHED)
    engine = cli_obj.engine()

    def progress(total: int) -> None:
        click.echo(f"pruned {total} run(s)…", err=True)

    count = engine.prune(age, statuses=statuses, dry_run=dry_run, progress=progress)
    verb = "would prune" if dry_run else "pruned"
    summary: dict[str, Any] = {
        "pruned": 0 if dry_run else count,
        "matching": count,
        "dry_run": dry_run,
        "older_than_s": age.total_seconds(),
        "statuses": statuses,
    }
    cli_obj.out(
        summary,
        lambda c: c.print(
            f"{verb} {count} run(s) ({', '.join(statuses)}) not updated for {older_than}",
            highlight=False,
        ),
    )
    return EXIT_OK
