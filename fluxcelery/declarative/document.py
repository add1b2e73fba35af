"""Reading a workflow file into plain JSON-like data plus the line and column of every value.

YAML is read with ruamel.yaml's round-trip parser, the one that keeps positions. It never
builds Python objects from tags (``!!python/object`` stays an inert tagged node), and this
module refuses any tag, date, binary or set besides: a workflow file holds maps, lists,
strings, numbers, booleans and null, nothing else. A ``.json`` file is first read by the
standard ``json`` module (so YAML-only syntax in it is an error), then by the YAML parser
for positions (YAML 1.2 reads JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedOrderedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .problems import Problem

#: The suffixes of workflow files, and the format each is read as.
SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
#: Larger files are refused: a workflow is a page of text, not data.
MAX_BYTES = 1_000_000
#: At most this many values once aliases are expanded (a "billion laughs" file stops here).
MAX_NODES = 100_000

PathKey = tuple[str | int, ...]


@dataclass
class Document:
    """A workflow file's data, and where each value (and each map key) starts."""

    file: str
    data: Any = None
    values: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    keys: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def at(self, path: PathKey, *, key: bool = False) -> tuple[int, int]:
        """Where the value at ``path`` starts (its key's position with ``key=True``), or
        the nearest enclosing value's position."""
        if key and path in self.keys:
            return self.keys[path]
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return (1, 1)

    def problem(self, path: PathKey, message: str, *, key: bool = False) -> None:
        line, col = self.at(path, key=key)
        self.problems.append(Problem(line, col, message, self.file))


def read_document(path: Path, shown: str) -> Document:
    """Read ``path`` (named ``shown`` in problems); ``problems`` says why it could not be."""
    doc = Document(shown)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        doc.problems.append(
            Problem(1, 1, f"not a workflow file: use .yaml, .yml or .json, not {path.suffix!r}")
        )
        return _named(doc)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        doc.problems.append(Problem(1, 1, f"cannot read the file: {exc.strerror or exc}"))
        return _named(doc)
    if len(raw) > MAX_BYTES:
        doc.problems.append(Problem(1, 1, f"the file is larger than {MAX_BYTES} bytes"))
        return _named(doc)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        doc.problems.append(Problem(line, col, f"not UTF-8: byte 0x{raw[exc.start]:02x}"))
        return _named(doc)
    if kind == "json":
        try:
            json.loads(text)  # JSON's own rules first: YAML would accept more
        except json.JSONDecodeError as exc:
            doc.problems.append(Problem(exc.lineno, exc.colno, f"invalid JSON: {exc.msg}"))
            return _named(doc)
    _parse(doc, text, kind.upper())
    return _named(doc)


def _named(doc: Document) -> Document:
    doc.problems = [
        Problem(p.line, p.col, p.message, doc.file) if not p.file else p for p in doc.problems
    ]
    return doc


def _parse(doc: Document, text: str, kind: str) -> None:
    yaml = YAML(typ="rt", pure=True)
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        what = exc.problem or exc.context or "cannot be parsed"
        doc.problems.append(Problem(line, col, f"invalid {kind}: {what}"))
        return
    except (YAMLError, RecursionError, ValueError) as exc:
        doc.problems.append(Problem(1, 1, f"invalid {kind}: {exc}"))
        return
    if tree is None:
        doc.problems.append(Problem(1, 1, "the file is empty"))
        return
    doc.values[()] = (1, 1)
    count = [0]
    try:
        doc.data = _plain(doc, tree, (), set(), count)
    except _TooLarge:
        doc.data = None
        doc.problems.append(Problem(1, 1, f"more than {MAX_NODES} values once aliases expand"))


class _TooLarge(Exception):
    pass


#: What YAML calls the values a workflow file may not hold.
_KINDS = {
    "date": "date",
    "datetime": "timestamp",
    "bytes": "binary value",
    "CommentedSet": "set",
    "CommentedOrderedMap": "ordered map (!!omap)",
}


def _plain(doc: Document, node: Any, path: PathKey, open_: set[int], count: list[int]) -> Any:
    """``node`` as plain dict/list/str/int/float/bool/None, recording positions; anything
    else (a tag, a date, a set, a recursive alias) is a problem and becomes None."""
    count[0] += 1
    if count[0] > MAX_NODES:
        raise _TooLarge
    tag = getattr(getattr(node, "tag", None), "value", None)
    if tag is not None:
        doc.problem(path, f"tag {tag!r} is not allowed: a workflow file holds plain values")
        return None
    if isinstance(node, CommentedOrderedMap) or not isinstance(
        node, (CommentedMap, CommentedSeq, str, int, float, type(None))
    ):
        what = _KINDS.get(type(node).__name__, type(node).__name__)
        doc.problem(path, f"a {what} is not allowed here (quote it to make it a string)")
        return None
    if isinstance(node, (CommentedMap, CommentedSeq)):
        if id(node) in open_:
            doc.problem(path, "an alias refers to a value that contains it (recursion)")
            return None
        open_.add(id(node))
        try:
            if isinstance(node, CommentedMap):
                return _plain_map(doc, node, path, open_, count)
            return _plain_seq(doc, node, path, open_, count)
        finally:
            open_.discard(id(node))
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        if not math.isfinite(node):
            doc.problem(path, f"{node!r} is not a finite number")
            return None
        return float(node)
    if isinstance(node, str):
        return str(node)
    return None


def _plain_map(
    doc: Document, node: CommentedMap, path: PathKey, open_: set[int], count: list[int]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        try:
            key_line, key_col = node.lc.key(key)
            value_line, value_col = node.lc.value(key)
        except (KeyError, TypeError, AttributeError):  # a merged key (<<) has no position
            key_line, key_col = value_line, value_col = node.lc.line, node.lc.col
        if not isinstance(key, str) or getattr(getattr(key, "tag", None), "value", None):
            line, col = key_line + 1, key_col + 1
            doc.problems.append(Problem(line, col, f"keys must be strings, got {key!r}"))
            continue
        child = (*path, str(key))
        doc.keys[child] = (key_line + 1, key_col + 1)
        doc.values[child] = (value_line + 1, value_col + 1)
        out[str(key)] = _plain(doc, value, child, open_, count)
    return out


def _plain_seq(
    doc: Document, node: CommentedSeq, path: PathKey, open_: set[int], count: list[int]
) -> list[Any]:
    out: list[Any] = []
    for index, value in enumerate(node):
        child = (*path, index)
        try:
            line, col = node.lc.item(index)
            doc.values[child] = (line + 1, col + 1)
        except (KeyError, TypeError, AttributeError):
            pass
        out.append(_plain(doc, value, child, open_, count))
    return out


__all__ = ["MAX_BYTES", "SUFFIXES", "Document", "PathKey", "read_document"]
