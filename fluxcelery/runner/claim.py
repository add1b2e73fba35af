"""Load a run and start its step in one round trip, where the store can (``ClaimingStorage``).

A Celery step task knows which workflow and step it runs before it reads anything; in the
plain case (the run is running at that step or waiting to start, the step is pending, no
``when`` condition) the store starts the step in the same statement that loads the run.
Everything else goes the usual way, from the loaded run, at no extra cost.
"""

from __future__ import annotations

from ..core import transitions as t
from ..core.builder import StepDef, Workflow
from ..core.errors import FluxError
from ..core.records import RunState
from ..core.states import RunStatus
from ..storage.base import StepClaim
from ..trace.event import new_event_id
from .runtime import VIEW_WAITING, Runtime


def load_claiming(
    rt: Runtime,
    run_id: str,
    index: int,
    workflow: str | None,
    task_id: str | None,
    worker: str | None,
    outage: bool,
    definition: int | None = None,
) -> tuple[RunState | None, bool]:
    """Load the run; where the store can, start step ``index`` in the same statement.
    Returns the run (as it is after the claim) and whether the step was claimed.
    ``definition``: for a for_each item (a row past the defined steps), its for_each's
    index."""
    store = rt.claiming
    if workflow is None:
        return rt.storage.load_run(run_id), False
    try:
        wf = rt.catalog.get(workflow)
    except FluxError:
        return rt.storage.load_run(run_id), False  # reported from the loaded run
    if index >= len(wf.steps):  # a for_each item: its own row, not every item
        group = wf.steps[definition] if definition is not None else None
        if outage or group is None or not hasattr(store, "load_row_claiming"):
            return rt.load_row(run_id, index, wf), False
        return _claim_item(rt, run_id, index, group, wf, task_id, worker)
    if outage or store is None:
        return rt.storage.load_run(run_id), False
    sdef = wf.steps[index] if 0 <= index < len(wf.steps) else None
    if sdef is None or sdef.when is not None or sdef.is_group or sdef.parent is not None:
        # A group step fans out, and its branch steps start inside it: the usual way.
        return rt.storage.load_run(run_id), False
    now = rt.clock()
    claim = StepClaim(
        index=index,
        workflow=wf.name,
        step=sdef.name,
        kind=sdef.kind,
        definition_hash=wf.definition_hash,
        max_attempts=rt.defaults.max_attempts(sdef),
        task_id=task_id,
        worker=worker,
        event_id=new_event_id(),
        now=now,
        start_event_id=new_event_id(),
    )
    state, claimed = store.load_and_claim(run_id, claim)
    if state is None or not claimed:
        return state, False
    # The store applied exactly these transitions (see ClaimingStorage): mirror them in
    # memory, with the event ids and time it used.
    events = []
    if state.status == RunStatus.PENDING:
        meta = {"input": rt.redact(state.input)}
        started = t.start_run(
            state, meta=meta, task_id=task_id, worker=worker, at=now, event_id=claim.start_event_id
        )
        events.extend(started.events)
    step = t.start_step(
        state,
        index,
        attempt=state.steps[index].attempts + 1,
        max_attempts=claim.max_attempts,
        task_id=task_id,
        worker=worker,
        at=now,
        event_id=claim.event_id,
    )
    events.extend(step.events)
    state.version += 1
    state.updated_at = now
    rt.notifier.publish(events)
    return state, True


def _claim_item(
    rt: Runtime,
    run_id: str,
    index: int,
    group: StepDef,
    wf: Workflow,
    task_id: str | None,
    worker: str | None,
) -> tuple[RunState | None, bool]:
    """A for_each item's task: read its row view and start it in one statement (see
    ``SqlStorage.load_row_claiming``), then mirror the start in memory."""
    now = rt.clock()
    max_attempts = rt.defaults.max_attempts(group)
    claim = StepClaim(
        index=index,
        workflow=wf.name,
        step=group.name,
        kind="commit" if group.item_commit else "step",
        definition_hash=wf.definition_hash,
        max_attempts=max_attempts,
        task_id=task_id,
        worker=worker,
        event_id=new_event_id(),
        now=now,
        start_event_id=new_event_id(),
    )
    waiting = VIEW_WAITING if group.max_concurrency else 0
    state, claimed = rt.claiming.load_row_claiming(  # type: ignore[union-attr]
        run_id, claim, len(wf.steps), waiting
    )
    if state is None or not claimed:
        return state, False
    row = state.steps[index]
    started = t.start_step(
        state,
        index,
        attempt=row.attempts + 1,
        max_attempts=max_attempts,
        task_id=task_id,
        worker=worker,
        at=now,
        event_id=claim.event_id,
    )
    state.claims += 1  # counted apart from version (see postgres.ROW_CLAIM_SQL)
    state.updated_at = now
    rt.notifier.publish(started.events)
    return state, True
