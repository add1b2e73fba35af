"""Readable terminal output for the ``fluxcelery`` command (rich tables and lines).

Kept apart from ``cli.py`` so that command wiring and presentation change for different
reasons. Every value shown comes from the read models in ``ops.py`` (already redacted);
user strings are wrapped in ``Text`` so that brackets in an error are never read as markup.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

STATUS_STYLES = {
    "completed": "green",
    "running": "cyan",
    "pending": "dim",
    "suspended": "magenta",
    "rolling_back": "yellow",
    "rolled_back": "yellow",
    "failed": "red",
    "cancelled": "dim red",
    "skipped": "dim",
    "compensating": "yellow",
    "compensated": "yellow",
    "compensation_failed": "bold red",
}
CHECK_MARKS = {
    "ok": ("✓", "green"),
    "fail": ("✗", "red"),
    "warn": ("!", "yellow"),
    "skip": ("-", "dim"),
}


def make_console(stderr: bool = False) -> Console:
    """A console for stdout; wide when piped, so ids in tables are never cut."""
    width = None
    if not os.environ.get("COLUMNS"):
        probe = Console(stderr=stderr)
        if not probe.is_terminal:
            width = 200
    return Console(stderr=stderr, highlight=False, width=width, soft_wrap=False)


def status_text(status: str | None) -> Text:
    value = status or ""
    return Text(value, style=STATUS_STYLES.get(value, ""))


def fmt_ms(ms: int | float | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{int(ms)} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{int(ms // 60_000)} min {int(ms % 60_000 // 1000)} s"


def fmt_ts(value: str | None) -> str:
    """ISO 8601 as ``YYYY-MM-DD HH:MM:SS.mmm`` (UTC), short enough for a table cell."""
    if not value:
        return ""
    text = value.replace("T", " ").replace("Z", "").split("+")[0]
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:3]}"
    return text


def _cell(value: Any) -> Text:
    return Text("" if value is None else str(value))


def counts_text(counts: Mapping[str, int]) -> Text:
    """``completed 3 · failed 1 · …`` with zero counts left out (total first)."""
    text = Text(f"total {sum(counts.values())}")
    for status, n in counts.items():
        if n:
            text.append("  ·  ")
            text.append(status, style=STATUS_STYLES.get(status, ""))
            text.append(f" {n}")
    return text


def runs_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for col in ("id", "workflow", "status", "step", "progress", "created", "duration", "error"):
        table.add_column(col, no_wrap=col in ("id", "created"), overflow="fold")
    for r in rows:
        version = f" v{r['version']}" if r.get("version") else ""
        table.add_row(
            _cell(r["id"]),
            _cell(f"{r['workflow']}{version}"),
            status_text(r["status"]),
            _cell(r.get("current_step") if r["status"] not in ("completed",) else ""),
            _cell(f"{r['steps_done']}/{r['steps_total']}"),
            _cell(fmt_ts(r.get("created_at"))),
            _cell(fmt_ms(r.get("duration_ms"))),
            _cell(r.get("error")),
        )
    return table


def steps_table(steps: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for col in ("#", "name", "kind", "status", "attempts", "duration", "task_id", "error"):
        table.add_column(col, overflow="fold", justify="right" if col in ("#",) else "left")
    for s in steps:
        attempts = str(s.get("attempts") or 0)
        if s.get("compensation_attempts"):
            attempts += f" (undo {s['compensation_attempts']})"
        waiting = f"waiting for {s['waiting_for']!r}" if s.get("status") == "suspended" else None
        table.add_row(
            _cell(s.get("index")),
            _cell(s.get("name")),
            _cell(s.get("kind")),
            status_text(s.get("status")),
            _cell(attempts),
            _cell(fmt_ms(s.get("duration_ms"))),
            _cell(s.get("task_id")),
            _cell(s.get("error") or waiting),
        )
    return table


def trace_table(rows: Sequence[Mapping[str, Any]], *, with_run: bool = True) -> Table:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    cols = ["ts"]
    if with_run:
        cols += ["run", "workflow"]
    cols += ["type", "step", "attempt", "status", "duration", "error"]
    for col in cols:
        table.add_column(col, no_wrap=col in ("ts", "run", "type"), overflow="fold")
    for e in rows:
        attempt = ""
        if e.get("attempt") is not None:
            attempt = str(e["attempt"])
            if e.get("max_attempts"):
                attempt += f"/{e['max_attempts']}"
        cells: list[Text] = [_cell(fmt_ts(e.get("ts")))]
        if with_run:
            cells += [_cell(e.get("run_id")), _cell(e.get("workflow"))]
        cells += [
            _cell(e.get("type")),
            _cell(e.get("step")),
            _cell(attempt),
            status_text(e.get("status")),
            _cell(fmt_ms(e.get("duration_ms"))),
            _cell(e.get("error")),
        ]
        table.add_row(*cells)
    return table


def run_header(run: Mapping[str, Any]) -> Text:
    """Who, what state, when, and why it failed: the lines above a run's steps."""
    version = f" v{run['workflow_version']}" if run.get("workflow_version") else ""
    text = Text()
    text.append(f"Run {run['id']}", style="bold")
    text.append(f"  {run['workflow']}{version}  ")
    text.append_text(status_text(run["status"]))
    text.append(f"  ({run.get('executor', 'local')})\n")
    text.append(f"created {fmt_ts(run.get('created_at'))}")
    if run.get("finished_at"):
        text.append(f"  finished {fmt_ts(run['finished_at'])}")
    if run.get("duration_ms") is not None:
        text.append(f"  duration {fmt_ms(run['duration_ms'])}")
    if run.get("error"):
        text.append("\nerror: ", style="red")
        text.append(str(run["error"]))
    definition = run.get("definition")
    if definition is not None and not definition.get("matches_run", True):
        text.append(
            "\nnote: the workflow definition changed since this run started "
            "(retry/signal need --force)",
            style="yellow",
        )
    return text


def json_line(label: str, value: Any) -> Text:
    import json

    text = Text()
    text.append(f"{label}: ", style="bold")
    text.append(json.dumps(value, ensure_ascii=False, default=str))
    return text


def run_view(run: Mapping[str, Any], *, trace: bool = True) -> Group:
    """A run's header, input, data, steps table and (optionally) its trace."""
    parts: list[Any] = [run_header(run)]
    parts.append(json_line("input", run.get("input")))
    if run.get("data"):
        parts.append(json_line("data", run["data"]))
    parts.append(Text(""))
    parts.append(steps_table(run.get("steps", [])))
    if trace and run.get("traces") is not None:
        parts.append(Text(f"\ntrace ({len(run['traces'])} events)", style="bold"))
        parts.append(trace_table(run["traces"], with_run=False))
    return Group(*parts)


def check_line(name: str, status: str, detail: str, fix: str | None) -> Text:
    mark, style = CHECK_MARKS.get(status, ("?", ""))
    text = Text(f"{mark} ", style=style)
    text.append(f"{name:<12}", style="bold")
    text.append(detail)
    if fix:
        text.append(f" — fix: {fix}", style="yellow" if status != "fail" else "red")
    return text


def bullet_lines(lines: Iterable[str]) -> Text:
    return Text("\n".join(f"  {line}" for line in lines))
