"""The workflows an engine knows by name: its own registrations, then those defined in this
process (``builder.registered_workflows``), and the definition a stored run continues with."""

from __future__ import annotations

from ..core.builder import Workflow, registered_workflows
from ..core.errors import DefinitionChanged, WorkflowNotFound
from ..core.records import RunState


class Catalog:
    def __init__(self) -> None:
        self._own: dict[str, Workflow] = {}

    def register(self, wf: Workflow) -> Workflow:
        """Know ``wf`` by its name from now on (replacing an earlier one of that name)."""
        wf = wf.freeze()
        self._own[wf.name] = wf
        return wf

    def own(self) -> list[Workflow]:
        return list(self._own.values())

    def all(self) -> dict[str, Workflow]:
        known = registered_workflows()
        known.update(self._own)
        return known

    def get(self, name: str) -> Workflow:
        wf = self._own.get(name) or registered_workflows().get(name)
        if wf is None:
            raise WorkflowNotFound(name, list(self.all()))
        return wf.freeze()

    def for_run(self, state: RunState) -> Workflow:
        """The definition a stored run continues with; refuses a changed definition."""
        wf = self.get(state.workflow)
        if state.definition_hash and wf.definition_hash != state.definition_hash:
            raise DefinitionChanged(
                f"Run {state.id} was started with definition {state.definition_hash} of "
                f"workflow {state.workflow!r}; the current definition is "
                f"{wf.definition_hash}. Retry with force=True (CLI: --force) to continue "
                "with the current definition."
            )
        return wf

    def forced(self, state: RunState) -> Workflow:
        """The current definition for a run started with another one (``force=True``): only
        when its steps are the same; the run takes the current hash and version."""
        wf = self.get(state.workflow)
        names = [(s.name, s.kind) for s in state.steps if s.item is None]
        if names != [(s.name, s.kind) for s in wf.steps]:
            raise DefinitionChanged(
                f"Run {state.id}: the steps of {state.workflow!r} changed "
                f"({[n for n, _ in names]} -> {[s.name for s in wf.steps]}); "
                "a run cannot continue across a change of its steps"
            )
        state.definition_hash = wf.definition_hash
        state.workflow_version = wf.version
        return wf
