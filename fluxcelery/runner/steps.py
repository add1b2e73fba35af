"""Runs ONE step attempt (or one compensation) and maps its outcome to a persisted
transition, trace events and the next action. Embedded mode and Celery tasks both call this,
so a workflow behaves the same in-process and on workers.

Every state change is a guarded write (``save_run`` with the version read). A write that does
not land means another process moved the run first: the attempt's result is discarded and the
caller stops (``Action.STOP``). That is a normal, tested outcome.

The ``_apply_*`` methods only mutate a ``Change``; ``run_step`` decides when to save. On
Celery each attempt is two writes (its start, its outcome); on PostgreSQL the start rides on
the load (``ClaimingStorage``), so a step task costs two statements. In-process
(``fuse=True``) the outcome of step *i* and the start of step *i + 1* are one write, and a new
run is inserted with its first start, so a run costs one transaction per step (plus one).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..core import transitions as t
from ..core.approvals import resolve_approvers
from ..core.branching import data_changes
from ..core.builder import StepDef, WaitFor, Workflow
from ..core.context import StepContext
from ..core.errors import FluxError, NonRetryableError, Rejected, SerializationError
from ..core.jsoncodec import roundtrip
from ..core.policy import rollback_plan, should_retry
from ..core.records import RunState, StepState
from ..core.states import DONE_STEP, STEPPING_RUN, RunStatus, StepStatus
from ..core.transitions import Transition
from ..trace.event import TraceEvent
from .change import DONE, STOP, Action, Change, Next
from .claim import load_claiming
from .compensation import Compensation
from .fanout import Groups, group_error, running_rows
from .progress import ProgressReporter
from .runtime import Runtime
from .usage import CpuMeter

log = logging.getLogger("fluxcelery.runner")

#: How many times a branch step's or item's write is made again after siblings' writes
#: won the race (each try reads the run afresh; a handful is the most seen).
MERGE_TRIES = 200

#: What ``_store`` says of a branch step's or item's write that did not land (a STOP that
#: a caller holding a transaction can tell from "landed, and nothing follows here").
LOST = Next(Action.STOP, reason="the write did not land")


class StepRunner:
    """Runs step attempts and compensations with what ``rt`` hands it."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.compensation = Compensation(rt)
        self.groups = Groups(rt, self._advance)

    def run_compensation(
        self,
        run_id: str,
        index: int,
        *,
        task_id: str | None = None,
        worker: str | None = None,
        state: RunState | None = None,
    ) -> Next:
        """Run the compensator of step ``index`` (see compensation.py)."""
        return self.compensation.run(run_id, index, task_id=task_id, worker=worker, state=state)

    # -- forward steps --------------------------------------------------------------------
    def run_step(
        self,
        run_id: str,
        index: int,
        *,
        task_id: str | None = None,
        worker: str | None = None,
        fuse: bool = False,
        state: RunState | None = None,
        outage: bool = False,
        create: bool = False,
        workflow: str | None = None,
        definition: int | None = None,
    ) -> Next:
        """Run step ``index`` of a run: one attempt (on Celery), or with ``fuse`` every
        following step too until the run needs to wait, retry, compensate or is done.

        ``state``: the run as last written by this process (saves a read). Safe because
        every write is guarded by its version: a stale state only loses its race.
        ``outage``: this task is retried because the database failed while it ran; an
        attempt it left ``running`` never got its outcome stored, so it runs again under the
        same attempt number instead of counting as a worker loss.
        ``create``: ``state`` is a new run, not stored yet; it is inserted together with the
        start of its first step (one write instead of two). A run with the same id already
        stored makes that insert fail, and this returns ``STOP``.
        ``workflow``: the workflow the caller expects (a step task knows it). With it, a
        store that can (``ClaimingStorage``) starts the step in the same round trip as the
        load, in the plain case; any other case goes the usual way from the loaded run.
        """
        attempted: list[tuple[Change, int, int]] = []
        nxt = self._run_step(
            run_id,
            index,
            task_id,
            worker,
            fuse,
            state,
            outage,
            create,
            workflow,
            attempted,
            definition,
        )
        if nxt is STOP and attempted:
            change, row, attempt = attempted[-1]
            if change.state.steps[row].parent is not None:
                return nxt  # a branch step's or item's lost write is settled by ``_store``
            # A lost race: when a cancel recorded while the attempt ran was the reason, the
            # attempt's outcome is recorded all the same (SPEC section 12).
            return self._settle_if_cancelled(change, row, attempt) or STOP
        return nxt

    def _run_step(
        self,
        run_id: str,
        index: int,
        task_id: str | None,
        worker: str | None,
        fuse: bool,
        state: RunState | None,
        outage: bool,
        create: bool,
        workflow: str | None,
        attempted: list[tuple[Change, int, int]],
        definition: int | None = None,
    ) -> Next:
        claimed = False
        if state is None:
            state, claimed = load_claiming(
                self.rt, run_id, index, workflow, task_id, worker, outage, definition
            )
        if state is None:
            log.warning("step task for unknown run %s ignored", run_id)
            return STOP
        if (
            not claimed
            and state.cancel_reason is not None
            and 0 <= index < len(state.steps)
            and state.steps[index].status == StepStatus.RUNNING
        ):
            return self._settle_lost_attempt(state, index)
        decision = None if claimed else self._decide(state, index)
        if decision is not None:
            return decision
        try:
            wf = self.rt.catalog.for_run(state)
        except FluxError as exc:
            return self.rt.fail_unrunnable(state, exc)

        change = self.rt.change(state, create=create)
        while True:
            if not claimed:
                in_group = state.steps[index].parent is not None
                nxt = self._prepare(change, wf, index, task_id, worker, outage)
                outage = False  # only the step this task was retried for
                if nxt is not None and nxt.action is Action.CONTINUE and fuse and not in_group:
                    index = nxt.index or 0
                    continue
                saved = change.save()
                if not saved and in_group:
                    saved, nxt = self._start_again(change, wf, index, task_id, worker)
                if not saved:
                    return STOP
                if nxt is not None:
                    return nxt
            claimed = False
            sdef = wf.row_def(state, index)
            if sdef.parent is not None or state.steps[index].parent is not None:
                fuse = False  # a branch step or item writes its own outcome
            attempt = state.steps[index].attempts
            if "step_start" in self.rt.notifier.hooks:
                ctx = self.rt.context(wf, state, sdef, attempt)
                self.rt.notifier.call_hook("step_start", state, sdef.name, ctx)
            if not sdef.is_commit:  # a commit settles inside its own transaction
                attempted.append((change, index, attempt))
            nxt, pending = self._attempt(wf, change, sdef, attempt, task_id, worker, fuse)
            if pending is None:
                return nxt
            if nxt.action is Action.CONTINUE:
                index = nxt.index or 0
                continue  # the next step's start joins this write
            return nxt if change.save() else STOP

    def _start_again(
        self, change: Change, wf: Workflow, index: int, task_id: str | None, worker: str | None
    ) -> tuple[bool, Next | None]:
        """The start (or skip) of branch step or item ``index`` lost its race to a
        sibling's write: read the run again and, while the row may still start, redo it."""
        state = change.state
        for _ in range(MERGE_TRIES):
            fresh = self.rt.load_row(state.id, index, wf)
            if fresh is None:
                return False, None
            state.__dict__.update(fresh.__dict__)
            change.rebase()
            decision = self._decide(state, index)
            if decision is not None:
                return False, None
            nxt = self._prepare(change, wf, index, task_id, worker)
            if change.save():
                return True, nxt
        return False, None

    def _store(
        self,
        change: Change,
        nxt: Next,
        index: int,
        attempt: int,
        redo: Callable[[Change], Next],
        tx: Any = None,
    ) -> Next:
        """Write an attempt's outcome. A branch step's or item's write that lost its race
        to a sibling's is made again on the fresh run (``redo`` re-applies the outcome),
        so that two rows ending together both land and the second one joins; when the run
        stopped stepping meanwhile (a sibling failed, a cancel), the outcome is recorded
        on the row all the same."""
        if change.state.steps[index].parent is None:
            return nxt if change.save(tx) else STOP
        with self.rt.group_locks.hold(change.state.id):
            change.any_claims = _independent_of_starts(change.state, index, nxt)
            if change.save(tx):
                return nxt
            return self._merge(change, nxt, index, attempt, redo, tx)

    def _merge(
        self,
        change: Change,
        nxt: Next,
        index: int,
        attempt: int,
        redo: Callable[[Change], Next],
        tx: Any,
    ) -> Next:
        """``_store``'s write lost its race to a sibling's: redo it on the fresh run.
        Returns what follows, or ``LOST``."""
        state = change.state
        mine = state.steps[index]
        wf = self.rt.catalog.get(state.workflow)
        for _ in range(MERGE_TRIES):
            fresh = self.rt.load_row(state.id, index, wf)
            if fresh is None:
                return LOST
            row = fresh.steps[index]
            if row.status != StepStatus.RUNNING or row.attempts != attempt:
                return LOST  # terminated, or another attempt's
            p = row.parent or 0
            if (
                fresh.status not in STEPPING_RUN
                or fresh.cancel_reason is not None
                or fresh.steps[p].status != StepStatus.RUNNING
            ):
                settle = self.rt.change(fresh)
                nxt = self._settle_row(settle, index, mine)
                if settle.save(tx):
                    state.__dict__.update(fresh.__dict__)
                    if tx is not None:  # the caller publishes once its transaction commits
                        change.rebase()
                        change.events, change.hooks = settle.events, settle.hooks
                    return nxt
                continue
            log.debug("run %s: row %s lost its write to a sibling's; made again", state.id, index)
            state.__dict__.update(fresh.__dict__)
            change.rebase()
            nxt = redo(change)
            change.any_claims = _independent_of_starts(state, index, nxt)
            change.events = [_raced(e, index) for e in change.events]
            if change.save(tx):
                return nxt
        return LOST

    def _settle_row(self, settle: Change, index: int, mine: StepState) -> Next:
        """Record on a run that stopped stepping the outcome ``mine`` of an attempt that
        was running, and start the rollback it waited for, if it was the last."""
        fresh = settle.state
        now = self.rt.clock()
        ok = mine.status == StepStatus.COMPLETED
        if ok and mine.scope is not None:
            fresh.steps[index].scope = mine.scope
        settle.apply(
            t.settle_cancelled_attempt(
                fresh,
                index,
                output=mine.output if ok else None,
                error=None if ok else (mine.error or "the attempt failed"),
                traceback=None if ok else mine.traceback,
                started=mine.started_at,
                at=now,
            )
        )
        return self._rollback_after_cancel(settle, now)

    def _settle_if_cancelled(
        self, change: Change, index: int, attempt: int, tx: Any = None
    ) -> Next | None:
        """The write of attempt ``attempt`` of step ``index`` (its outcome, in ``change``)
        lost its race. When the run was cancelled while the attempt ran (and not
        terminated), record the outcome on the step anyway and say what follows (a cancel
        that compensates waited for it: its rollback starts now). None: not that case."""
        mine = change.state.steps[index]
        if mine.status == StepStatus.RUNNING:
            return None  # no outcome (a write before the handler ran lost)
        if change.state.steps[index].parent is not None:
            return None  # a branch step's or item's outcome is settled by ``_store``
        fresh = self.rt.storage.load_run(change.state.id)
        if fresh is None or fresh.cancel_reason is None:
            return None
        step = fresh.steps[index]
        if step.status != StepStatus.RUNNING or step.attempts != attempt:
            return None  # terminated, or another attempt's
        now = self.rt.clock()
        ok = mine.status == StepStatus.COMPLETED
        settle = self.rt.change(fresh)
        settle.apply(
            t.settle_cancelled_attempt(
                fresh,
                index,
                output=mine.output if ok else None,
                error=None if ok else (mine.error or "the attempt failed"),
                traceback=None if ok else mine.traceback,
                started=mine.started_at,
                at=now,
            )
        )
        nxt = self._rollback_after_cancel(settle, now)
        if not settle.save(tx):
            return None
        change.state.__dict__.update(fresh.__dict__)  # callers hold that object (in process)
        return nxt

    def _rollback_after_cancel(self, settle: Change, now: datetime) -> Next:
        """A cancel that compensates waited for the attempt just settled: its rollback
        starts now (or, with nothing to undo, the run ends cancelled)."""
        state = settle.state
        if state.status != RunStatus.ROLLING_BACK or running_rows(state):
            return STOP  # not a rollback, or others still running: the last one starts it
        wf = self.rt.catalog.for_run(state)
        if state.cancel_reason is not None:
            plan = rollback_plan(wf, state, None)
        else:  # a branch or item failed while others ran: undo from its group
            failed = next((s.index for s in state.steps if s.status == StepStatus.FAILED), None)
            plan = rollback_plan(wf, state, failed)
        if plan:
            settle.apply(t.begin_rollback(state, plan, state.error, at=now))
            return Next(Action.COMPENSATE, plan[0])
        if state.cancel_reason is not None:
            settle.apply(t.finish_rollback(state, now))
        else:
            settle.apply(t.finish_run(state, RunStatus.FAILED, now, state.error))
        return DONE

    def _settle_lost_attempt(self, state: RunState, index: int) -> Next:
        """A task of step ``index`` came back (redelivered) to a run cancelled while that
        step was running: the attempt's worker is gone, and its outcome never will come.
        The step fails as a lost attempt, and what the cancel waited for goes on."""
        now = self.rt.clock()
        settle = self.rt.change(state)
        name = state.steps[index].name
        error = f"WorkerLost: step {name!r} was interrupted after the run was cancelled"
        settle.apply(t.settle_cancelled_attempt(state, index, error=error, started=None, at=now))
        nxt = self._rollback_after_cancel(settle, now)
        return nxt if settle.save() else STOP

    def _decide(self, state: RunState, index: int) -> Next | None:
        """Whether a task for step ``index`` may run now; None means go ahead."""
        if state.status not in STEPPING_RUN:
            return STOP
        cursor = state.current_step
        n = len(state.steps)
        if index < 0 or index >= n:
            return STOP
        row = state.steps[index]
        if row.parent is not None:  # a branch step or item: while its group runs
            if cursor != row.parent or state.steps[row.parent].status != StepStatus.RUNNING:
                return STOP
            return None if row.status in (StepStatus.PENDING, StepStatus.RUNNING) else STOP
        if index < cursor:
            # A redelivered task whose step finished before the worker died: make sure the
            # run moves on (the next task may never have been sent).
            nxt = state.steps[cursor] if cursor < n else None
            if (
                index == cursor - 1
                and state.steps[index].status in DONE_STEP
                and nxt is not None
                and nxt.status == StepStatus.PENDING
                and nxt.attempts == 0
            ):
                return Next(Action.CONTINUE, cursor)
            return STOP
        if index > cursor:
            return STOP
        status = state.steps[index].status
        if status in DONE_STEP or status in (StepStatus.PENDING, StepStatus.RUNNING):
            return None
        return STOP

    def _prepare(
        self,
        change: Change,
        wf: Workflow,
        index: int,
        task_id: str | None,
        worker: str | None,
        outage: bool = False,
    ) -> Next | None:
        """Mutate ``change`` to start step ``index``. None: an attempt is ready to run;
        otherwise what happens next (the step was skipped, kept, or failed at once)."""
        state = change.state
        sdef = wf.row_def(state, index)
        step = state.steps[index]
        if state.status == RunStatus.PENDING:
            # The start meta was made with the run (``start_meta``) unless it was loaded since.
            meta = state.start_meta or {"input": self.rt.redact(state.input)}
            change.apply(
                t.start_run(state, meta=meta, task_id=task_id, worker=worker, at=self.rt.clock())
            )
        if step.status in DONE_STEP:
            # Kept ``completed`` across a retry (a commit step): never run it again.
            change.apply(t.keep_done_step(state, index, self.rt.clock()))
            return self._advance(change, wf, index)

        if sdef.is_group and (step.status == StepStatus.RUNNING or sdef.when is None):
            return self._fan_out(change, wf, sdef, task_id, worker)
        if step.attempts == 0 and sdef.when is not None:
            ctx = self.rt.context(wf, state, sdef, 0)
            try:
                go = self.rt.invoker.call(
                    sdef.when,
                    ctx,
                    timeout=self.rt.defaults.timeout_of(sdef),
                    what=f"when() of step {sdef.name!r}",
                )
            except Exception as exc:
                err = f"when() raised {self.rt.error_text(exc, state)}"
                return self._apply_fail(change, wf, sdef, 0, err, exc, task_id, worker)
            if not go:
                now = self.rt.clock()
                after = wf.after(index) if step.parent is None else None
                change.apply(
                    t.skip_step(
                        state, index, task_id=task_id, worker=worker, at=now, next_index=after
                    )
                )
                if step.parent is not None:  # the branch's keys so far go on past it
                    state.steps[index].scope = self._branch_scope(state, index)
                for i in range(index + 1, after or index):  # a skipped parallel's branches
                    change.apply(t.skip_step(state, i, task_id=None, worker=None, at=now))
                change.hook("step_complete", sdef.name, ctx, None)
                return self._advance(change, wf, index, ctx)
            if sdef.is_group:
                return self._fan_out(change, wf, sdef, task_id, worker)

        max_attempts = self.rt.defaults.max_attempts(sdef)
        attempt = step.attempts + 1
        rerun = (
            outage
            and step.status == StepStatus.RUNNING
            and step.attempts > 0
            and task_id is not None
            and step.task_id == task_id
        )
        if rerun:
            attempt = step.attempts  # the same attempt: its outcome was never stored
        if attempt > max_attempts:
            # Redelivered after worker deaths until the attempts ran out: stop the loop.
            err = (
                f"WorkerLost: step {sdef.name!r} was interrupted {step.attempts} times "
                f"(max {max_attempts} attempts)"
            )
            return self._apply_fail(change, wf, sdef, step.attempts, err, None, task_id, worker)

        change.apply(
            t.start_step(
                state,
                index,
                attempt=attempt,
                max_attempts=max_attempts,
                task_id=task_id,
                worker=worker,
                at=self.rt.clock(),
                rerun=rerun,
            )
        )
        return None

    def _fan_out(
        self, change: Change, wf: Workflow, sdef: StepDef, task_id: str | None, worker: str | None
    ) -> Next:
        """Start a group step (see fanout.py); a failure to make its items fails it."""
        try:
            return self.groups.fan_out(change, wf, sdef, task_id, worker)
        except Exception as exc:  # from items(), before the fan-out changed anything
            err = self.rt.error_text(exc, change.state)
            return self._apply_fail(change, wf, sdef, 0, err, exc, task_id, worker)

    @staticmethod
    def _branch_scope(state: RunState, index: int) -> dict[str, Any] | None:
        """The keys a branch set before step ``index`` (its previous step's scope)."""
        row = state.steps[index]
        before = state.steps[index - 1] if index > 0 else None
        if row.item is None and before is not None and before.branch == row.branch:
            return before.scope
        return row.scope

    def _advance(
        self, change: Change, wf: Workflow, index: int, ctx: StepContext | None = None
    ) -> Next:
        """After step ``index`` is done: finish the run, or go on with the next step."""
        if change.state.steps[index].parent is not None:
            return self._after_row(change, wf, index)
        if change.state.current_step >= len(wf.steps):
            change.apply(t.finish_run(change.state, RunStatus.COMPLETED, self.rt.clock()))
            change.hook(
                "workflow_complete", ctx or self.rt.context(wf, change.state, wf.steps[index], 0)
            )
            return DONE
        return Next(Action.CONTINUE, wf.after(index))

    def _after_row(self, change: Change, wf: Workflow, index: int) -> Next:
        """A branch step or item ended well: what follows in its group, or the join (a
        data conflict at the join fails the group step)."""
        try:
            nxt = self.groups.after_row(change, wf, index)
        except FluxError as exc:
            p = change.state.steps[index].parent or 0
            err = self.rt.error_text(exc, change.state)
            return self._apply_fail(change, wf, wf.steps[p], 1, err, exc, None, None)
        return nxt if nxt is not None else STOP

    def _attempt(
        self,
        wf: Workflow,
        change: Change,
        sdef: StepDef,
        attempt: int,
        task_id: str | None,
        worker: str | None,
        fuse: bool,
    ) -> tuple[Next, Change | None]:
        """Run the handler. Returns the next action and, when its success is not yet
        written (``fuse``), the change holding it; otherwise the outcome is stored."""
        state = change.state
        if sdef.is_commit:
            return self._commit_attempt(wf, change, sdef, attempt, task_id, worker), None
        started = self.rt.clock()
        ctx = self.rt.context(wf, state, sdef, attempt)
        reporter = ctx._progress = ProgressReporter(
            self.rt,
            change,
            sdef.index,
            deferred=False,
            max_attempts=self.rt.defaults.max_attempts(sdef),
        )
        cpu = CpuMeter()
        try:
            try:
                value = self._call_handler(sdef, ctx, cpu)
            finally:
                reporter.close()
            nxt = self._apply_success(
                change, wf, sdef, ctx, value, started, task_id, worker, cpu.usage
            )
        except Exception as exc:
            change.rebase()
            return self._attempt_failed(
                wf, change, sdef, attempt, exc, started, task_id, worker, cpu.usage
            ), None
        if fuse and nxt.action is Action.CONTINUE:
            return nxt, change

        def redo(c: Change) -> Next:
            return self._apply_success(c, wf, sdef, ctx, value, started, task_id, worker, cpu.usage)

        return self._store(change, nxt, sdef.index, attempt, redo), None

    def _call_handler(self, sdef: StepDef, ctx: StepContext, cpu: CpuMeter) -> Any:
        """The step's handler, under its resolved timeout; ``engine.cancel(terminate=True)``
        in this process interrupts it where the invoker can (async, or on a helper thread).
        ``cpu`` gets the CPU time the handler used (its outcome event's ``meta.cpu_ms``)."""
        interrupts = self.rt.interrupts
        interrupt = interrupts.begin(ctx.run_id)
        try:
            return self.rt.invoker.call(
                sdef.handler,
                ctx,
                timeout=self.rt.defaults.timeout_of(sdef),
                what=f"step {sdef.name!r}",
                interrupt=interrupt,
                cpu=cpu,
            )
        finally:
            interrupts.end(ctx.run_id, interrupt)

    def _commit_attempt(
        self,
        wf: Workflow,
        change: Change,
        sdef: StepDef,
        attempt: int,
        task_id: str | None,
        worker: str | None,
    ) -> Next:
        """A commit step: its ``ctx.session`` writes and its completion commit together.

        A failure is recorded only after the transaction has rolled back, so the failure
        record never waits on the handler's own locks.
        """
        failure: BaseException | None = None
        landed = False
        started = self.rt.clock()
        nxt = STOP
        progress: Transition | None = None
        settled: Next | None = None
        cpu = CpuMeter()
        with self.rt.storage.transaction() as tx:
            ctx = self.rt.context(wf, change.state, sdef, attempt, session=tx.session)
            # Reports wait for the outcome: this transaction may hold the database.
            reporter = ProgressReporter(
                self.rt,
                change,
                sdef.index,
                deferred=True,
                max_attempts=self.rt.defaults.max_attempts(sdef),
            )
            ctx._progress = reporter
            try:
                try:
                    value = self._call_handler(sdef, ctx, cpu)
                finally:
                    progress = reporter.close()
                if progress is not None:
                    change.apply(progress)
                nxt = self._apply_success(
                    change, wf, sdef, ctx, value, started, task_id, worker, cpu.usage
                )
            except Exception as exc:
                failure = exc
            else:
                # Outside the ``except``: a database error while saving the completion is not
                # a step failure. It rolls the transaction back and propagates, so that the
                # task retries the attempt (see celery/tasks.py) from the stored state,
                # instead of recording a failure on top of the in-memory completed state
                # (which left the run's cursor past the step and the run stuck).
                if change.state.steps[sdef.index].parent is None:
                    landed = change.save(tx)
                else:  # a branch commit: a sibling's write may come first; redo on it

                    def redo(c: Change) -> Next:
                        return self._apply_success(
                            c, wf, sdef, ctx, value, started, task_id, worker, cpu.usage
                        )

                    nxt = self._store(change, nxt, sdef.index, attempt, redo, tx)
                    landed = nxt is not LOST
                if not landed:  # its effect and its record commit together, or neither
                    settled = self._settle_if_cancelled(change, sdef.index, attempt, tx)
        if settled is not None:
            return settled
        if failure is not None:
            change.rebase()
            if progress is not None:
                change.apply(progress)
            nxt = self._attempt_failed(
                wf, change, sdef, attempt, failure, started, task_id, worker, cpu.usage
            )
            return (
                nxt
                if nxt is not STOP
                else (self._settle_if_cancelled(change, sdef.index, attempt) or STOP)
            )
        if not landed:
            return STOP
        change.landed()
        return nxt

    def _apply_success(
        self,
        change: Change,
        wf: Workflow,
        sdef: StepDef,
        ctx: StepContext,
        value: Any,
        started: datetime,
        task_id: str | None,
        worker: str | None,
        usage: dict[str, float] | None = None,
    ) -> Next:
        """Record a handler that returned; raises ``FluxError`` for data that cannot be
        stored (the attempt then fails, and the stored state stays as it was). ``usage``:
        the CPU time of the handler, traced on the outcome."""
        state = change.state
        max_bytes = self.rt.max_payload_bytes
        data = roundtrip(ctx.data, what=f"ctx.data after step {sdef.name!r}", max_bytes=max_bytes)
        if not isinstance(data, dict):
            raise SerializationError(f"ctx.data must stay a dict, got {type(data).__name__}")
        waiting = isinstance(value, WaitFor)
        row = state.steps[sdef.index]
        if row.parent is not None:
            if waiting:
                raise NonRetryableError(
                    f"step {sdef.name!r} returned wait_for(...) inside a parallel branch or "
                    "for_each item: a run waits for signals only in its top-level steps"
                )
            row.scope = data_changes(state.data, data, row.scope)
            data = state.data
        output = (
            None
            if waiting
            else roundtrip(value, what=f"output of step {sdef.name!r}", max_bytes=max_bytes)
        )
        now = self.rt.clock()
        state.data = data
        if isinstance(value, WaitFor):
            change.apply(
                t.suspend_step(
                    state,
                    sdef.index,
                    value.signal,
                    value.timeout,
                    attempt=ctx.attempt,
                    started=started,
                    at=now,
                    task_id=task_id,
                    worker=worker,
                    usage=usage,
                )
            )
            if sdef.kind == "approval":
                change.apply(
                    t.request_approval(
                        state,
                        sdef.index,
                        self._approvers(sdef, ctx),
                        value.timeout,
                        self.rt.clock(),
                    )
                )
            return Next(Action.SUSPEND, sdef.index, wait_timeout=value.timeout)
        change.apply(
            t.complete_step(
                state,
                sdef.index,
                output,
                attempt=ctx.attempt,
                max_attempts=self.rt.defaults.max_attempts(sdef),
                started=started,
                at=now,
                task_id=task_id,
                worker=worker,
                usage=usage,
            )
        )
        if sdef.kind == "approval" and isinstance(output, dict):  # approved by its policy
            change.apply(t.decide_approval(state, sdef.index, output, at=self.rt.clock()))
        change.hook("step_complete", sdef.name, ctx, output)
        return self._advance(change, wf, sdef.index, ctx)

    def _approvers(self, sdef: StepDef, ctx: StepContext) -> list[str] | None:
        """Who may decide, as traced when the approval is requested (a callable that fails
        here is traced as unknown; ``engine.approve`` asks it again and reports)."""
        try:
            return resolve_approvers(sdef.approvers, ctx)
        except Exception:
            log.warning("approvers of step %r could not be listed", sdef.name, exc_info=True)
            return None

    def _attempt_failed(
        self,
        wf: Workflow,
        change: Change,
        sdef: StepDef,
        attempt: int,
        exc: BaseException,
        started: datetime,
        task_id: str | None,
        worker: str | None,
        usage: dict[str, float] | None = None,
    ) -> Next:
        """Store a failed attempt: a retry, or the step's failure."""

        def apply(c: Change) -> Next:
            return self._apply_attempt_failed(
                wf, c, sdef, attempt, exc, started, task_id, worker, usage
            )

        return self._store(change, apply(change), sdef.index, attempt, apply)

    def _apply_attempt_failed(
        self,
        wf: Workflow,
        change: Change,
        sdef: StepDef,
        attempt: int,
        exc: BaseException,
        started: datetime,
        task_id: str | None,
        worker: str | None,
        usage: dict[str, float] | None = None,
    ) -> Next:
        max_attempts = self.rt.defaults.max_attempts(sdef)
        err = self.rt.error_text(exc, change.state)
        if should_retry(exc, attempt, max_attempts, sdef.retry_on, sdef.no_retry_on):
            delay = self.rt.defaults.backoff_of(sdef).delay(attempt)
            failure = self.rt.failure(exc, err, change.state)
            change.apply(
                t.fail_attempt(
                    change.state,
                    sdef.index,
                    err,
                    failure.traceback,
                    attempt=attempt,
                    max_attempts=max_attempts,
                    delay=delay,
                    started=started,
                    at=self.rt.clock(),
                    task_id=task_id,
                    worker=worker,
                    usage=usage,
                )
            )
            return Next(Action.RETRY, sdef.index, delay=delay, failure=failure)
        return self._apply_fail(
            change, wf, sdef, attempt, err, exc, task_id, worker, started, usage=usage
        )

    def fail_step(
        self, change: Change, wf: Workflow, sdef: StepDef, attempt: int, err: str
    ) -> Next:
        """Fail a step for good from outside an attempt (an expired wait) and store it."""
        nxt = self._apply_fail(change, wf, sdef, attempt, err, None, None, None)
        return nxt if change.save() else STOP

    def _apply_fail(
        self,
        change: Change,
        wf: Workflow,
        sdef: StepDef,
        attempt: int,
        err: str,
        exc: BaseException | None,
        task_id: str | None,
        worker: str | None,
        started: datetime | None = None,
        *,
        usage: dict[str, float] | None = None,
    ) -> Next:
        """The step failed for good: compensate earlier steps, or fail the run. The next
        action carries the failure, which a Celery task raises once it is stored.
        ``usage``: what the attempt that failed used (its CPU time), if one ran."""
        state = change.state
        failure = self.rt.failure(exc, err, state)
        now = self.rt.clock()
        if isinstance(exc, Rejected) and exc.decision is not None:  # denied by its policy
            change.apply(
                t.decide_approval(state, sdef.index, exc.decision, reason=str(exc), at=now)
            )
        change.apply(
            t.fail_step(
                state,
                sdef.index,
                err,
                failure.traceback,
                attempt=attempt,
                max_attempts=self.rt.defaults.max_attempts(sdef),
                at=now,
                started=started,
                task_id=task_id,
                worker=worker,
                usage=usage,
            )
        )
        error = exc or RuntimeError(err)
        ctx = self.rt.context(wf, state, sdef, attempt) if self.rt.notifier.hooks else None
        change.hook("step_error", sdef.name, ctx, error)
        failed = sdef.index
        p = state.steps[failed].parent
        if p is not None:  # a branch step or item: its group step fails with it
            err = group_error(state, failed, err)
            change.apply(  # the traceback stays with the row that raised
                t.fail_step(
                    state,
                    p,
                    err,
                    None,
                    attempt=1,
                    max_attempts=1,
                    at=now,
                    started=state.steps[p].started_at,
                )
            )
            failed = p
            if running_rows(state):
                # Running siblings finish their attempts first (recorded); the last one to
                # end starts the rollback (``_rollback_after_cancel``).
                change.apply(t.hold_rollback(state, err))
                return Next(Action.STOP, failure=failure)
        plan = rollback_plan(wf, state, failed)
        if plan:
            change.apply(t.begin_rollback(state, plan, err, at=self.rt.clock()))
            return Next(Action.COMPENSATE, plan[0], failure=failure)
        change.apply(t.finish_run(state, RunStatus.FAILED, self.rt.clock(), err))
        change.hook("workflow_error", ctx, error)
        return Next(Action.DONE, failure=failure)

    # -- compensation ---------------------------------------------------------------------


def _independent_of_starts(state: RunState, index: int, nxt: Next) -> bool:
    """Whether item ``index``'s outcome write may land whatever siblings started since it
    read the run: it completed, and neither joins nor fails the group (what it decides,
    its group's counters and the items it sends, does not depend on which items started;
    a failure's does: it waits for the running ones)."""
    row = state.steps[index]
    return (
        row.item is not None
        and row.status == StepStatus.COMPLETED
        and nxt.action in (Action.STOP, Action.FANOUT)
    )


def _raced(event: TraceEvent, index: int) -> TraceEvent:
    """Row ``index``'s outcome event, marked ``meta.raced``: its write lost the race to a
    sibling's and was made again on the fresh run (how the last two rows meet in one join)."""
    if event.step_index != index or event.type == "step:start":
        return event
    return dataclasses.replace(event, meta={**(event.meta or {}), "raced": True})


def resume_point(state: RunState, wf: Workflow) -> Next:
    """Where an interrupted run goes on: its rollback's next compensation, else its first
    unfinished step."""
    if state.status == RunStatus.ROLLING_BACK:
        failed = next((s.index for s in state.steps if s.status == StepStatus.FAILED), None)
        plan = rollback_plan(wf, state, failed)
        if plan:
            return Next(Action.COMPENSATE, plan[0])
        return Next(Action.COMPENSATE, 0)  # finalizes the rollback
    return Next(Action.CONTINUE, first_unfinished(state))


def first_unfinished(state: RunState) -> int:
    for s in state.steps:
        if s.status not in DONE_STEP:
            return s.index
    return len(state.steps)


HookCall = Callable[..., Any]
