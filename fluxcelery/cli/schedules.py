"""``fluxcelery schedules`` (list the declared schedules) and ``fluxcelery schedules run
NAME`` (start one run now). Schedules are declared in the ``--workflows`` /
``FLUX_WORKFLOWS`` modules, which both commands import first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from ..schedules.definition import Schedule, declared_schedules
from ..schedules.runs import start_now
from .context import EXIT_OK, Cli, CliError, json_option, pass_cli
from .doctor import check_broker
from .render import Col, FitTable, fmt_ts, status_text, terminal_safe

if TYPE_CHECKING:
    from rich.console import Console


@click.group("schedules", invoke_without_command=True)
@json_option
@click.pass_context
def schedules_command(ctx: click.Context) -> int | None:
    """List the schedules declared in the workflow modules: workflow, cron or interval,
    timezone, next tick (UTC), and the newest run with its status.

    Ticks are served by `celery -A fluxcelery beat`; see docs/schedules.md.

    \b
    Examples:
      fluxcelery --workflows myapp.flows schedules
      fluxcelery schedules --json
      fluxcelery schedules run nightly-report
    """
    if ctx.invoked_subcommand is not None:
        return None
    cli_obj = ctx.ensure_object(Cli)
    cli_obj.import_workflows()
    views = cli_obj.engine(must_exist=False).schedules()
    rows = [v.to_dict() for v in views]

    def render(console: Console) -> None:
        if not views:
            console.print(
                "no schedules declared (declare them with fluxcelery.schedule() in a module "
                "named by --workflows or FLUX_WORKFLOWS)",
                style="dim",
            )
            return
        console.print(schedules_table(rows))

    cli_obj.out({"schedules": rows}, render)
    return EXIT_OK


@schedules_command.command("run")
@click.argument("name")
@json_option
@pass_cli
def run_schedule(cli_obj: Cli, name: str) -> int:
    """Start one run of schedule NAME now, outside its grid, and print its id.

    The run id is sched:<name>:<now, UTC>-m<microseconds> (so it sorts with the tick runs
    and two manual starts are two runs); an input callable gets now as its tick. On the
    embedded memory:// broker the run executes in this process.

    \b
    Example:
      fluxcelery --workflows myapp.flows schedules run nightly-report
    """
    cli_obj.import_workflows()
    spec = _declared(name)
    engine = cli_obj.engine(must_exist=False)
    local = cli_obj.settings.embedded
    if not local:  # a run stored but never enqueued would wait for `recover`
        broker = check_broker(cli_obj.settings, cli_obj.app())
        if broker.status == "fail":
            raise CliError(f"{broker.detail} ({broker.fix})", code="broker_unreachable")
    run_id = start_now(engine, spec, engine.clock(), local=local)
    state = engine.get(run_id)
    data: dict[str, Any] = {
        "id": run_id,
        "schedule": spec.name,
        "workflow": spec.workflow_name,
        "status": state.status.value if state is not None else None,
    }
    cli_obj.out(data, lambda c: c.print(run_id, highlight=False))
    return EXIT_OK


def _declared(name: str) -> Schedule:
    found = declared_schedules()
    if name not in found:
        known = ", ".join(found) or "none"
        raise CliError(
            f"unknown schedule {name!r} (declared: {known}; list the module that declares "
            "it in --workflows or FLUX_WORKFLOWS)",
            code="schedule_not_found",
        )
    return found[name]


def _cell(value: Any, style: str = "") -> Text:
    return Text(terminal_safe(value), style=style, no_wrap=True, overflow="ellipsis")


def _cadence(row: Mapping[str, Any]) -> Text:
    text = f"cron {row['cron']}" if row["cron"] is not None else f"every {row['every']}s"
    return _cell(text + (" +catch_up" if row["catch_up"] else ""))


def _last_run(row: Mapping[str, Any]) -> Text:
    if not row["last_run_id"]:
        return _cell("-", "dim")
    return _cell(row["last_run_id"] + (" (by hand)" if row["last_run_manual"] else ""))


def _status(row: Mapping[str, Any]) -> Text:
    status = row["last_run_status"]
    return status_text(status) if status else _cell("-", "dim")


_NAME = Col("name", lambda r: _cell(r["name"]), flexible=True, keep=24)
_CADENCE = Col("cron/every", _cadence)
_NEXT = Col("next tick (UTC)", lambda r: _cell(fmt_ts(r["next_tick"])[:19]))
_LAST = Col("last run", _last_run, flexible=True)
_STATUS = Col("status", _status)
_WIDE = (
    _NAME,
    Col("workflow", lambda r: _cell(r["workflow"]), flexible=True),
    _CADENCE,
    Col("timezone", lambda r: _cell(r["timezone"])),
    _NEXT,
    _LAST,
    _STATUS,
)
_NARROW = (_NAME, _CADENCE, _NEXT, _LAST, _STATUS)


def schedules_table(rows: Sequence[Mapping[str, Any]]) -> FitTable:
    """Every column from ~150 terminal columns; below, without workflow and timezone (in
    ``--json``); the last run id shrinks first."""
    return FitTable((_WIDE, _NARROW), rows)
