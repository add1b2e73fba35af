"""Readable terminal output for the ``fluxcelery`` command (rich tables and lines).

Kept apart from ``cli.py`` so that command wiring and presentation change for different
reasons. Every value shown comes from the read models in ``ops.py`` (already redacted).
Text from storage goes through ``terminal_safe`` (a run's error must not be able to colour,
move or clear the terminal) and into ``Text`` (brackets in an error are never read as
markup). Tables fit the width they are rendered at: every cell stays on one line, cut with
"…", and a narrow terminal gets fewer columns; ``--json`` has everything in full.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..core.records import describe_progress
from ..outline import (
    describe_counts,
    items_of,
    outline,
    own_traceback,
    step_label,
    summarize,
)

if TYPE_CHECKING:
    from rich.console import ConsoleOptions, JustifyMethod, RenderResult

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
    "info": ("i", "cyan"),
    "skip": ("-", "dim"),
}
#: A shrinkable column (workflow, step, error) keeps at least this many characters: below
#: that, a table drops its optional columns instead (see ``FitTable``).
MIN_FLEX = 12
#: Characters between two columns (" │ ").
GAP = 3

# C0 and C1 controls (ESC, CR, BEL, CSI…) and the bidirectional overrides that reorder text.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\r": "\\r", "\n": "\\n"}
_LINE_BREAK = re.compile(r"[ \t]*\r?\n[ \t]*")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def terminal_safe(value: Any, *, multiline: bool = False) -> str:
    """``value`` as text that cannot drive the terminal: control characters are shown
    escaped (``\\x1b``, ``\\r``). On one line (line breaks become a space) unless
    ``multiline``, where only ``\\n`` is kept. Not for ``--json``, which JSON escapes."""
    text = "" if value is None else str(value)
    if multiline:
        lines = text.replace("\r\n", "\n").expandtabs(4).split("\n")
        return "\n".join(_CONTROLS.sub(_escape, line) for line in lines)
    return _CONTROLS.sub(_escape, _LINE_BREAK.sub(" ", text.strip(" \t\n")).replace("\t", " "))


def short_id(run_id: str) -> str:
    """A run id as tables show it: the first 8 characters of a UUID (like a short git
    hash); another id whole up to 12 characters, else its first 11 and "…". Any unique
    prefix is accepted where a RUN_ID is taken."""
    if _UUID.match(run_id):
        return run_id[:8]
    return run_id if len(run_id) <= 12 else run_id[:11] + "…"


def make_console(stderr: bool = False) -> Console:
    """A console as wide as the terminal (or ``COLUMNS``); 200 wide when piped, so that
    ``grep`` sees whole cells."""
    width = None
    if not os.environ.get("COLUMNS"):
        probe = Console(stderr=stderr)
        if not probe.is_terminal:
            width = 200
    return Console(stderr=stderr, highlight=False, width=width, soft_wrap=False)


def status_text(status: str | None) -> Text:
    value = terminal_safe(status)
    return Text(value, style=STATUS_STYLES.get(value, ""), no_wrap=True, overflow="ellipsis")


def fmt_ms(ms: int | float | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{int(ms)} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{int(ms // 60_000)} min {int(ms % 60_000 // 1000)} s"


def fmt_ts(value: str | None) -> str:
    """ISO 8601 as ``YYYY-MM-DD HH:MM:SS.mmm`` (UTC)."""
    if not value:
        return ""
    text = value.replace("T", " ").replace("Z", "").split("+")[0]
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:3]}"
    return terminal_safe(text)


def _seconds(value: str | None) -> str:
    return fmt_ts(value)[:19]  # YYYY-MM-DD HH:MM:SS


def _minutes(value: str | None) -> str:
    return fmt_ts(value)[5:16]  # MM-DD HH:MM


def _time(value: str | None) -> str:
    return fmt_ts(value)[11:]  # HH:MM:SS.mmm


def _cell(value: Any) -> Text:
    return Text(terminal_safe(value), no_wrap=True, overflow="ellipsis")


# -- tables that fit ----------------------------------------------------------------------
@dataclass(frozen=True)
class Col:
    """One column: its header, how a row becomes its cell, and whether it may shrink."""

    header: str
    cell: Callable[[Mapping[str, Any]], Text]
    flexible: bool = False
    justify: JustifyMethod = "left"
    #: A flexible column whose cells all fit in this many characters keeps them whole (the
    #: other flexible columns give way first); a layout that cannot leave it that much
    #: gives way to the next one. 0: shrinks like any flexible column.
    keep: int = 0


class FitTable:
    """A table laid out at render time for the width it gets: the first layout whose fixed
    columns leave ``MIN_FLEX`` characters to each flexible one (else the last, narrowest
    layout). Flexible columns shrink, widest first, and cut their cells with "…"."""

    def __init__(self, layouts: Sequence[Sequence[Col]], rows: Sequence[Mapping[str, Any]]):
        self.layouts = layouts
        self.rows = rows

    def build(self, width: int) -> Table:
        for cols in self.layouts:
            cells = [[c.cell(r) for c in cols] for r in self.rows]
            fixed = [
                max([cell_len(c.header), *(cell_len(row[i].plain) for row in cells)])
                for i, c in enumerate(cols)
            ]
            need = sum(
                max(MIN_FLEX, min(w, c.keep)) if c.flexible else w
                for c, w in zip(cols, fixed, strict=True)
            ) + GAP * (len(cols) - 1)
            if need <= width:
                break
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        for c, natural in zip(cols, fixed, strict=True):
            header = Text(c.header, no_wrap=True, overflow="ellipsis")
            kept = c.flexible and natural <= c.keep and need <= width
            table.add_column(
                header,
                no_wrap=not c.flexible,
                justify=c.justify,
                width=natural if kept else None,
            )
        for row in cells:
            table.add_row(*row)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.build(options.max_width)


def counts_text(counts: Mapping[str, int]) -> Text:
    """``completed 3 · failed 1 · …`` with zero counts left out (total first)."""
    text = Text(f"total {sum(counts.values())}")
    for status, n in counts.items():
        if n:
            text.append("  ·  ")
            text.append(status, style=STATUS_STYLES.get(status, ""))
            text.append(f" {n}")
    return text


def _workflow(r: Mapping[str, Any]) -> Text:
    version = r.get("version")
    return _cell(f"{r['workflow']} v{version}" if version else r["workflow"])


def _progress(r: Mapping[str, Any]) -> Text:
    return _cell(f"{r['steps_done']}/{r['steps_total']}")


def _current_step(r: Mapping[str, Any]) -> Text:
    if r["status"] == "completed":
        return _cell("")
    step = r.get("current_step") or ""
    progress = describe_progress(r.get("progress"), message=False)
    return _cell(f"{step} {progress}" if progress else step)


_RUN_ID = Col("id", lambda r: _cell(short_id(str(r["id"]))))
_RUN_STATUS = Col("status", lambda r: status_text(r["status"]))
_RUNS_WIDE = (
    _RUN_ID,
    Col("workflow", _workflow, flexible=True),
    _RUN_STATUS,
    Col("step", _current_step, flexible=True),
    Col("steps", _progress),
    Col("created", lambda r: _cell(_seconds(r.get("created_at")))),
    Col("duration", lambda r: _cell(fmt_ms(r.get("duration_ms")))),
    Col("error", lambda r: _cell(r.get("error")), flexible=True),
)
_RUNS_MEDIUM = (
    _RUN_ID,
    Col("workflow", _workflow, flexible=True),
    _RUN_STATUS,
    Col("step", _current_step, flexible=True),
    Col("created", lambda r: _cell(_minutes(r.get("created_at")))),
    Col("error", lambda r: _cell(r.get("error")), flexible=True),
)
_RUNS_NARROW = tuple(c for c in _RUNS_MEDIUM if c.header != "created")


def runs_table(rows: Sequence[Mapping[str, Any]]) -> FitTable:
    """Runs with short ids: every column from ~110 terminal columns; below, without steps
    done and duration, then (80 columns) without the creation time."""
    return FitTable((_RUNS_WIDE, _RUNS_MEDIUM, _RUNS_NARROW), rows)


def _attempts(s: Mapping[str, Any]) -> Text:
    if "attempts" not in s:  # a branch label, the folded items of a for_each
        return _cell(None)
    attempts = str(s.get("attempts") or 0)
    if s.get("compensation_attempts"):
        attempts += f" (undo {s['compensation_attempts']})"
    return _cell(attempts)


def _step_error(s: Mapping[str, Any]) -> Text:
    decided = s.get("output") if s.get("kind") == "approval" else None
    if isinstance(decided, Mapping) and decided.get("decision") and not s.get("error"):
        why = f": {decided['comment']}" if decided.get("comment") else ""
        return _cell(terminal_safe(f"{decided['decision']} by {decided.get('by')}{why}"))
    if s.get("error"):
        return _cell(s["error"])
    if s.get("status") == "suspended":
        if s.get("kind") == "approval":
            return _cell("waiting for a decision (approve / reject)")
        return _cell(f"waiting for '{terminal_safe(s.get('waiting_for'))}'")
    if s.get("status") == "running" and s.get("progress"):
        return _cell(describe_progress(s["progress"]))
    return _cell(None)


def _tree_prefix(trail: Sequence[bool]) -> str:
    """``├─ ``, ``│  └─ ``…: where an outline line sits under its parallel or for_each."""
    if not trail:
        return ""
    return "".join("   " if last else "│  " for last in trail[:-1]) + (
        "└─ " if trail[-1] else "├─ "
    )


def _outline_rows(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the steps table: the outline's shown lines, each a step dict (or a
    branch label / folded-items line) with the tree drawn before its ``label``."""
    rows: list[dict[str, Any]] = []
    for line in outline(steps):
        if line.folded:
            continue
        if line.kind == "step" and line.step is not None:
            row = dict(line.step)
            if line.step.get("item") is not None:
                row["index"] = None  # the row's storage index means nothing to a reader
            if row.get("kind") == "for_each" and not row.get("error"):
                row["summary"] = summarize(items_of(steps, row.get("index")))
        elif line.kind == "branch":
            row = {"kind": "branch"}
        else:
            row = {"summary": describe_counts(line.counts)}
        row.update(label=line.label, tree=_tree_prefix(line.trail))
        rows.append(row)
    return rows


def _step_name(s: Mapping[str, Any]) -> Text:
    text = Text(s.get("tree") or "", style="dim", no_wrap=True, overflow="ellipsis")
    label = s["label"] if "label" in s else s.get("name")
    text.append(terminal_safe(label), style="bold" if s.get("kind") == "branch" else "")
    return text


def _step_detail(s: Mapping[str, Any]) -> Text:
    if s.get("summary") and not s.get("error") and s.get("status") != "suspended":
        return _cell(s["summary"])
    return _step_error(s)


#: Step names (with their place in the tree) up to this wide are never cut: the detail
#: column gives way first, then the kind column goes.
NAME_KEEP = 26
_STEP_INDEX = Col("#", lambda s: _cell(s.get("index")), justify="right")
_STEP_NAME = Col("name", _step_name, flexible=True, keep=NAME_KEEP)
_STEP_KIND = Col("kind", lambda s: _cell(s.get("kind")))
_STEP_TAIL = (
    Col("status", lambda s: status_text(s.get("status"))),
    Col("attempts", _attempts),
    Col("duration", lambda s: _cell(fmt_ms(s.get("duration_ms")))),
)
_STEP_HEAD = (_STEP_INDEX, _STEP_NAME, _STEP_KIND, *_STEP_TAIL)
#: The error of a failed step, what a suspended one waits for, how far a running one got;
#: the items of a for_each per status.
_STEP_ERROR = Col("detail", _step_detail, flexible=True)


def steps_table(steps: Sequence[Mapping[str, Any]]) -> FitTable:
    """A run's steps as an indented tree (``fluxcelery.outline``): a parallel's branches
    under it, each branch's steps under its name; a for_each's items under it, the first
    ones and the notable ones with a line counting the others. The Celery task ids only
    where they fit (and a step has one)."""
    task_id = Col("task_id", lambda s: _cell(s.get("task_id")))
    rows = _outline_rows(steps)
    layouts: tuple[tuple[Col, ...], ...] = (
        (*_STEP_HEAD, _STEP_ERROR),
        (_STEP_INDEX, _STEP_NAME, *_STEP_TAIL, _STEP_ERROR),
    )
    if any(r.get("task_id") for r in rows):  # an in-process run has none: no empty column
        layouts = ((*_STEP_HEAD, task_id, _STEP_ERROR), *layouts)
    return FitTable(layouts, rows)


def _attempt(e: Mapping[str, Any]) -> Text:
    if e.get("attempt") is None:
        return _cell(None)
    attempt = str(e["attempt"])
    if e.get("max_attempts"):
        attempt += f"/{e['max_attempts']}"
    return _cell(attempt)


def _event_detail(e: Mapping[str, Any]) -> Text:
    """An event's error; a progress report's numbers and message."""
    if e.get("type") == "step:progress" and isinstance(e.get("meta"), dict):
        return _cell(describe_progress(e["meta"]))
    return _cell(e.get("error"))


def _event_step(e: Mapping[str, Any]) -> Text:
    """An event's step; ``notify[3]`` for an item's (its ``meta.item``)."""
    meta = e.get("meta")
    item = meta.get("item") if isinstance(meta, dict) else None
    if e.get("step") is None or not isinstance(item, int) or isinstance(item, bool):
        return _cell(e.get("step"))
    return _cell(step_label({"name": e["step"], "item": item}))


def trace_table(rows: Sequence[Mapping[str, Any]], *, with_run: bool = True) -> FitTable:
    """Trace events; narrow: time of day, no workflow, status or duration columns."""
    run = (Col("run", lambda e: _cell(short_id(str(e.get("run_id") or "")))),)
    workflow = (Col("workflow", lambda e: _cell(e.get("workflow")), flexible=True),)
    type_ = Col("type", lambda e: _cell(e.get("type")))
    step = Col("step", _event_step, flexible=True)
    attempt = Col("attempt", _attempt)
    status = Col("status", lambda e: status_text(e.get("status")))
    duration = Col("duration", lambda e: _cell(fmt_ms(e.get("duration_ms"))))
    error = Col("error", _event_detail, flexible=True)
    wide = (
        Col("ts", lambda e: _cell(fmt_ts(e.get("ts")))),
        *(run + workflow if with_run else ()),
        type_,
        step,
        attempt,
        status,
        duration,
        error,
    )
    narrow = (
        Col("ts", lambda e: _cell(_time(e.get("ts")))),
        *(run if with_run else ()),
        type_,
        step,
        attempt,
        *(() if with_run else (status,)),
        error,
    )
    return FitTable((wide, narrow), rows)


# -- a run --------------------------------------------------------------------------------
def run_header(run: Mapping[str, Any]) -> Text:
    """Who, what state, when, and why it failed: the lines above a run's steps."""
    version = f" v{run['workflow_version']}" if run.get("workflow_version") else ""
    text = Text()
    text.append(f"Run {terminal_safe(run['id'])}", style="bold")
    text.append(f"  {terminal_safe(str(run['workflow']) + version)}  ")
    text.append_text(status_text(run["status"]))
    text.append(f"  ({terminal_safe(run.get('executor', 'local'))})\n")
    text.append(f"created {fmt_ts(run.get('created_at'))}")
    if run.get("finished_at"):
        text.append(f"  finished {fmt_ts(run['finished_at'])}")
    if run.get("duration_ms") is not None:
        text.append(f"  ({fmt_ms(run['duration_ms'])})")  # the line fits 80 columns
    if run.get("error"):
        text.append("\nerror: ", style="red")
        text.append(terminal_safe(run["error"], multiline=True))
    definition = run.get("definition")
    if definition is not None and not definition.get("matches_run", True):
        text.append(
            "\nnote: the workflow definition changed since this run started "
            "(retry/signal need --force)",
            style="yellow",
        )
    return text


def json_line(label: str, value: Any) -> Text:
    text = Text()
    text.append(f"{label}: ", style="bold")
    text.append(terminal_safe(json.dumps(value, ensure_ascii=False, default=str)))
    return text


def tracebacks(steps: Sequence[Mapping[str, Any]]) -> list[Text]:
    """The traceback of each step that kept one (its failing attempt's), escaped, in the
    order of the steps table; of a for_each's items, only the shown ones' (``--json`` has
    every one)."""
    out = []
    folded = 0
    for line in outline(steps):
        s = line.step
        if line.kind != "step" or s is None or not own_traceback(steps, s):
            continue  # (a parallel's or for_each's failure is shown with its branch or item)
        if line.folded:
            folded += 1
            continue
        text = Text(f"\nTraceback of step '{terminal_safe(line.label)}':\n", style="bold")
        text.append(terminal_safe(str(s["traceback"]).rstrip(), multiline=True))
        out.append(text)
    if folded:
        out.append(Text(f"\n({folded} more tracebacks of items: see --json)", style="dim"))
    return out


def run_view(run: Mapping[str, Any], *, trace: bool = True) -> Group:
    """A run's header, input, data, steps table, tracebacks and (optionally) its trace."""
    steps = run.get("steps", [])
    parts: list[Any] = [run_header(run)]
    parts.append(json_line("input", run.get("input")))
    if run.get("data"):
        parts.append(json_line("data", run["data"]))
    parts.append(Text(""))
    parts.append(steps_table(steps))
    parts.extend(tracebacks(steps))
    if trace and run.get("traces") is not None:
        parts.append(Text(f"\ntrace ({len(run['traces'])} events)", style="bold"))
        parts.append(trace_table(run["traces"], with_run=False))
    return Group(*parts)


def check_line(name: str, status: str, detail: str, fix: str | None) -> Text:
    mark, style = CHECK_MARKS.get(status, ("?", ""))
    text = Text(f"{mark} ", style=style)
    text.append(f"{name:<12}", style="bold")
    text.append(terminal_safe(detail))
    if fix:
        text.append(f" — fix: {terminal_safe(fix)}", style="yellow" if status != "fail" else "red")
    return text


def bullet_lines(lines: Iterable[str]) -> Text:
    return Text("\n".join(f"  {terminal_safe(line)}" for line in lines))
