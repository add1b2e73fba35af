"""Where workflows come from: the one place ``FLUX_WORKFLOWS`` entries are imported.

An entry is a module (``myapp.flows``, imported) or a workflow file (``flows/refund.yaml``,
``.yml`` or ``.json``, loaded with ``load_workflow``; a relative path is taken from the
current directory). Workers, the CLI, the AMQP consumer and the HTTP producer all go
through here, so each accepts both. A file is loaded once per process, as a module is
imported once.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable
from pathlib import Path

from ..core.builder import Workflow
from .loader import load_workflow

#: The suffixes that make an entry a workflow file rather than a module name.
FILE_SUFFIXES = (".yaml", ".yml", ".json")

_loaded: dict[Path, Workflow] = {}
_lock = threading.Lock()


def is_workflow_file(name: str) -> bool:
    """Whether ``name`` names a workflow file (by its suffix) rather than a module."""
    return name.strip().lower().endswith(FILE_SUFFIXES)


def import_workflow_source(name: str) -> None:
    """Import the module ``name``, or load the workflow file ``name`` (once per process)."""
    if not is_workflow_file(name):
        importlib.import_module(name)
        return
    where = Path(name.strip()).resolve()
    with _lock:
        if where not in _loaded:
            _loaded[where] = load_workflow(name.strip())


def import_workflow_sources(names: Iterable[str]) -> list[str]:
    """Import or load every entry of ``names`` (``FLUX_WORKFLOWS``), in order."""
    done = []
    for name in names:
        import_workflow_source(name)
        done.append(name)
    return done


__all__ = ["FILE_SUFFIXES", "import_workflow_source", "import_workflow_sources", "is_workflow_file"]
