"""``fluxcelery approve`` / ``reject``: decide a run's waiting approval step (SPEC 16)."""

from __future__ import annotations

import getpass

import click

from .context import Cli, follow_run, json_option, pass_cli


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container without USER): --by is then required
        return ""


def _decider(by: str | None) -> str:
    who = (by if by is not None else _login()).strip()
    if not who:
        raise click.UsageError("say who decides: --by NAME")
    return who


_by_option = click.option(
    "--by",
    metavar="NAME",
    help="Who decides (default: your login name); checked against the step's approvers.",
)
_force_option = click.option(
    "--force", is_flag=True, help="Continue with a changed workflow definition."
)


@click.command()
@click.argument("run_id")
@_by_option
@click.option("--comment", help="Why (kept with the decision, in the trace and ctx.results).")
@_force_option
@click.option("--wait", is_flag=True, help="Wait for a run on workers to finish or suspend.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0)
@json_option
@pass_cli
def approve(
    cli_obj: Cli,
    run_id: str,
    by: str | None,
    comment: str | None,
    force: bool,
    wait: bool,
    timeout: float,
) -> int:
    """Approve the approval step RUN_ID waits on; the run goes on.

    \b
    Examples:
      fluxcelery approve 3f2a9c1e --by ann --comment "checked the invoice"
    """
    who = _decider(by)
    run_id = cli_obj.resolve_run_id(run_id)
    cli_obj.definitions_for(run_id)
    handle = cli_obj.engine().approve(run_id, who, comment, force=force)
    return follow_run(cli_obj, handle, f"approved by {who}", wait, timeout)


@click.command()
@click.argument("run_id")
@_by_option
@click.option("--reason", required=True, help="Why (the failed step's error: Rejected: REASON).")
@_force_option
@click.option("--wait", is_flag=True, help="Wait for a run on workers to finish or suspend.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0)
@json_option
@pass_cli
def reject(
    cli_obj: Cli,
    run_id: str,
    by: str | None,
    reason: str,
    force: bool,
    wait: bool,
    timeout: float,
) -> int:
    """Reject the approval step RUN_ID waits on: the step fails (not retried) and the
    run's completed steps are compensated.

    \b
    Examples:
      fluxcelery reject 3f2a9c1e --by ann --reason "amount above the limit"
    """
    who = _decider(by)
    run_id = cli_obj.resolve_run_id(run_id)
    cli_obj.definitions_for(run_id)
    handle = cli_obj.engine().reject(run_id, who, reason, force=force)
    return follow_run(cli_obj, handle, f"rejected by {who}", wait, timeout)
