"""Imports point one way (docs/architecture.md): core ← storage/trace ← runner ← engine ←
celery ← defaults ← cli/web/contrib/ingress, with no import cycle, counting imports inside
functions too (they hid a cycle of 15 modules before the core redesign)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fluxcelery"

#: Layer of each module, by name prefix (longest first wins); lower layers never import
#: higher ones.
LAYERS = [
    ("fluxcelery.version", 0),
    ("fluxcelery.core", 0),
    ("fluxcelery.trace.event", 0),
    ("fluxcelery.settings", 1),
    ("fluxcelery.declarative", 1),  # workflow files: builds through core only
    ("fluxcelery.storage", 1),
    ("fluxcelery.trace", 1),
    ("fluxcelery.runner", 2),
    ("fluxcelery.schedules", 2),  # declarations, tick arithmetic, a tick's run
    ("fluxcelery.schedules.definition", 1),  # schedule() and its registry: core only
    ("fluxcelery.schedules.beat", 4),  # the celery beat scheduler
    ("fluxcelery.engine", 3),
    ("fluxcelery.handle", 3),
    ("fluxcelery.ops", 3),
    ("fluxcelery.profile", 3),
    ("fluxcelery.sizing", 3),
    ("fluxcelery.retention", 3),
    ("fluxcelery.metrics", 3),  # Prometheus metrics: reads storage, served by cli/contrib
    ("fluxcelery.celery", 4),
    ("fluxcelery.defaults", 5),
    ("fluxcelery.cli", 6),
    ("fluxcelery.web", 6),
    ("fluxcelery.contrib", 6),
    ("fluxcelery.ingress", 6),
    ("fluxcelery.testing", 6),  # the pytest plugin and its clock (docs/testing.md)
    ("fluxcelery.__main__", 6),
    ("fluxcelery", 6),  # the package: the public names
]


def layer(module: str) -> int:
    for prefix, rank in sorted(LAYERS, key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} has no layer: add it to LAYERS")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Package modules ``name`` imports at run time (inside functions too; not under
    ``TYPE_CHECKING``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join([*parts, *([base] if base else [])])
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in known else base)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_module_imports_a_layer_above_its_own() -> None:
    wrong = sorted(
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph().items()
        for target in targets
        if layer(target) > layer(name)
    )
    assert wrong == []


def test_there_is_no_import_cycle() -> None:
    edges = {m: {t for t in ts if t != "fluxcelery"} for m, ts in graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            connect(v)
    assert cycles == []


@pytest.mark.parametrize(
    "module",
    ["fluxcelery.core.transitions", "fluxcelery.runner", "fluxcelery.engine", "fluxcelery.cli"],
)
def test_each_layer_imports_on_its_own(module: str) -> None:
    out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
