"""The ``fluxcelery`` command: run the demo, start and operate runs, check a deployment.

Command wiring only: settings, engine and the error policy live in ``cli_context``, tables
in ``cli_render``, the checks of ``doctor`` in ``cli_doctor``, the bundled workflow in
``demo``. Every read goes through ``ops`` so the CLI shows what Flower and the viewer show.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from .. import ops
from ..core.builder import registered_workflows
from ..core.states import MOVING_RUN, RunStatus
from ..settings import load_settings
from ..storage.migrate import head_revision
from ..storage.migrate import upgrade as migrate
from ..storage.sql import SqlStorage, redact_url
from ..trace.event import EVENT_TYPES
from .approvals import approve, reject
from .consume import consume_command
from .context import (
    BUNDLED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Cli,
    CliError,
    fail_line,
    follow_run,
    json_option,
    load_extension,
    parse_choices,
    parse_json_object,
    parse_json_option,
    pass_cli,
    print_result,
    run,
)
from .declarative import schema_command, validate_command
from .doctor import check_broker, run_checks
from .metrics import metrics_command
from .profile import profile_command
from .render import check_line, counts_text, run_view, runs_table, terminal_safe, trace_table
from .schedules import schedules_command
from .upkeep import prune, recover

if TYPE_CHECKING:
    from rich.console import Console

    from ..engine import FluxEngine


STEP_STATUSES = (
    "pending",
    "running",
    "completed",
    "failed",
    "skipped",
    "suspended",
    "compensating",
    "compensated",
    "compensation_failed",
)


class FluxGroup(click.Group):
    """Runs every command through one error policy, under ``CliRunner`` as in a shell."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        code = run(self, argv, prog_name or "fluxcelery", **extra)
        if standalone_mode:
            sys.exit(code)
        return code


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point (``fluxcelery``, ``python -m fluxcelery``): the exit code."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # celeryconfig and workflow modules, as celery does
    return run(cli, list(sys.argv[1:] if argv is None else argv), "fluxcelery")


@click.group(cls=FluxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", metavar="URL", help="Database URL (overrides FLUX_DATABASE_URL).")
@click.option("--broker", metavar="URL", help="Broker URL (overrides FLUX_BROKER_URL).")
@click.option(
    "--workflows",
    metavar="MOD1,MOD2",
    help="Modules (or .yaml/.json workflow files) that define workflows, loaded first "
    "(default: FLUX_WORKFLOWS).",
)
@json_option
@click.version_option(package_name="fluxcelery", message="fluxcelery %(version)s")
@click.pass_context
def cli(ctx: click.Context, db: str | None, broker: str | None, workflows: str | None) -> None:
    """Durable workflows on Celery: run the demo, start and operate runs, check a setup.

    \b
    Examples:
      fluxcelery demo
      fluxcelery --workflows myapp.flows run order --input '{"sku": "A1"}' --wait
      fluxcelery runs --status failed
      fluxcelery --json show 3f2a9c1e-0d5b-4a51-9a57-2f6f1c0e8b11

    A RUN_ID may be any unique prefix of 4 or more characters, such as the short ids
    tables show. Exit codes: 0 ok, 1 operation failed, 2 usage error.
    """
    obj = ctx.ensure_object(Cli)
    obj.db, obj.broker, obj.workflows = db, broker, workflows
    ctx.call_on_close(obj.close)


# -- demo ---------------------------------------------------------------------------------
@cli.command()
@click.option("--db", "demo_db", metavar="URL", help="Database (default sqlite:///.flux/flux.db).")
@json_option
@pass_cli
def demo(cli_obj: Cli, demo_db: str | None) -> int:
    """Run the bundled order workflow in this process: no services needed.

    Two orders run on SQLite in ./.flux/: one completes after a retried payment and a
    skipped coupon step; one is declined and its stock reservation is compensated. Then
    each run's steps and trace are printed, with how to open the viewer and retry.

    \b
    Example:
      fluxcelery demo
      fluxcelery demo --db postgresql+psycopg://postgres@127.0.0.1:5432/test
    """
    # Imported here, not at the top: importing it registers the demo workflow, which
    # every other command (doctor's worker check, runs, ...) would then count as defined.
    from . import demo as demo_mod

    db = demo_db or cli_obj.db or demo_mod.DEFAULT_DB
    # The hints name --db only when a plain `fluxcelery retry` would look elsewhere.
    db_flag = "" if db == load_settings().database_url else f"--db {redact_url(db)} "
    console = None if cli_obj.json else cli_obj.console
    outcome = demo_mod.run_demo(db, demo_mod.DEFAULT_TRACE_FILE, console)
    cli_obj.db = db
    engine = cli_obj.engine(must_exist=False)
    details = [ops.run_detail(engine, r.id) for r in outcome.results]
    failed = next((r.id for r in outcome.results if r.status.value != "completed"), None)
    shown_db = redact_url(db)

    def render(console: Console) -> None:
        demo_mod.print_summary(console, details, shown_db, db_flag, failed)

    data = {
        "ok": outcome.ok,
        "database": shown_db,
        "trace_file": outcome.trace_file,
        "viewer": "http://127.0.0.1:4280",
        "runs": details,
    }
    cli_obj.out(data, render)
    if not outcome.ok:
        got = ", ".join(r.status.value for r in outcome.results)
        return fail_line(f"the demo runs ended {got}, expected {', '.join(demo_mod.EXPECTED)}")
    return EXIT_OK


# -- starting runs ------------------------------------------------------------------------
@cli.command("run")
@click.argument("workflow_name", metavar="WORKFLOW")
@click.option("--input", "input_text", metavar="JSON|@FILE", help="Run input (@- reads stdin).")
@click.option("--wait", is_flag=True, help="Wait until the run finishes or suspends.")
@click.option("--local", is_flag=True, help="Run in this process instead of on workers.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds --wait waits.",
)
@json_option
@pass_cli
def run_cmd(
    cli_obj: Cli,
    workflow_name: str,
    input_text: str | None,
    wait: bool,
    local: bool,
    timeout: float,
) -> int:
    """Start a run of WORKFLOW.

    On workers (the default with a real broker) it prints the run id, or waits with
    --wait. With --local, or the embedded memory:// broker, it runs here and prints the
    result. The input must be a JSON object. A run that ends failed, rolled_back or
    cancelled exits 1.

    \b
    Examples:
      fluxcelery --workflows myapp.flows run order --input '{"sku": "A1"}'
      fluxcelery run order --input @order.json --wait --timeout 120
      fluxcelery run order --input '{"sku": "A1"}' --local
    """
    payload = parse_json_object("--input", input_text)
    cli_obj.import_workflows()
    if workflow_name in BUNDLED:
        importlib.import_module(BUNDLED[workflow_name])
    engine = cli_obj.engine(must_exist=False)
    wf = engine.workflow(workflow_name)
    if local or cli_obj.settings.embedded:
        return print_result(cli_obj, engine.execute(wf, payload))

    # Check first: a run stored but never enqueued would wait for `recover`.
    broker = check_broker(cli_obj.settings, cli_obj.app())
    if broker.status == "fail":
        raise CliError(f"{broker.detail} ({broker.fix})", code="broker_unreachable")
    handle = engine.start(wf, payload)
    if wait:
        return print_result(cli_obj, handle.get(timeout=timeout))
    cli_obj.out(
        {"id": handle.id, "workflow": workflow_name, "status": handle.status},
        lambda c: c.print(handle.id, highlight=False),
    )
    return EXIT_OK


# -- reading ------------------------------------------------------------------------------
@cli.command()
@click.option("--workflow", help="Only runs of this workflow.")
@click.option("--status", multiple=True, help="Only these statuses (repeat or comma-separate).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
@pass_cli
def runs(
    cli_obj: Cli, workflow: str | None, status: tuple[str, ...], limit: int, offset: int
) -> int:
    """List runs, newest first, with the number of runs in each status.

    \b
    Examples:
      fluxcelery runs
      fluxcelery runs --workflow order --status failed,rolled_back --limit 20
    """
    statuses = parse_choices(status, ops.RUN_STATUSES, "--status")
    engine = cli_obj.engine()
    rows = ops.list_runs(engine, workflow=workflow, status=statuses, limit=limit, offset=offset)
    counts = ops.status_counts(engine, workflow=workflow)

    def render(console: Console) -> None:

        console.print(counts_text(counts))
        if rows:
            console.print(runs_table(rows))
        else:
            console.print("no runs match", style="dim")

    cli_obj.out({"runs": rows, "counts": counts, "limit": limit, "offset": offset}, render)
    return EXIT_OK


@cli.command()
@click.argument("run_id")
@click.option("--trace-limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--watch",
    is_flag=True,
    help="Follow the run live until it settles (completed, failed, rolled back, cancelled "
    "or suspended); with --json, one document per change.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="How often --watch reads the run.",
)
@json_option
@pass_cli
def show(cli_obj: Cli, run_id: str, trace_limit: int, watch: bool, interval: float) -> int:
    """Show one run: its header, a table of its steps (with the progress a running step
    reports), the traceback of a failed step, and its trace events. RUN_ID may be a unique
    prefix (the short id of `fluxcelery runs`).

    \b
    Examples:
      fluxcelery show 3f2a9c1e-0d5b-4a51-9a57-2f6f1c0e8b11
      fluxcelery show 3f2a9c1e --watch
    """
    engine = cli_obj.engine()
    run_id = cli_obj.resolve_run_id(run_id)
    try:
        cli_obj.definitions_for(run_id)  # only to show the definition; reading needs none
    except CliError:
        pass
    detail = ops.run_detail(engine, run_id, trace_limit=trace_limit)
    if watch:
        return _watch(cli_obj, engine, detail, trace_limit, interval)

    def render(console: Console) -> None:

        console.print(run_view(detail))

    cli_obj.out(detail, render)
    return EXIT_OK


def _watch(
    cli_obj: Cli, engine: FluxEngine, detail: dict[str, Any], trace_limit: int, interval: float
) -> int:
    """``show --watch``: redraw the run in place on a terminal (rich's ``Live``), else
    print it again each time it changed, until it no longer moves."""
    from rich.live import Live

    run_id = detail["id"]

    def read() -> dict[str, Any]:
        return ops.run_detail(engine, run_id, trace_limit=trace_limit)

    def changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
        return (old["version"], old["steps"]) != (new["version"], new["steps"])

    def settled(d: dict[str, Any]) -> bool:
        return RunStatus(d["status"]) not in MOVING_RUN

    def show_once(d: dict[str, Any]) -> None:
        cli_obj.out(d, lambda console: console.print(run_view(d)))

    if cli_obj.json or not cli_obj.console.is_terminal:
        show_once(detail)
        while not settled(detail):
            time.sleep(interval)
            new = read()
            if changed(detail, new):
                show_once(new)
            detail = new
        return EXIT_OK
    with Live(run_view(detail), console=cli_obj.console, auto_refresh=False) as live:
        while not settled(detail):
            time.sleep(interval)
            detail = read()
            live.update(run_view(detail), refresh=True)
    return EXIT_OK


@cli.group()
def trace() -> None:
    """Read trace events (the flux_traces table)."""


@trace.command("list")
@click.option("--workflow", help="Only events of this workflow.")
@click.option("--status", multiple=True, help="Only events with these statuses.")
@click.option("--run", "run_id", help="Only events of this run.")
@click.option("--type", "types", multiple=True, help="Only these event types (e.g. step:retry).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--oldest",
    is_flag=True,
    help="Page from the first event instead of the latest ones.",
)
@json_option
@pass_cli
def trace_list(
    cli_obj: Cli,
    workflow: str | None,
    status: tuple[str, ...],
    run_id: str | None,
    types: tuple[str, ...],
    limit: int,
    offset: int,
    oldest: bool,
) -> int:
    """List trace events: the latest --limit matches, shown in the order they happened
    (--offset pages further back; --oldest pages from the first event instead).

    \b
    Examples:
      fluxcelery trace list --run 3f2a9c1e
      fluxcelery trace list --workflow order --type step:retry,step:error --limit 50
      fluxcelery trace list --status failed --json
    """
    statuses = parse_choices(
        status, tuple(dict.fromkeys(ops.RUN_STATUSES + STEP_STATUSES)), "--status"
    )
    type_list = parse_choices(types, EVENT_TYPES, "--type")
    engine = cli_obj.engine()
    if run_id is not None:
        run_id = cli_obj.resolve_run_id(run_id)
    rows = ops.trace_rows(
        engine.traces(
            run_id=run_id,
            workflow=workflow,
            type=type_list,
            status=statuses,
            limit=limit,
            offset=offset,
            newest_first=not oldest,
        ),
        engine,
    )
    if not oldest:
        rows.reverse()  # the latest page, read top to bottom in time order

    def render(console: Console) -> None:

        if rows:
            console.print(trace_table(rows, with_run=run_id is None))
        else:
            console.print("no trace events match", style="dim")

    cli_obj.out(rows, render)
    return EXIT_OK


# -- operating on runs --------------------------------------------------------------------
def _wait_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=60.0,
        show_default=True,
        help="Seconds --wait waits.",
    )(f)
    return click.option(
        "--wait", is_flag=True, help="Wait for a run on workers to finish or suspend."
    )(f)


@cli.command()
@click.argument("run_id")
@click.option("--step", help="Step to retry from (default: the failed step).")
@click.option("--force", is_flag=True, help="Continue with a changed workflow definition.")
@_wait_options
@json_option
@pass_cli
def retry(
    cli_obj: Cli, run_id: str, step: str | None, force: bool, wait: bool, timeout: float
) -> int:
    """Retry a failed or rolled_back run from its failed step (or --step).

    Completed commit steps are never re-run. A local run continues in this process; a run
    started on workers continues there.

    \b
    Examples:
      fluxcelery retry 3f2a9c1e-0d5b-4a51-9a57-2f6f1c0e8b11
      fluxcelery retry 3f2a9c1e --step charge --wait
    """
    run_id = cli_obj.resolve_run_id(run_id)
    cli_obj.definitions_for(run_id)
    handle = cli_obj.engine().retry(run_id, from_step=step, force=force)
    return follow_run(cli_obj, handle, "retried", wait, timeout)


@cli.command()
@click.argument("run_id")
@click.argument("name")
@click.option("--payload", metavar="JSON|@FILE", help="Signal payload (@- reads stdin).")
@click.option("--force", is_flag=True, help="Continue with a changed workflow definition.")
@_wait_options
@json_option
@pass_cli
def signal(
    cli_obj: Cli,
    run_id: str,
    name: str,
    payload: str | None,
    force: bool,
    wait: bool,
    timeout: float,
) -> int:
    """Send signal NAME to a suspended run; the payload becomes the waiting step's output.

    \b
    Examples:
      fluxcelery signal 3f2a9c1e-0d5b-4a51-9a57-2f6f1c0e8b11 approval --payload '{"by": "ann"}'
      fluxcelery signal 3f2a9c1e approval --payload @approval.json
    """
    value = parse_json_option("--payload", payload)
    run_id = cli_obj.resolve_run_id(run_id)
    cli_obj.definitions_for(run_id)
    handle = cli_obj.engine().signal(run_id, name, value, force=force)
    return follow_run(cli_obj, handle, f"signal {name!r} delivered", wait, timeout)


@cli.command()
@click.argument("run_id")
@click.option("--reason", default="cancelled from the CLI", show_default=True)
@click.option(
    "--compensate",
    is_flag=True,
    help="Undo the completed steps (their compensators, in reverse order), then end cancelled.",
)
@click.option(
    "--terminate",
    is_flag=True,
    help="Interrupt the running attempt (SIGTERM to its pool process) and discard its writes; "
    "without it, the attempt finishes and its outcome is recorded.",
)
@json_option
@pass_cli
def cancel(cli_obj: Cli, run_id: str, reason: str, compensate: bool, terminate: bool) -> int:
    """Cancel a pending, running or suspended run for good: no step starts after it, and
    the run's tasks that workers hold are revoked.

    \b
    Examples:
      fluxcelery cancel 3f2a9c1e --reason "customer asked"
      fluxcelery cancel 3f2a9c1e --compensate --terminate
    """
    run_id = cli_obj.resolve_run_id(run_id)
    if compensate:
        cli_obj.definitions_for(run_id)  # which steps have compensators
    state = cli_obj.engine().cancel(
        run_id, reason=reason, compensate=compensate, terminate=terminate
    )
    row = ops.run_row(state)

    def render(console: Console) -> None:
        from rich.text import Text

        what = {"rolling_back": "cancelled, compensating", "cancelled": "cancelled"}.get(
            state.status.value, state.status.value
        )
        line = f"run {terminal_safe(run_id)} {what}: {terminal_safe(reason)}"
        running = [s.name for s in state.steps if s.status.value == "running"]
        if running:
            line += f" (step {running[0]!r} finishes its attempt first)"
        console.print(Text(line))

    cli_obj.out(row, render)
    return EXIT_OK


cli.add_command(recover)
cli.add_command(prune)


# -- deployment ---------------------------------------------------------------------------
@cli.command()
@json_option
@pass_cli
def doctor(cli_obj: Cli) -> int:
    """Check settings, database, migrations, broker, workers, the step queue and workflows.

    One line per check; exit 1 if any check fails (each failure names a fix): no live
    worker consumes the step queue (FLUX_QUEUE), or the workers on it lack the tasks of a
    registered workflow. With the embedded memory:// broker there are no workers to ask.

    \b
    Examples:
      fluxcelery doctor
      fluxcelery --broker amqp://guest:guest@127.0.0.1:5672// --db sqlite:///.flux/flux.db doctor
    """

    settings = cli_obj.settings
    app = None if settings.embedded else cli_obj.app()
    checks = run_checks(
        settings, cli_obj.sources(), app, cli_obj.import_workflows, registered_workflows
    )
    failed = [c for c in checks if c.status == "fail"]

    def render(console: Console) -> None:
        for c in checks:
            console.print(check_line(c.name, c.status, c.detail, c.fix), soft_wrap=True)

    cli_obj.out({"ok": not failed, "checks": [c.to_dict() for c in checks]}, render)
    if failed:
        more = f" (and {len(failed) - 1} more failed check(s))" if len(failed) > 1 else ""
        return fail_line(f"doctor: {failed[0].name}: {failed[0].detail}{more}")
    return EXIT_OK


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command()
@json_option
@pass_cli
def upgrade(cli_obj: Cli) -> int:
    """Apply the schema migrations (Alembic) up to head; safe to run concurrently.

    \b
    Example:
      fluxcelery --db postgresql+psycopg://postgres@127.0.0.1:5432/test db upgrade
    """

    url = cli_obj.settings.database_url
    storage = SqlStorage(url, auto_migrate=False)
    try:
        before, after = migrate(storage)
        head = head_revision(storage)
    finally:
        storage.close()
    shown = redact_url(url)
    data = {"database": shown, "before": before, "after": after, "head": head}
    note = "already at head" if before == after else "upgraded"

    def render(console: Console) -> None:
        console.print(f"{shown}: {before or 'empty'} -> {after} ({note})", highlight=False)

    cli_obj.out(data, render)
    return EXIT_OK


@cli.command()
@click.option("--trace", "trace_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--db", "dev_db", metavar="URL", help="Database to read (default: --db/settings).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=4280, show_default=True)
@click.option("--open", "open_browser", is_flag=True, help="Open a browser on the page.")
@pass_cli
def dev(
    cli_obj: Cli,
    trace_file: str | None,
    dev_db: str | None,
    host: str,
    port: int,
    open_browser: bool,
) -> int:
    """Serve the trace viewer page on a trace file or a database.

    \b
    Examples:
      fluxcelery dev --db sqlite:///.flux/flux.db        # then http://127.0.0.1:4280
      fluxcelery dev --trace .flux/trace.ndjson --port 8080
    """
    if trace_file and dev_db:
        raise CliError("dev: give --trace FILE or --db URL, not both", EXIT_USAGE, "usage")
    db_url = None if trace_file else (dev_db or cli_obj.settings.database_url)
    serve = load_extension("fluxcelery.web.viewer", "serve", "the trace viewer")
    cli_obj.export_env()
    serve(trace_file, db_url, host=host, port=port, open_browser=open_browser)
    return EXIT_OK


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@pass_cli
def flower(cli_obj: Cli, flower_args: tuple[str, ...]) -> int:
    """Start Flower with the Workflows tab; other options go to Flower as they are.

    \b
    Examples:
      fluxcelery flower
      fluxcelery --broker amqp://guest:guest@127.0.0.1:5672// flower --port=5555
      fluxcelery flower --basic-auth=admin:s3cret
    """
    flower_main = load_extension("fluxcelery.contrib.flower", "main", "the Flower integration")
    cli_obj.export_env()
    code = flower_main(list(flower_args))
    return int(code or 0)


cli.add_command(consume_command)
cli.add_command(schedules_command)
cli.add_command(approve)
cli.add_command(reject)
cli.add_command(validate_command)
cli.add_command(schema_command)
cli.add_command(profile_command)
cli.add_command(metrics_command)


__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "cli", "main"]
