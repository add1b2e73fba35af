"""``load_workflow(path)``: a YAML or JSON workflow file, checked whole, as a ``Workflow``.

Loading reads the file (never executing anything in it), checks its structure against the
shipped JSON Schema, imports the handler modules it names (the only side effect), compiles
its ``when`` expressions and checks its ``schedules``, and only then builds the workflow
with the builder, which registers it as ``workflow()`` does, and declares its schedules with
``schedule()``. Every problem is reported at once, each as ``file:line:col: message``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.builder import Workflow
from ..schedules.definition import Schedule
from .extra import require_yaml_extra
from .problems import Problem, WorkflowFileError


@dataclass(frozen=True)
class Checked:
    """What checking one file found: its workflow (and the schedules it declared), or the
    problems that stopped it."""

    file: str
    workflow: Workflow | None = None
    problems: tuple[Problem, ...] = field(default_factory=tuple)
    schedules: tuple[Schedule, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.workflow is not None and not self.problems


def check_workflow_file(path: str | os.PathLike[str]) -> Checked:
    """Check (and build) the workflow in ``path``; ``MissingExtra`` without the ``yaml``
    extra. Problems are returned, not raised: ``fluxcelery validate`` prints them."""
    require_yaml_extra()
    # The modules below import the optional packages just checked for.
    from .assemble import assemble
    from .document import read_document
    from .schedules import declare_schedules, plan_schedules
    from .structure import check_structure

    shown = os.fspath(path)
    doc = read_document(Path(shown), shown)
    wf = None
    schedules: tuple[Schedule, ...] = ()
    if not doc.problems:
        bad = check_structure(doc)
        planned = plan_schedules(doc, bad)
        wf = assemble(doc, bad)
        if wf is not None:
            schedules = declare_schedules(doc, wf, planned)
    return Checked(shown, wf, tuple(sorted(set(doc.problems))), schedules)


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """The workflow defined in a ``.yaml``/``.yml``/``.json`` file (SPEC section 15), its
    ``schedules`` declared (SPEC section 14).

    Raises ``WorkflowFileError`` (a ``DefinitionError``) listing every problem of the file
    as ``file:line:col: message``, and ``MissingExtra`` when the ``yaml`` extra is not
    installed (``pip install 'fluxcelery[yaml]'``).
    """
    checked = check_workflow_file(path)
    if checked.workflow is None or checked.problems:
        raise WorkflowFileError(checked.file, list(checked.problems))
    return checked.workflow


__all__ = ["Checked", "check_workflow_file", "load_workflow"]
