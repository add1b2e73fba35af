"""Every status change of a run and its steps, by name: the only code that assigns a status.

Each transition checks its edges against the tables in states.py before it changes
anything, changes the run in memory (the ``RunState`` it is given), and returns what it did
as a ``Transition``: the indexes of the steps it touched and the trace events that describe
it. It never talks to storage, Celery or hooks: the caller (runner, compensation, the
engine's signal/retry/cancel, upkeep, the PostgreSQL claim's mirror) collects transitions
into one guarded write and applies the rest once that write has landed.

To add a transition: write a function here that takes the run and what the decision needs
(times are parameters: ``at``), checks every edge it will take before it changes anything,
moves statuses only through ``_run_to``/``_step_to``, and returns ``Transition``; then
table-test it in tests/test_transitions.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..trace.event import TraceEvent
from .errors import InvalidTransition
from .records import RunState, StepState, ms_between
from .states import (
    CANCELLABLE_RUN,
    RunStatus,
    StepStatus,
    check_run_change,
    check_step_transition,
)

#: The kinds of a step that fans out (builder.GROUP_KINDS; not imported: no cycle).
GROUP_KINDS = frozenset({"parallel", "for_each"})

R = RunStatus
S = StepStatus


@dataclass(slots=True)
class Transition:
    """What one transition did: the steps whose rows changed, and its trace events."""

    steps: tuple[int, ...] = ()
    events: list[TraceEvent] = field(default_factory=list)
    #: Step rows this transition added to the run (a for_each's items at fan-out).
    created: tuple[int, ...] = ()


# -- edges -----------------------------------------------------------------------------------
def _run_to(state: RunState, target: RunStatus) -> None:
    check_run_change(state.status, target)
    state.status = target


def _step_to(step: StepState, target: StepStatus) -> None:
    if step.status != target:
        check_step_transition(step.status, target, step.name)
        step.status = target


def _event(state: RunState, type: str, **fields: Any) -> TraceEvent:
    return TraceEvent.make(type, state.id, state.workflow, **fields)


def _with_usage(
    meta: dict[str, Any] | None, usage: dict[str, float] | None
) -> dict[str, Any] | None:
    """An attempt's outcome meta with what its handler used: ``cpu_ms`` (CPU time) and,
    where the OS tells, ``run_delay_ms`` (time it was ready but waited for a core); the
    ``profile`` command tells CPU-bound from I/O-bound steps by them."""
    if not usage:
        return meta
    return {**(meta or {}), **usage}


def _step_event(state: RunState, type: str, step: StepState, **fields: Any) -> TraceEvent:
    if step.parent is not None:  # a branch step or an item: say which (SPEC section 11)
        where = {"branch": step.branch} if step.item is None else {"item": step.item}
        fields["meta"] = {**(fields.get("meta") or {}), **where}
    return TraceEvent.make(
        type,
        state.id,
        state.workflow,
        step=step.name,
        step_index=step.index,
        kind=step.kind,
        **fields,
    )


# -- the run ---------------------------------------------------------------------------------
def start_run(
    state: RunState,
    *,
    meta: dict[str, Any] | None,
    task_id: str | None = None,
    worker: str | None = None,
    at: datetime | None = None,
    event_id: str | None = None,
) -> Transition:
    """A pending run starts (its first step is about to)."""
    _run_to(state, R.RUNNING)
    return Transition(
        events=[
            _event(
                state,
                "workflow:start",
                status="running",
                task_id=task_id,
                worker=worker,
                meta=meta,
                ts=at,
                id=event_id,
            )
        ]
    )


def finish_run(
    state: RunState, status: RunStatus, at: datetime, error: str | None = None
) -> Transition:
    """The run ends: ``completed`` (its error cleared), or ``failed``/``rolled_back`` with
    ``error`` (default: the error it has)."""
    _run_to(state, status)
    state.finished_at = at
    if error is not None:
        state.error = error
    duration = ms_between(state.created_at, at)
    if status == R.COMPLETED:
        state.error = None
        event = _event(state, "workflow:complete", status=status.value, duration_ms=duration, ts=at)
    else:
        event = _event(
            state,
            "workflow:error",
            status=status.value,
            duration_ms=duration,
            error=state.error,
            ts=at,
        )
    return Transition(events=[event])


def cancel_run(
    state: RunState,
    reason: str,
    at: datetime,
    *,
    terminate: bool = False,
    plan: Sequence[int] | None = None,
) -> Transition:
    """Record a cancel: no step starts after it. A suspended step fails with the reason; so
    does a running one whose attempt is ``terminate``d (its writes are discarded). Without
    ``terminate`` a running attempt goes on, and its outcome is recorded when it ends
    (``settle_cancelled_attempt``). ``plan`` (a cancel that compensates): the completed
    steps to compensate; the run goes ``rolling_back`` (its rollback starts now, or once the
    running attempt settled) and ends ``cancelled``."""
    if state.status not in CANCELLABLE_RUN:  # a rollback under way is not cancelled
        raise InvalidTransition(state.status.value, R.CANCELLED.value)
    running = [
        s.name
        for s in state.steps
        if s.status == S.RUNNING and not terminate and s.kind not in GROUP_KINDS
    ]
    compensating = plan is not None and bool(plan or running)
    target = R.ROLLING_BACK if compensating else R.CANCELLED
    check_run_change(state.status, target)  # before any step changes
    error = f"Cancelled: {reason}"
    touched = []
    for s in state.steps:
        if s.status == S.SUSPENDED or (
            s.status == S.RUNNING and (terminate or s.kind in GROUP_KINDS)
        ):
            _step_to(s, S.FAILED)
            s.error = error if s.status == S.SUSPENDED else f"{error} (attempt terminated)"
            s.finished_at = at
            s.wait_deadline = None
            touched.append(s.index)
    _run_to(state, target)
    state.error = error
    state.cancel_reason = reason
    meta: dict[str, Any] = {"reason": reason}
    if terminate:
        meta["terminate"] = True
    if plan is not None:
        meta["compensate"] = True
    if running:
        meta["running"] = running
    events = [_event(state, "workflow:cancel", status=target.value, error=error, ts=at, meta=meta)]
    if target == R.CANCELLED:
        state.finished_at = at
    elif not running:
        events.extend(begin_rollback(state, plan or (), error, at=at).events)
    return Transition(tuple(touched), events)


def settle_cancelled_attempt(
    state: RunState,
    index: int,
    *,
    output: Any = None,
    error: str | None = None,
    traceback: str | None = None,
    started: datetime | None,
    at: datetime,
) -> Transition:
    """The attempt that was running when a cancel was recorded ended (SPEC section 12): its
    outcome (``error`` None: completed with ``output``) is recorded on its step, and the run
    stays where the cancel put it; no later step runs."""
    s = state.steps[index]
    if state.cancel_reason is None and state.status in (R.PENDING, R.RUNNING):
        raise InvalidTransition(
            state.status.value, "cancelled", detail="the run was not cancelled or stopped"
        )
    _step_to(s, S.COMPLETED if error is None else S.FAILED)
    s.output = output if error is None else None
    s.error, s.traceback = error, traceback
    s.finished_at = at
    s.duration_ms = ms_between(started or s.started_at, at)
    event = _step_event(
        state,
        "step:complete" if error is None else "step:error",
        s,
        status=s.status.value,
        attempt=s.attempts,
        duration_ms=s.duration_ms,
        error=error,
        ts=at,
        # Recorded after the run stopped stepping: a cancel, or a sibling branch that failed.
        meta={"after_cancel": True} if state.cancel_reason is not None else {"after_stop": True},
    )
    return Transition((index,), [event])


def begin_rollback(
    state: RunState,
    plan: Sequence[int],
    error: str | None,
    *,
    retry: bool = False,
    at: datetime | None = None,
) -> Transition:
    """Start compensating the steps of ``plan`` (reverse order). ``retry``: a failed
    rollback is tried again (``engine.retry``): its compensators get their attempts back."""
    _run_to(state, R.ROLLING_BACK)
    names = [state.steps[i].name for i in plan]
    if not retry:
        meta: dict[str, Any] = {"plan": names}
        return Transition(
            events=[
                _event(
                    state,
                    "workflow:rollback_start",
                    status="rolling_back",
                    error=error,
                    meta=meta,
                    ts=at,
                )
            ]
        )
    state.finished_at = None
    for i in plan:
        state.steps[i].compensation_attempts = 0
    meta = {"retry": True, "plan": names}
    event = _event(
        state, "workflow:rollback_start", status="rolling_back", error=error, meta=meta, ts=at
    )
    return Transition(tuple(plan), [event])


def hold_rollback(state: RunState, error: str) -> Transition:
    """A branch or item failed while siblings still run: the run stops stepping
    (``rolling_back``) and its rollback starts when the last of them ends
    (``begin_rollback``, or ``finish_run`` with nothing to undo)."""
    _run_to(state, R.ROLLING_BACK)
    state.error = error
    return Transition()


def finish_rollback(state: RunState, at: datetime) -> Transition:
    """Every compensation has run: ``rolled_back`` with the failed step's error, or
    ``failed`` naming the steps whose compensation failed."""
    failed = [s.name for s in state.steps if s.status == S.COMPENSATION_FAILED]
    if state.cancel_reason is not None and not failed:  # a cancel that compensated
        _run_to(state, R.CANCELLED)
        state.finished_at = at
        state.error = f"Cancelled: {state.cancel_reason}"
        meta = {"reason": state.cancel_reason}
        done = _event(state, "workflow:rollback_complete", status="cancelled", ts=at, meta=meta)
        return Transition(events=[done])
    # The failed step keeps the error that started the rollback (state.error may already
    # describe an earlier, retried compensation failure).
    original = next((s.error for s in state.steps if s.status == S.FAILED and s.error), state.error)
    if failed:
        names = ", ".join(repr(n) for n in failed)
        err = f"CompensationError: compensation failed at step {names}; original error: {original}"
        return finish_run(state, R.FAILED, at, err)
    done = _event(state, "workflow:rollback_complete", status="rolled_back", ts=at)
    finished = finish_run(state, R.ROLLED_BACK, at, original)
    return Transition(events=[done, *finished.events])


def reset_for_retry(state: RunState, start: int, at: datetime | None = None) -> Transition:
    """Re-run a failed or rolled-back run from step ``start``. A commit step whose effect
    landed (and was not undone) is kept ``completed``: it never runs again."""
    check_run_change(state.status, R.RUNNING)  # before any step changes
    landed = (S.COMPLETED, S.COMPENSATION_FAILED, S.COMPENSATING)
    touched = []
    for s in state.steps[start:]:
        if s.parent is not None and s.parent < start:
            continue  # an item of an earlier for_each (items are the run's last rows)
        if s.kind == "commit" and s.status in landed:
            if s.status != S.COMPLETED:
                _step_to(s, S.COMPLETED)
                touched.append(s.index)
            continue
        if s.status != S.PENDING or s.attempts:
            _step_to(s, S.PENDING)
            s.reset()
            touched.append(s.index)
    _run_to(state, R.RUNNING)
    state.current_step = start
    state.error = None
    state.finished_at = None
    event = _event(
        state,
        "workflow:start",
        status="running",
        meta={"retry": True, "from_step": state.steps[start].name},
        ts=at,
    )
    return Transition(tuple(touched), [event])


# -- steps -----------------------------------------------------------------------------------
def start_step(
    state: RunState,
    index: int,
    *,
    attempt: int,
    max_attempts: int | None,
    task_id: str | None,
    worker: str | None,
    at: datetime,
    rerun: bool = False,
    event_id: str | None = None,
) -> Transition:
    """An attempt of step ``index`` starts. A step found ``running`` was redelivered (its
    worker died); ``rerun``: the same attempt again, its outcome lost to a database outage."""
    s = state.steps[index]
    redelivered = s.status == S.RUNNING
    _step_to(s, S.RUNNING)
    s.attempts = attempt
    s.task_id = task_id
    s.started_at = at
    s.finished_at = None
    s.progress = None  # each attempt reports its own
    if s.parent is None:  # a branch step or item moves within its group, not the run
        state.current_step = index
    meta = (
        ({"redelivered": True, "outage": True} if rerun else {"redelivered": True})
        if redelivered
        else None
    )
    event = _step_event(
        state,
        "step:start",
        s,
        max_attempts=max_attempts,
        ts=at,
        status="running",
        attempt=attempt,
        task_id=task_id,
        worker=worker,
        meta=meta,
        id=event_id,
    )
    return Transition((index,), [event])


def report_progress(
    state: RunState,
    index: int,
    *,
    done: float,
    total: float | None,
    message: str | None,
    at: datetime,
    max_attempts: int | None = None,
) -> Transition:
    """The running attempt of step ``index`` reports how far it got (``ctx.progress``). Not
    a status change: the step stays ``running``, and the report is stored out of band
    (``Storage.record_progress``) or with the attempt's outcome."""
    s = state.steps[index]
    if s.status != S.RUNNING:
        raise InvalidTransition(
            s.status.value, "running", detail="only a running step reports progress"
        )
    s.progress = {"done": done, "total": total, "message": message, "at": at.isoformat()}
    meta = {"done": done, "total": total, "message": message}
    event = _step_event(
        state,
        "step:progress",
        s,
        ts=at,
        status="running",
        attempt=s.attempts,
        max_attempts=max_attempts,
        meta=meta,
    )
    return Transition((), [event])


def keep_done_step(state: RunState, index: int, at: datetime | None = None) -> Transition:
    """A step already done (a commit kept ``completed`` across a retry) is not run again."""
    s = state.steps[index]
    if s.parent is None:
        state.current_step = index + 1
    event = _step_event(
        state,
        "step:skipped",
        s,
        status=s.status.value,
        meta={"reason": "already completed", "not_rerun": True},
        ts=at,
    )
    return Transition((index,), [event])


def skip_step(
    state: RunState,
    index: int,
    *,
    task_id: str | None,
    worker: str | None,
    at: datetime,
    next_index: int | None = None,
) -> Transition:
    """The step's ``when`` said no (``next_index``: where the run goes on, past a skipped
    ``.parallel``'s branch steps)."""
    s = state.steps[index]
    _step_to(s, S.SKIPPED)
    s.finished_at = at
    if s.parent is None:
        state.current_step = next_index if next_index is not None else index + 1
    counted = _count(state, s, open=-1, in_flight=-1 if s.task_id else 0)
    event = _step_event(
        state, "step:skipped", s, status="skipped", task_id=task_id, worker=worker, ts=at
    )
    return Transition((index, *counted), [event])


def complete_step(
    state: RunState,
    index: int,
    output: Any,
    *,
    attempt: int,
    max_attempts: int | None,
    started: datetime,
    at: datetime,
    task_id: str | None,
    worker: str | None,
    usage: dict[str, float] | None = None,
) -> Transition:
    """The attempt returned ``output``: the step is done and the run moves past it.
    ``usage``: what the attempt's handler used (``CpuMeter.usage``; here and in the other
    outcomes of an attempt: ``suspend_step``, ``fail_attempt``, ``fail_step``), traced in
    ``meta``."""
    s = state.steps[index]
    _step_to(s, S.COMPLETED)
    s.output = output
    s.error = None
    s.traceback = None
    s.finished_at = at
    s.duration_ms = ms_between(started, at)
    if s.parent is None:
        state.current_step = index + 1
    counted = _count(state, s, open=-1, in_flight=-1)
    event = _step_event(
        state,
        "step:complete",
        s,
        max_attempts=max_attempts,
        ts=at,
        status="completed",
        attempt=attempt,
        duration_ms=s.duration_ms,
        task_id=task_id,
        worker=worker,
        meta=_with_usage(None, usage),
    )
    return Transition((index, *counted), [event])


def suspend_step(
    state: RunState,
    index: int,
    signal: str,
    timeout: float | None,
    *,
    attempt: int,
    started: datetime,
    at: datetime,
    task_id: str | None,
    worker: str | None,
    usage: dict[str, float] | None = None,
) -> Transition:
    """The attempt returned ``wait_for(signal)``: the run waits, holding no worker."""
    check_run_change(state.status, R.SUSPENDED)  # before the step changes
    s = state.steps[index]
    _step_to(s, S.SUSPENDED)
    s.waiting_for = signal
    s.duration_ms = ms_between(started, at)
    s.wait_deadline = (at + timedelta(seconds=timeout)) if timeout else None
    _run_to(state, R.SUSPENDED)
    event = _step_event(
        state,
        "step:suspend",
        s,
        status="suspended",
        attempt=attempt,
        task_id=task_id,
        worker=worker,
        meta=_with_usage({"signal": signal, "timeout": timeout}, usage),
        ts=at,
    )
    return Transition((index,), [event])


def deliver_signal(
    state: RunState, index: int, name: str, payload: Any, shown: Any, at: datetime
) -> Transition:
    """Signal ``name`` reaches the waiting step: ``payload`` becomes its output (``shown``:
    the payload as traced, redacted) and the run runs again."""
    check_run_change(state.status, R.RUNNING)  # before the step changes
    s = state.steps[index]
    _step_to(s, S.COMPLETED)
    s.output = payload
    s.finished_at = at
    s.duration_ms = ms_between(s.started_at, at)
    s.wait_deadline = None
    _run_to(state, R.RUNNING)
    state.current_step = index + 1
    event = _step_event(
        state,
        "signal:received",
        s,
        status="completed",
        meta={"signal": name, "payload": shown},
        ts=at,
    )
    return Transition((index,), [event])


def request_approval(
    state: RunState,
    index: int,
    approvers: list[str] | None,
    timeout: float | None,
    at: datetime | None = None,
) -> Transition:
    """An approval step suspended the run: who may decide is traced."""
    s = state.steps[index]
    event = _step_event(
        state,
        "approval:requested",
        s,
        status="suspended",
        attempt=s.attempts,
        meta={"approvers": approvers, "timeout": timeout},
        ts=at,
    )
    return Transition((index,), [event])


def decide_approval(
    state: RunState,
    index: int,
    decision: dict[str, Any],
    *,
    reason: str | None = None,
    at: datetime | None = None,
) -> Transition:
    """An approval step was decided (by its policy or a person): ``decision`` is its
    output (``ctx.results``), traced with who decided, when and why."""
    s = state.steps[index]
    s.output = decision
    meta = dict(decision)
    if reason is not None:
        meta["reason"] = reason
    event = _step_event(
        state,
        "approval:decided",
        s,
        status=decision["decision"],
        attempt=s.attempts,
        meta=meta,
        ts=at,
    )
    return Transition((index,), [event])


def fail_attempt(
    state: RunState,
    index: int,
    error: str,
    traceback: str | None,
    *,
    attempt: int,
    max_attempts: int | None,
    delay: float,
    started: datetime,
    at: datetime,
    task_id: str | None,
    worker: str | None,
    usage: dict[str, float] | None = None,
) -> Transition:
    """The attempt failed and will be retried after ``delay`` seconds."""
    s = state.steps[index]
    _step_to(s, S.PENDING)
    s.error = error
    s.traceback = traceback
    s.duration_ms = ms_between(started, at)
    event = _step_event(
        state,
        "step:retry",
        s,
        max_attempts=max_attempts,
        status="pending",
        attempt=attempt,
        duration_ms=s.duration_ms,
        error=error,
        task_id=task_id,
        worker=worker,
        meta=_with_usage({"delay_s": delay, "next_attempt": attempt + 1}, usage),
        ts=at,
    )
    return Transition((index,), [event])


def fail_step(
    state: RunState,
    index: int,
    error: str,
    traceback: str | None,
    *,
    attempt: int,
    max_attempts: int | None,
    at: datetime,
    started: datetime | None = None,
    task_id: str | None = None,
    worker: str | None = None,
    usage: dict[str, float] | None = None,
) -> Transition:
    """The step failed for good (attempts used up, non-retryable, expired wait, lost
    worker). The run stays ``running`` for its failure path (``begin_rollback`` or
    ``finish_run``)."""
    s = state.steps[index]
    _step_to(s, S.FAILED)
    s.error = error
    s.traceback = traceback
    s.finished_at = at
    s.wait_deadline = None
    if started is not None:
        s.duration_ms = ms_between(started, at)
    if state.status in (R.PENDING, R.SUSPENDED):
        _run_to(state, R.RUNNING)
    if s.parent is None:
        state.current_step = index
    state.error = error
    event = _step_event(
        state,
        "step:error",
        s,
        max_attempts=max_attempts,
        status="failed",
        attempt=attempt or None,
        duration_ms=s.duration_ms,
        error=error,
        task_id=task_id,
        worker=worker,
        meta=_with_usage(None, usage),
        ts=at,
    )
    return Transition((index,), [event])


# -- parallel branches and for_each items (SPEC section 11) ----------------------------------
def start_group(
    state: RunState,
    index: int,
    *,
    new_rows: Sequence[StepState] = (),
    launch: Sequence[tuple[int, str]] = (),
    task_id: str | None,
    worker: str | None,
    at: datetime,
    meta: dict[str, Any] | None = None,
    counters: dict[str, int] | None = None,
) -> Transition:
    """A ``.parallel`` or ``.for_each`` step fans out: it is ``running`` until the join.
    ``counters``: a for_each's (``item_counters``), counting ``launch`` already.
    ``new_rows``: the items' rows, added to the run; ``launch``: the rows whose tasks are
    sent now, with the task id each is sent under (a row given one is in flight)."""
    s = state.steps[index]
    _step_to(s, S.RUNNING)
    s.attempts = 1
    s.task_id = task_id
    s.started_at = at
    s.finished_at = None
    s.output = None
    s.scope = None if counters is None else dict(counters)
    state.current_step = index
    created = []
    for row in new_rows:
        if row.index != len(state.steps):
            raise InvalidTransition("running", "running", detail=f"row {row.index} out of order")
        state.steps.append(row)
        created.append(row.index)
    for i, task_id in launch:  # counted in ``counters`` already
        sent = state.steps[i]
        if sent.status != S.PENDING:
            raise InvalidTransition(sent.status.value, "running", detail=f"step row {i}")
        sent.task_id = task_id
    touched = tuple(i for i, _ in launch)
    event = _step_event(
        state,
        "parallel:start",
        s,
        status="running",
        attempt=1,
        task_id=task_id,
        worker=worker,
        ts=at,
        meta=meta,
    )
    return Transition((index, *touched), [event], tuple(created))


def launch_rows(
    state: RunState,
    launch: Sequence[tuple[int, str]],
    *,
    group: int | None = None,
    next_item: int | None = None,
) -> Transition:
    """Rows of a group whose tasks are sent now, under the task ids given: from then on
    they are in flight (``for_each`` starts the next item when one ends). Items count in
    their group's counters (``item_counters``); ``next_item``: where the next send looks."""
    touched = []
    for row, task_id in launch:
        r = state.steps[row]
        if r.status != S.PENDING:
            raise InvalidTransition(r.status.value, "running", detail=f"step row {row}")
        r.task_id = task_id
        touched.append(row)
        touched.extend(_count(state, r, in_flight=1, next_item=row + 1))
    scope = state.steps[group].scope if group is not None else None
    if scope and next_item is not None and next_item > scope.get("next", 0):
        scope["next"] = next_item  # rows before it: sent, or done already
        touched.append(group)  # type: ignore[arg-type]
    return Transition(tuple(dict.fromkeys(touched)))


def item_counters(open: int, in_flight: int, next_item: int) -> dict[str, int]:
    """A for_each step's counters, kept on its row (``scope``) and written with every item's
    outcome: items not done, items sent and not ended, and the row where the next send
    looks. An item's task reads them instead of every item (``RowViewStorage``)."""
    return {"open": open, "in_flight": in_flight, "next": next_item}


def _count(
    state: RunState, row: StepState, *, open: int = 0, in_flight: int = 0, next_item: int = 0
) -> tuple[int, ...]:
    """Move the counters of item ``row``'s group; the group's row index when they moved."""
    if row.item is None or row.parent is None:
        return ()
    scope = state.steps[row.parent].scope
    if not scope or "open" not in scope:
        return ()
    scope["open"] += open
    scope["in_flight"] += in_flight
    scope["next"] = max(scope["next"], next_item)
    return (row.parent,)


def join_group(
    state: RunState,
    index: int,
    output: Any,
    data: dict[str, Any],
    *,
    next_index: int,
    at: datetime,
) -> Transition:
    """Every branch (every item) of group step ``index`` is done: the join. The step
    completes with ``output``, the run's data becomes ``data`` (the branches' keys merged)
    and it moves on to ``next_index``."""
    s = state.steps[index]
    _step_to(s, S.COMPLETED)
    s.output = output
    s.error = None
    s.finished_at = at
    s.duration_ms = ms_between(s.started_at, at)
    state.data = data
    state.current_step = next_index
    rows = [r for r in state.steps if r.parent == index]
    meta = {"rows": len(rows), "skipped": sum(1 for r in rows if r.status == S.SKIPPED)}
    events = [
        _step_event(
            state,
            "parallel:join",
            s,
            status="completed",
            attempt=s.attempts,
            duration_ms=s.duration_ms,
            ts=at,
            meta=meta,
        ),
        _step_event(
            state,
            "step:complete",
            s,
            status="completed",
            attempt=s.attempts,
            duration_ms=s.duration_ms,
            ts=at,
        ),
    ]
    return Transition((index,), events)


# -- compensation ----------------------------------------------------------------------------
def begin_compensation(state: RunState, index: int) -> Transition:
    """An attempt of step ``index``'s compensator starts."""
    s = state.steps[index]
    _step_to(s, S.COMPENSATING)
    s.compensation_attempts += 1
    return Transition((index,))


def compensate_step(
    state: RunState,
    index: int,
    *,
    attempt: int,
    max_attempts: int | None,
    duration_ms: int | None,
    task_id: str | None,
    worker: str | None,
    at: datetime | None = None,
) -> Transition:
    """The compensator succeeded: the step's effect is undone. Its ``finished_at`` and
    ``duration_ms`` keep describing the forward run; the undo is in the trace."""
    s = state.steps[index]
    _step_to(s, S.COMPENSATED)
    s.error = None
    s.traceback = None
    event = _step_event(
        state,
        "step:compensate",
        s,
        max_attempts=max_attempts,
        status="compensated",
        attempt=attempt,
        duration_ms=duration_ms,
        task_id=task_id,
        worker=worker,
        ts=at,
    )
    return Transition((index,), [event])


def fail_compensation(
    state: RunState,
    index: int,
    error: str,
    traceback: str | None,
    *,
    retry: bool,
    delay: float,
    attempt: int,
    max_attempts: int | None,
    duration_ms: int | None,
    task_id: str | None,
    worker: str | None,
    at: datetime | None = None,
) -> Transition:
    """The compensator failed: tried again after ``delay`` (``retry``), or the step ends
    ``compensation_failed`` and the rollback goes on with the next one."""
    s = state.steps[index]
    s.traceback = traceback
    event = _step_event(
        state,
        "step:compensate_error",
        s,
        max_attempts=max_attempts,
        status="compensating" if retry else "compensation_failed",
        attempt=attempt,
        error=error,
        task_id=task_id,
        worker=worker,
        duration_ms=duration_ms,
        meta={"will_retry": retry, "delay_s": delay},
        ts=at,
    )
    if not retry:
        _step_to(s, S.COMPENSATION_FAILED)
        s.error = f"compensation failed: {error}"
    return Transition((index,), [event])
