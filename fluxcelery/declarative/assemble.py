"""From a checked document to a ``Workflow``, through the same builder Python code uses.

Two passes: ``plan`` resolves every import path and compiles every expression, adding a
problem for each that fails (so all are reported together); only a plan with no problem is
handed to the builder, which then has nothing left to refuse. Building through
``workflow()``/``.step()``/... is what makes a file and the same workflow written in Python
one definition, with one definition hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.builder import Branch, Workflow, branch, workflow
from ..core.errors import DefinitionError
from ..core.policy import Backoff
from .document import Document, PathKey
from .expressions import ExpressionError, compile_condition
from .references import Resolver, UnresolvedPath
from .schema import BRANCH_KINDS, KINDS
from .structure import key_label

#: Keys whose import path must name an exception class (one, or a list).
_EXCEPTION_KEYS = ("retry_on", "no_retry_on")


@dataclass
class Planned:
    """One step of the file, resolved: its builder call and that call's arguments."""

    kind: str
    name: str
    path: PathKey
    handler: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    branches: list[tuple[str, list[Planned]]] = field(default_factory=list)


class Planner:
    """Resolves one document; every failure becomes a problem of ``doc``."""

    def __init__(self, doc: Document, bad: set[PathKey]) -> None:
        self.doc = doc
        self.bad = bad
        self.resolver = Resolver()
        self.names: dict[str, PathKey] = {}

    def plan(self) -> tuple[Any, list[Planned]]:
        data = self.doc.data if isinstance(self.doc.data, dict) else {}
        spec = self.reference(("input",), data.get("input"), "input")
        steps = data.get("steps") if isinstance(data.get("steps"), list) else []
        planned = [self.entry(("steps", i), entry, KINDS) for i, entry in enumerate(steps or [])]
        return spec, [p for p in planned if p is not None]

    # -- one step -------------------------------------------------------------------------
    def entry(self, path: PathKey, entry: Any, kinds: tuple[str, ...]) -> Planned | None:
        found = [k for k in kinds if isinstance(entry, dict) and k in entry]
        if len(found) != 1:
            return None  # the structure check reported it
        kind = found[0]
        name = entry[kind]
        if not isinstance(name, str) or (*path, kind) in self.bad:
            return None
        self.claim(name, (*path, kind))
        step = Planned(kind, name, path)
        if kind in ("step", "commit", "for_each"):
            step.handler = self.reference((*path, "run"), entry.get("run"), "callable")
            step.options = self.options(path, entry, name)
        if kind == "for_each":
            items = self.reference((*path, "items"), entry.get("items"), "callable")
            step.options.update(items=items, commit=entry.get("item") == "commit")
            if self.usable(path, entry, "max_concurrency", (int, float)):
                step.options["max_concurrency"] = int(entry["max_concurrency"])
        elif kind == "approval":
            step.options = self.approval(path, entry)
        elif kind == "parallel":
            step.options = self.condition(path, entry, name)
            branches = entry.get("branches")
            for label, items in (branches or {}).items() if isinstance(branches, dict) else ():
                bpath = (*path, "branches", label)
                if not isinstance(items, list):
                    continue
                planned = [self.entry((*bpath, j), e, BRANCH_KINDS) for j, e in enumerate(items)]
                step.branches.append((label, [p for p in planned if p is not None]))
        return step

    def claim(self, name: str, path: PathKey) -> None:
        """Step names are unique across the workflow, branches included."""
        first = self.names.get(name)
        if first is None:
            self.names[name] = path
            return
        line, _ = self.doc.at(first)
        self.doc.problem(path, f"duplicate step name {name!r} (first used on line {line})")

    def options(self, path: PathKey, entry: dict[str, Any], name: str) -> dict[str, Any]:
        """The options ``.step``/``.commit``/``.for_each`` share."""
        out: dict[str, Any] = {}
        if self.usable(path, entry, "retries", (int, float)):
            out["retries"] = int(entry["retries"])  # the schema allows 2.0, not 2.5
        if self.usable(path, entry, "timeout", (int, float, type(None))):
            timeout = entry["timeout"]
            out["timeout"] = None if timeout is None else float(timeout)
        if self.usable(path, entry, "backoff", dict):
            out["backoff"] = self.backoff((*path, "backoff"), entry["backoff"])
        out.update(self.condition(path, entry, name))
        compensate = self.reference((*path, "compensate"), entry.get("compensate"), "callable")
        if compensate is not None:
            out["compensate"] = compensate
        for key in _EXCEPTION_KEYS:
            classes = self.exceptions((*path, key), entry.get(key))
            if classes:
                out[key] = classes
        return {k: v for k, v in out.items() if v is not None or k == "timeout"}

    def approval(self, path: PathKey, entry: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("policy", "compensate"):
            out[key] = self.reference((*path, key), entry.get(key), "callable")
        approvers = entry.get("approvers")
        if isinstance(approvers, list) and (*path, "approvers") not in self.bad:
            out["approvers"] = list(approvers)
        else:
            out["approvers"] = self.reference((*path, "approvers"), approvers, "callable")
        if self.usable(path, entry, "timeout", (int, float)):
            out["timeout"] = float(entry["timeout"])
        return {k: v for k, v in out.items() if v is not None}

    def condition(self, path: PathKey, entry: dict[str, Any], name: str) -> dict[str, Any]:
        if not self.usable(path, entry, "when", str):
            return {}
        try:
            return {"when": compile_condition(entry["when"], name)}
        except ExpressionError as exc:
            self.doc.problem((*path, "when"), f"'when': {exc}")
            return {}

    def backoff(self, path: PathKey, value: dict[str, Any]) -> Backoff | None:
        if any((*path, key) in self.bad for key in value) or path in self.bad:
            return None
        try:
            given: dict[str, Any] = {k: v if k == "jitter" else float(v) for k, v in value.items()}
            return Backoff(**given)
        except (DefinitionError, TypeError) as exc:
            self.doc.problem(path, f"'backoff': {exc}")
            return None

    # -- values ---------------------------------------------------------------------------
    def usable(self, path: PathKey, entry: dict[str, Any], key: str, kind: Any) -> bool:
        """Whether ``entry[key]`` is given and passed the structure check."""
        return (
            key in entry
            and (*path, key) not in self.bad
            and isinstance(entry[key], kind)
            and not (isinstance(entry[key], bool) and kind is not bool)
        )

    def reference(self, path: PathKey, value: Any, expect: str) -> Any:
        if not isinstance(value, str) or path in self.bad:
            return None
        try:
            return self.resolver.resolve(value, expect)
        except UnresolvedPath as exc:
            self.doc.problem(path, f"{key_label(path)}: {exc}")
            return None

    def exceptions(self, path: PathKey, value: Any) -> tuple[type[BaseException], ...]:
        paths = [(path, value)] if isinstance(value, str) else []
        if isinstance(value, list):
            paths = [((*path, i), v) for i, v in enumerate(value)]
        found = [self.reference(p, v, "exception") for p, v in paths]
        return tuple(c for c in found if c is not None)


def build(name: str, version: Any, spec: Any, planned: list[Planned]) -> Workflow:
    """The workflow, made by the builder from a plan that had no problem."""
    wf = workflow(name, version)
    if spec is not None:
        wf.input(spec)
    for step in planned:
        if step.kind in ("step", "commit"):
            getattr(wf, step.kind)(step.name, step.handler, **step.options)
        elif step.kind == "for_each":
            wf.for_each(step.name, step.handler, **step.options)
        elif step.kind == "approval":
            wf.approval(step.name, **step.options)
        elif step.kind == "parallel":
            wf.parallel(step.name, *map(_branch, step.branches), **step.options)
    return wf


def _branch(layout: tuple[str, list[Planned]]) -> Branch:
    label, steps = layout
    made = branch(label)
    for step in steps:
        getattr(made, step.kind)(step.name, step.handler, **step.options)
    return made


def assemble(doc: Document, bad: set[PathKey]) -> Workflow | None:
    """The workflow of ``doc``, or None when ``doc.problems`` says why not."""
    spec, planned = Planner(doc, bad).plan()
    data = doc.data if isinstance(doc.data, dict) else {}
    if doc.problems or not isinstance(data.get("name"), str):
        return None
    try:
        return build(data["name"], data.get("version"), spec, planned)
    except DefinitionError as exc:  # a rule the plan does not know: still one problem
        doc.problem((), str(exc))
        return None


__all__ = ["Planned", "Planner", "assemble", "build"]
