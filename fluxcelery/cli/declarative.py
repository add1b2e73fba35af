"""``fluxcelery validate FILE...`` and ``fluxcelery schema``: workflow files (SPEC 15).

``validate`` prints every problem as ``FILE:LINE:COL: message`` (the form editors and CI
annotate from) and exits 1; a valid file gets one ``OK`` line with its definition hash (and
the schedules it declares).
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..declarative import Checked, check_workflow_file, schema_text
from .context import EXIT_FAILED, EXIT_OK, Cli, json_option, pass_cli
from .render import terminal_safe


def summary(checked: Checked) -> dict[str, Any]:
    """One file's outcome as ``--json`` shows it."""
    wf = checked.workflow
    return {
        "file": checked.file,
        "ok": checked.ok,
        "workflow": wf.name if wf is not None else None,
        "version": wf.version if wf is not None else None,
        "steps": len(wf.steps) if wf is not None else None,
        "definition_hash": wf.definition_hash if wf is not None else None,
        "schedules": [s.describe() for s in checked.schedules],
        "problems": [
            {"line": p.line, "col": p.col, "message": p.message} for p in checked.problems
        ],
    }


def ok_line(checked: Checked) -> str:
    wf = checked.workflow
    assert wf is not None
    version = f" v{wf.version}" if wf.version else ""
    count = len(wf.steps)
    names = [s.name for s in checked.schedules]
    schedules = (
        f", {len(names)} schedule{'s' if len(names) != 1 else ''} ({', '.join(names)})"
        if names
        else ""
    )
    return (
        f"{checked.file}: OK: workflow {wf.name}{version}, {count} step"
        f"{'s' if count != 1 else ''}{schedules}, definition hash {wf.definition_hash}"
    )


@click.command("validate")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@json_option
@pass_cli
def validate_command(cli_obj: Cli, files: tuple[str, ...]) -> int:
    """Check workflow files (.yaml, .yml, .json): every problem as FILE:LINE:COL: message.

    Exits 1 when a file has a problem. Checking imports the handler modules the files name
    (as loading does) and executes nothing in the files.

    \b
    Examples:
      fluxcelery validate workflows/order.yaml
      fluxcelery --json validate flows/*.yaml
    """
    results = [check_workflow_file(name) for name in files]
    if cli_obj.json:
        out = {"ok": all(r.ok for r in results), "files": [summary(r) for r in results]}
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for checked in results:
            if checked.ok:
                click.echo(terminal_safe(ok_line(checked)))
            for problem in checked.problems:
                click.echo(terminal_safe(str(problem)))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


@click.command("schema")
def schema_command() -> int:
    """Print the JSON Schema (draft 2020-12) of workflow files, for editors and CI.

    \b
    Examples:
      fluxcelery schema > flux-workflow.schema.json
    """
    click.echo(schema_text(), nl=False)
    return EXIT_OK


__all__ = ["schema_command", "validate_command"]
