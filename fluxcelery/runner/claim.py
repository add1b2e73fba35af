"""Load a run and start its step in one round trip, where the store can (``ClaimingStorage``).

A Celery step task knows which workflow and step it runs before it reads anything; in the
plain case (the run is running at that step or waiting to start, the step is pending, no
``when`` condition) the store starts the step in the same statement that loads the run.
Everything else goes the usual way, from the loaded run, at no extra cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import FluxError
from .records import RunState, utcnow
from .states import RunStatus, StepStatus
from .storage.base import StepClaim
from .trace.event import TraceEvent, new_event_id

if TYPE_CHECKING:
    from .runner import StepRunner


def load_claiming(
    runner: StepRunner,
    run_id: str,
    index: int,
    workflow: str | None,
    task_id: str | None,
    worker: str | None,
    outage: bool,
) -> tuple[RunState | None, bool]:
    """Load the run; where the store can, start step ``index`` in the same statement.
    Returns the run (as it is after the claim) and whether the step was claimed."""
    store = runner.claiming
    if workflow is None or outage or store is None:
        return runner.storage.load_run(run_id), False
    try:
        wf = runner.engine.workflow(workflow)
    except FluxError:
        return runner.storage.load_run(run_id), False  # reported from the loaded run
    sdef = wf.steps[index] if 0 <= index < len(wf.steps) else None
    if sdef is None or sdef.when is not None:
        return runner.storage.load_run(run_id), False
    now = utcnow()
    claim = StepClaim(
        index=index,
        workflow=wf.name,
        step=sdef.name,
        kind=sdef.kind,
        definition_hash=wf.definition_hash,
        max_attempts=runner.max_attempts(sdef),
        task_id=task_id,
        worker=worker,
        event_id=new_event_id(),
        now=now,
        start_event_id=new_event_id(),
    )
    state, claimed = store.load_and_claim(run_id, claim)
    if state is None or not claimed:
        return state, False
    # The store applied exactly this (see ClaimingStorage); mirror it in memory.
    events = []
    if state.status == RunStatus.PENDING:
        state.status = RunStatus.RUNNING
        events.append(
            TraceEvent.make(
                "workflow:start",
                state.id,
                state.workflow,
                id=claim.start_event_id,
                ts=now,
                status="running",
                task_id=task_id,
                worker=worker,
                meta={"input": runner.engine.redact(state.input)},
            )
        )
    step = state.steps[index]
    step.status = StepStatus.RUNNING
    step.attempts += 1
    step.task_id = task_id
    step.started_at = now
    step.finished_at = None
    state.version += 1
    state.updated_at = now
    events.append(
        TraceEvent.make(
            "step:start",
            state.id,
            state.workflow,
            id=claim.event_id,
            ts=now,
            status="running",
            step=sdef.name,
            step_index=index,
            kind=sdef.kind,
            attempt=step.attempts,
            max_attempts=claim.max_attempts,
            task_id=task_id,
            worker=worker,
        )
    )
    runner.publish(events)
    return state, True
