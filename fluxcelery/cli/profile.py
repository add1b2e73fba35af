"""``fluxcelery profile``: per step timings, retry and failure rates, queue wait and CPU
against wall time from the stored trace, and a pool, concurrency and timeouts per queue
(the analysis is in ``fluxcelery.profile`` and ``fluxcelery.sizing``)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from ..celery.tasks import step_task_name
from ..core.builder import registered_workflows
from ..core.policy import Defaults
from ..core.records import iso, utcnow
from ..profile import DEFAULT_CAP, Read, WorkflowProfile, first_starts, profile_workflows
from ..profile import read_events as read_trace
from ..sizing import RULES, PoolAdvice, TimeoutAdvice, advise_pools, advise_timeouts
from .context import BUNDLED, EXIT_OK, Cli, CliError, json_option, parse_duration, pass_cli
from .render import Col, FitTable, fmt_ms, make_console, terminal_safe

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_QUEUE = "flux"


@click.command("profile")
@click.option("--workflow", "workflow_name", metavar="NAME", help="Only this workflow.")
@click.option(
    "--since",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="Events of the last 90s, 15m, 24h, 7d… (0: all there are, up to --max-events).",
)
@click.option(
    "--target-rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="RUNS_PER_S",
    help="Size the pools for this many runs per second of each workflow "
    "(default: the rate seen in the trace).",
)
@click.option(
    "--cores",
    type=click.IntRange(min=1),
    metavar="N",
    help="CPU cores of a worker machine (default: this machine's).",
)
@click.option(
    "--max-events",
    type=click.IntRange(min=1),
    default=DEFAULT_CAP,
    show_default=True,
    help="Read at most this many events, the newest (the output says when it stopped).",
)
@json_option
@pass_cli
def profile_command(
    cli_obj: Cli,
    workflow_name: str | None,
    since: str,
    target_rate: float | None,
    cores: int | None,
    max_events: int,
) -> int:
    """How each step runs, and what to run its queue on.

    Per step: attempts, p50/p95/max of their duration, retry and failure rates, queue wait
    (due to started), CPU time against wall time (CPU- or I/O-bound). Per Celery queue: a
    pool kind, a concurrency for --target-rate, and a timeout per step near its p95.

    \b
    Examples:
      fluxcelery profile
      fluxcelery profile --workflow order-fulfillment --since 7d --target-rate 50
      fluxcelery profile --json
    """
    window = parse_duration(since, "--since")
    started = utcnow()
    since_at = started - window if window.total_seconds() > 0 else None
    storage = cli_obj.engine().storage
    read = _read(cli_obj, storage, workflow_name, since_at, max_events)
    due = storage.due_times(first_starts(read.events))
    workflows = profile_workflows(read.events, due)
    configured, note = _configured_timeouts(cli_obj, [w.workflow for w in workflows])
    queue_of = _router(cli_obj)
    machine = cores or os.cpu_count() or 1
    pools = advise_pools(workflows, queue_of, target_rate=target_rate, cores=machine)
    timeouts = advise_timeouts(workflows, configured)
    doc = {
        "window": {
            "since": iso(since_at),
            "until": iso(started),
            "workflow": workflow_name,
            "events": len(read.events),
            "max_events": read.cap,
            "capped": read.capped,
        },
        "target_rate": target_rate,
        "cores": machine,
        "workflows": [w.to_dict() for w in workflows],
        "queues": [p.to_dict() for p in pools],
        "timeouts": [t.to_dict() for t in timeouts],
        "rules": RULES,
        "notes": [note] if note else [],
    }

    def render(console: Console) -> None:
        render_profile(console, doc, workflows, pools, timeouts)

    cli_obj.out(doc, render)
    return EXIT_OK


def _read(
    cli_obj: Cli,
    storage: Any,
    workflow: str | None,
    since: datetime | None,
    cap: int,
) -> Read:
    """Read the trace, with a live count on a terminal's stderr (not with ``--json``)."""
    console = make_console(stderr=True)
    if cli_obj.json or not console.is_terminal:
        return read_trace(storage, workflow=workflow, since=since, cap=cap)
    with console.status("reading trace events…") as status:

        def on_page(n: int) -> None:
            status.update(f"reading trace events… {n:,}")

        return read_trace(storage, workflow=workflow, since=since, cap=cap, on_page=on_page)


def _configured_timeouts(
    cli_obj: Cli, names: Sequence[str]
) -> tuple[dict[tuple[str, str], float | None], str | None]:
    """Each step's configured timeout (the step's, else ``FLUX_DEFAULT_TIMEOUT``) for the
    workflows that can be imported; a note when the configured modules cannot be."""
    note = None
    try:
        cli_obj.import_workflows()
    except CliError as exc:
        note = f"configured timeouts unknown: {exc}"
    for name in names:
        if name in BUNDLED:
            importlib.import_module(BUNDLED[name])
    defaults = Defaults(timeout=cli_obj.settings.default_timeout)
    known = registered_workflows()
    out: dict[tuple[str, str], float | None] = {}
    for name in names:
        wf = known.get(name)
        if wf is None:
            continue
        for sdef in wf.steps:
            out[(name, sdef.name)] = defaults.timeout_of(sdef)
    return out, note


def _router(cli_obj: Cli) -> Callable[[str, str], str]:
    """The queue each step task goes to: the Celery app's router (``task_routes``), else
    its default queue (``FLUX_QUEUE``)."""
    try:
        app = cli_obj.app()
        router = app.amqp.router
        default = str(app.conf.task_default_queue or DEFAULT_QUEUE)
    except Exception:  # a broker extra not installed: the default queue still is a fact
        return lambda wf, step: os.environ.get("FLUX_QUEUE", DEFAULT_QUEUE)

    def queue_of(workflow: str, step: str) -> str:
        queue = router.route({}, step_task_name(workflow, step)).get("queue")
        return str(getattr(queue, "name", queue) or default)

    return queue_of


# -- rendering -------------------------------------------------------------------------------
def _cell(value: Any) -> Text:
    return Text(terminal_safe(value), no_wrap=True, overflow="ellipsis")


def _ms(key: str) -> Callable[[Mapping[str, Any]], Text]:
    return lambda s: _cell(fmt_ms(s.get(key)))


def _pct(key: str) -> Callable[[Mapping[str, Any]], Text]:
    def cell(s: Mapping[str, Any]) -> Text:
        value = s.get(key)
        return _cell("" if value is None else f"{value * 100:.1f}%")

    return cell


_BOUND_STYLES = {"cpu": "yellow", "io": "cyan", "fast": "dim"}


def _bound(s: Mapping[str, Any]) -> Text:
    value = s.get("bound") or "?"
    return Text(value, style=_BOUND_STYLES.get(value, "dim"), no_wrap=True)


def _ratio(s: Mapping[str, Any]) -> Text:
    value = s.get("cpu_ratio")
    return _cell("" if value is None else f"{value:.2f}")


_STEP = Col("step", lambda s: _cell(s["step"]), flexible=True, keep=24)
_WIDE = (
    _STEP,
    Col("kind", lambda s: _cell(s.get("kind"))),
    Col("attempts", lambda s: _cell(s["attempts"]), justify="right"),
    Col("p50", _ms("p50_ms"), justify="right"),
    Col("p95", _ms("p95_ms"), justify="right"),
    Col("max", _ms("max_ms"), justify="right"),
    Col("retry", _pct("retry_rate"), justify="right"),
    Col("fail", _pct("failure_rate"), justify="right"),
    Col("wait p50", _ms("queue_wait_p50_ms"), justify="right"),
    Col("wait p95", _ms("queue_wait_p95_ms"), justify="right"),
    Col("cpu/wall", _ratio, justify="right"),
    Col("core wait", _pct("run_delay_share"), justify="right"),
    Col("bound", _bound),
)
_MEDIUM = tuple(c for c in _WIDE if c.header != "kind")
_NARROW = tuple(c for c in _WIDE if c.header not in ("kind", "max", "wait p50", "core wait"))


def steps_table(rows: Sequence[Mapping[str, Any]]) -> FitTable:
    """A workflow's steps: every column from about 125 terminal columns; below, without the
    kind, then without max, wait p50 and core wait."""
    return FitTable((_WIDE, _MEDIUM, _NARROW), rows)


def render_profile(
    console: Console,
    doc: Mapping[str, Any],
    workflows: Sequence[WorkflowProfile],
    pools: Sequence[PoolAdvice],
    timeouts: Sequence[TimeoutAdvice],
) -> None:
    window = doc["window"]
    since = f"since {window['since']}" if window["since"] else "all stored"
    head = f"{window['events']:,} trace events read ({since})"
    if window["capped"]:
        head += f"; stopped at --max-events {window['max_events']:,}: only the newest were read"
    console.print(Text(head))
    if not workflows:
        console.print(Text("no step attempts in that window: nothing to profile"))
        return
    for wf in workflows:
        rate = f", {wf.observed_rate:.2f} runs/s seen" if wf.observed_rate else ""
        console.print()
        console.print(Text(f"{terminal_safe(wf.workflow)}: {wf.runs} run(s){rate}", "bold"))
        rows = [s.to_dict() for s in wf.steps if s.attempts]
        console.print(steps_table(rows))
    console.print()
    rate = doc["target_rate"]
    basis = f"{rate:g} runs/s of each workflow" if rate else "the rate seen"
    console.print(Text(f"Recommendations (for {basis}; {doc['cores']} cores a machine)", "bold"))
    for pool in pools:
        _render_pool(console, pool, "")
    lines = [t for t in timeouts if t.suggested_s is not None]
    if lines:
        console.print(Text("timeouts (p95 x 1.5, rounded up, at least 1 s):"))
    for t in lines:
        console.print(Text("  " + _timeout_line(t)))
    for note in doc["notes"]:
        console.print(Text(f"note: {terminal_safe(note)}", "yellow"))


def _render_pool(console: Console, pool: PoolAdvice, indent: str) -> None:
    name = terminal_safe(pool.queue)
    if pool.pool is None:
        console.print(Text(f"{indent}queue {name}: no advice: {pool.reason}"))
        return
    what = pool.pool
    if pool.concurrency is not None and pool.pool != "split":
        what += f", {pool.concurrency} in flight"
        if pool.processes and pool.processes > 1:
            unit = "machines" if pool.pool == "prefork" else "processes"
            what += f" = {pool.processes} {unit} x -c {pool.per_process}"
    console.print(Text(f"{indent}queue {name}: {what}", "bold"))
    console.print(Text(f"{indent}  {terminal_safe(pool.reason)}"))
    if pool.command:
        console.print(Text(f"{indent}  {pool.command}", "cyan"))
    if pool.routes:
        routes = ", ".join(f"'{k}': {{'queue': '{v}'}}" for k, v in pool.routes.items())
        console.print(Text(f"{indent}  task_routes = {{{terminal_safe(routes)}}}", "cyan"))
    for part in pool.parts:
        _render_pool(console, part, indent + "  ")


def _timeout_line(t: TimeoutAdvice) -> str:
    step = terminal_safe(f"{t.workflow}.{t.step}")
    line = f"{step}: p95 {fmt_ms(t.p95_ms)} → {t.suggested_s} s"
    if not t.known:
        return line + " (configured: unknown, workflow not importable)"
    configured = "none" if t.configured is None else f"{t.configured:g} s"
    return line + f" (configured {configured}: {t.verdict})"
