"""A run's steps as an outline: how ``show``, the Flower tab and the viewer group them.

Stored rows are flat (SPEC section 11): a ``.parallel`` row is followed by its branches'
rows (each with ``branch`` and ``parent``), and the item rows of a ``.for_each`` come at
the end of the run's rows (each with ``item`` and ``parent``). ``outline`` puts every row
under the row it belongs to: a branch label line, then that branch's steps, under their
parallel row; the items, in item order, under their for_each row. With many items only the
first ones and the notable ones (failed, running, suspended…) are shown, the others are
``folded`` and counted on one ``more`` line. Pure functions over the JSON-ready step dicts
of ``ops.run_detail`` (``StepState.to_dict``); nothing here renders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .core.builder import GROUP_KINDS

__all__ = [
    "GROUP_KINDS",
    "ITEMS_ALL",
    "ITEMS_HEAD",
    "ITEMS_NOTABLE",
    "NOTABLE",
    "Line",
    "count_statuses",
    "describe_counts",
    "items_of",
    "outline",
    "own_traceback",
    "step_label",
    "summarize",
]

#: A for_each with at most this many items shows all of them.
ITEMS_ALL = 15
#: Above ``ITEMS_ALL``: the first items shown…
ITEMS_HEAD = 10
#: …plus at most this many notable items after them (in item order); the rest are folded.
ITEMS_NOTABLE = 5
#: Statuses of an item worth showing even when its neighbours are folded.
NOTABLE = frozenset({"failed", "running", "suspended", "compensating", "compensation_failed"})
#: The order in which counts per status are written ("985 completed, 5 failed").
STATUS_ORDER = (
    "completed",
    "running",
    "suspended",
    "pending",
    "skipped",
    "failed",
    "compensating",
    "compensated",
    "compensation_failed",
)


@dataclass(frozen=True)
class Line:
    """One line of the outline.

    ``kind`` is ``"step"`` (a stored row: ``step`` is its dict), ``"branch"`` (the label of
    a parallel's branch: ``branch`` is its name) or ``"more"`` (the folded items of a
    for_each: ``counts`` per status)."""

    kind: Literal["step", "branch", "more"]
    #: What the name column shows: ``book``, ``reserve-flight``, ``notify[3]``, ``flight``,
    #: ``… 990 more items``.
    label: str
    #: 0 for top-level rows, 1 under a parallel or for_each row, 2 in a branch.
    depth: int = 0
    step: Mapping[str, Any] | None = None
    #: The index of the parallel/for_each row this line is under (None at the top).
    parent: int | None = None
    branch: str | None = None
    #: An item hidden unless the reader unfolds its for_each (never true for other lines).
    folded: bool = False
    #: For each level from 1 to ``depth``: whether this line (or its ancestor at that level)
    #: is the last one shown under its parent; draws ``├─``/``└─``/``│``.
    trail: tuple[bool, ...] = ()
    #: The folded items per status (``more`` lines only).
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def hidden(self) -> int:
        """How many items a ``more`` line stands for."""
        return sum(self.counts.values())


def step_label(step: Mapping[str, Any]) -> str:
    """A row's name as the pages show it: ``notify[3]`` for an item, else its name."""
    name = str(step.get("name") or "")
    item = step.get("item")
    return name if item is None else f"{name}[{item}]"


def count_statuses(steps: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Rows per status, in ``STATUS_ORDER`` (unknown statuses last), zeros left out."""
    counts: dict[str, int] = {}
    for s in steps:
        status = str(s.get("status") or "")
        counts[status] = counts.get(status, 0) + 1
    rank = {status: i for i, status in enumerate(STATUS_ORDER)}
    return dict(sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def describe_counts(counts: Mapping[str, int]) -> str:
    """``985 completed, 5 failed``."""
    return ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items() if n)


def summarize(rows: Sequence[Mapping[str, Any]], noun: str = "item") -> str | None:
    """``3 items completed``, ``1000 items: 985 completed, 5 failed``; None without rows."""
    if not rows:
        return None
    counts = count_statuses(rows)
    what = f"{len(rows)} {noun}{'' if len(rows) == 1 else 's'}"
    if len(counts) == 1:
        return f"{what} {next(iter(counts)).replace('_', ' ')}"
    return f"{what}: {describe_counts(counts)}"


def items_of(steps: Sequence[Mapping[str, Any]], index: Any) -> list[Mapping[str, Any]]:
    """The item rows of the for_each row ``index``, in item order."""
    items = [s for s in steps if s.get("parent") == index and s.get("item") is not None]
    return sorted(items, key=lambda s: s.get("item") or 0)


def own_traceback(steps: Sequence[Mapping[str, Any]], step: Mapping[str, Any]) -> str | None:
    """A row's traceback, unless it is a parallel's or for_each's failure that one of its
    branch steps or items already shows (the same text, kept once)."""
    text = step.get("traceback")
    if not text or step.get("kind") not in GROUP_KINDS:
        return text or None
    below = (s for s in steps if s.get("parent") == step.get("index") and s is not step)
    return None if any(s.get("traceback") == text for s in below) else str(text)


def outline(
    steps: Sequence[Mapping[str, Any]],
    *,
    items_all: int = ITEMS_ALL,
    items_head: int = ITEMS_HEAD,
    items_notable: int = ITEMS_NOTABLE,
) -> list[Line]:
    """Every row of ``steps`` once, each under the row it belongs to, in reading order.

    A row whose ``parent`` names no row of the run is shown at the top, so that nothing is
    ever lost from a table. Item rows are sorted by ``item``; branch rows keep their order.
    """
    by_index = {s.get("index"): s for s in steps}
    children: dict[Any, list[Mapping[str, Any]]] = {}
    top: list[Mapping[str, Any]] = []
    for s in steps:
        parent = s.get("parent")
        if parent is not None and parent in by_index and parent != s.get("index"):
            children.setdefault(parent, []).append(s)
        else:
            top.append(s)
    fold = (items_all, items_head, items_notable)
    nodes = [_Node.of(s, children, fold, depth=0, parent=None, branch=None) for s in top]
    lines: list[Line] = []
    _emit(nodes, (), lines)
    return lines


@dataclass
class _Node:
    line: Line
    children: list[_Node]

    @classmethod
    def of(
        cls,
        step: Mapping[str, Any],
        children: Mapping[Any, list[Mapping[str, Any]]],
        fold: tuple[int, int, int],
        *,
        depth: int,
        parent: int | None,
        branch: str | None,
        folded: bool = False,
    ) -> _Node:
        line = Line(
            "step",
            step_label(step),
            depth,
            step,
            parent=parent,
            branch=branch if branch is not None else step.get("branch"),
            folded=folded,
        )
        below = children.get(step.get("index"), [])
        if not below:
            return cls(line, [])
        index = step.get("index")
        items = sorted(
            (s for s in below if s.get("item") is not None), key=lambda s: s.get("item") or 0
        )
        lanes: dict[str, list[Mapping[str, Any]]] = {}
        loose: list[Mapping[str, Any]] = []
        for s in below:
            if s.get("item") is not None:
                continue
            if s.get("branch") is not None:
                lanes.setdefault(str(s["branch"]), []).append(s)
            else:
                loose.append(s)
        nodes: list[_Node] = []
        for name, rows in lanes.items():
            label = Line("branch", name, depth + 1, parent=index, branch=name)
            kids = [
                cls.of(s, children, fold, depth=depth + 2, parent=index, branch=name) for s in rows
            ]
            nodes.append(cls(label, kids))
        nodes.extend(
            cls.of(s, children, fold, depth=depth + 1, parent=index, branch=None) for s in loose
        )
        nodes.extend(_items(items, children, fold, depth + 1, index))
        return cls(line, nodes)


def _items(
    items: list[Mapping[str, Any]],
    children: Mapping[Any, list[Mapping[str, Any]]],
    fold: tuple[int, int, int],
    depth: int,
    parent: Any,
) -> list[_Node]:
    """A for_each's item nodes: all of them, or the first and the notable ones shown, the
    others folded, and a ``more`` line counting the folded ones."""
    items_all, items_head, items_notable = fold
    shown: set[int] = set(range(len(items)))
    if len(items) > items_all:
        shown = set(range(min(items_head, len(items))))
        notable = [i for i in range(len(shown), len(items)) if items[i].get("status") in NOTABLE]
        shown.update(notable[:items_notable])
    nodes = [
        _Node.of(s, children, fold, depth=depth, parent=parent, branch=None, folded=i not in shown)
        for i, s in enumerate(items)
    ]
    hidden = [s for i, s in enumerate(items) if i not in shown]
    if hidden:
        counts = count_statuses(hidden)
        label = f"… {len(hidden)} more item{'' if len(hidden) == 1 else 's'}"
        more = Line("more", label, depth, parent=parent, counts=counts)
        nodes.append(_Node(more, []))
    return nodes


def _emit(nodes: list[_Node], trail: tuple[bool, ...], out: list[Line]) -> None:
    visible = [n for n in nodes if not n.line.folded]
    last = visible[-1] if visible else None
    for node in nodes:
        mine = (*trail, node is last) if node.line.depth else ()
        out.append(replace(node.line, trail=mine))
        _emit(node.children, mine, out)
