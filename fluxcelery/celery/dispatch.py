"""Sends a run's next work to Celery: a chain of step tasks, or one compensation task
(the engine's ``Dispatcher``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celery import Celery, chain

from ..core.builder import StepDef, Workflow
from ..core.records import RunState
from ..runner.change import Action, Next
from .countdown import first_hop, max_countdown
from .embedded import EmbeddedWorker
from .tasks import compensate_task_name, register_workflow, step_task_name, use_engine

if TYPE_CHECKING:
    from ..engine import FluxEngine

log = logging.getLogger("fluxcelery.celery")


def chained_steps(wf: Workflow, start: int) -> list[StepDef]:
    """The top-level steps from ``start`` that one chain carries: up to the end, or up to
    the first group step (its task fans out; the join sends the chain that follows)."""
    out = []
    i = start
    while i < len(wf.steps):
        sdef = wf.steps[i]
        out.append(sdef)
        if sdef.is_group or sdef.parent is not None:
            break
        i = wf.after(i)
    return out


def _definition(wf: Workflow, state: RunState, index: int) -> int:
    """The definition row ``index`` runs (a for_each item's is its for_each step's)."""
    return index if index < len(wf.steps) else state.steps[index].parent or 0


def _row_kwargs(kwargs: dict[str, Any], row: int, definition: int) -> dict[str, Any]:
    """A for_each item runs in its for_each step's task, told which row (``row``)."""
    return kwargs if row == definition else {**kwargs, "row": row}


class CeleryDispatcher:
    """``engine``: what an embedded worker (``memory://``) runs tasks with, when the app has
    no engine of its own yet; the dispatcher calls nothing else on it. ``own_worker=False``:
    no embedded worker is started for ``memory://`` (the caller runs one: fluxcelery.testing).
    """

    def __init__(
        self, app: Celery, engine: FluxEngine | None = None, *, own_worker: bool = True
    ) -> None:
        self.app = app
        self.engine = engine
        self.own_worker = own_worker
        self._registered: set[str] = set()
        self._embedded: EmbeddedWorker | None = None
        self._lock = threading.Lock()

    @property
    def embedded(self) -> bool:
        return str(self.app.conf.broker_url or "").startswith("memory://")

    def register(self, wf: Workflow, default_timeout: float | None) -> None:
        key = f"{wf.name}:{wf.definition_hash}:{default_timeout}"
        if key not in self._registered:
            register_workflow(self.app, wf, default_timeout)
            self._registered.add(key)
            if self._embedded is not None:
                self._embedded.refresh()

    def _ensure_worker(self) -> None:
        """With the embedded ``memory://`` broker, run a worker thread in this process."""
        if not self.embedded or not self.own_worker:
            return
        with self._lock:
            if self._embedded is None:
                if self.engine is not None:
                    use_engine(self.app, self.engine, replace=False)
                self._embedded = EmbeddedWorker(self.app)
                self._embedded.start()

    def dispatch(
        self, state: RunState, wf: Workflow, nxt: Next, countdown: float | None = None
    ) -> None:
        self._ensure_worker()
        kwargs = {"run_id": state.id}
        options: dict[str, Any] = {}
        first = kwargs  # the first task's: a countdown longer than one hop adds its due time
        if countdown:
            options["countdown"], due = first_hop(self.app, countdown)
            first = {**kwargs, **due}
        if nxt.action is Action.CONTINUE:
            sigs = [
                self.app.signature(
                    step_task_name(wf.name, s.name),
                    kwargs=first if i == 0 else kwargs,
                    immutable=True,
                )
                for i, s in enumerate(chained_steps(wf, nxt.index or 0))
            ]
            if not sigs:
                return
            canvas = sigs[0] if len(sigs) == 1 else chain(*sigs)
            canvas.apply_async(**options)
        elif nxt.action is Action.FANOUT:
            self.send_rows(state.id, wf, nxt.rows, options)
        elif nxt.action is Action.COMPENSATE:
            index = nxt.index or 0
            sdef = wf.row_def(state, index)  # one with a compensator (the engine checks)
            self.app.signature(
                compensate_task_name(wf.name, sdef.name),
                kwargs=_row_kwargs(first, index, _definition(wf, state, index)),
                immutable=True,
            ).apply_async(**options)
        elif nxt.action is Action.RETRY:
            index = nxt.index or 0
            sdef = wf.row_def(state, index)
            name = (compensate_task_name if nxt.phase == "compensate" else step_task_name)(
                wf.name, sdef.name
            )
            countdown, due = first_hop(self.app, nxt.delay)
            self.app.signature(
                name,
                kwargs=_row_kwargs({**kwargs, **due}, index, _definition(wf, state, index)),
                immutable=True,
            ).apply_async(countdown=countdown)

    def send_rows(
        self,
        run_id: str,
        wf: Workflow,
        rows: Sequence[tuple[int, str, int]],
        options: dict[str, Any] | None = None,
    ) -> None:
        """One task per row of a group (``Action.FANOUT``), each under the task id the run
        recorded for it when it marked the row in flight."""
        self._ensure_worker()
        kwargs = {"run_id": run_id}
        for row, task_id, definition in rows:
            self.app.signature(
                step_task_name(wf.name, wf.steps[definition].name),
                kwargs=_row_kwargs(kwargs, row, definition),
                immutable=True,
            ).apply_async(task_id=task_id, **(options or {}))

    def schedule_wait_timeout(self, run_id: str, index: int, seconds: float) -> None:
        """Fire ``flux.wait_timeout`` after ``seconds``, or after the longest countdown a
        worker may hold (it then schedules the rest: see celery/countdown.py)."""
        self._ensure_worker()
        self.app.signature(
            "flux.wait_timeout", kwargs={"run_id": run_id, "index": index}, immutable=True
        ).apply_async(countdown=min(seconds, max_countdown(self.app)))

    def revoke(self, run_id: str, running: Sequence[str], *, terminate: bool) -> None:
        """Revoke the run's tasks that workers hold (asked with ``inspect``, found by their
        ``run_id`` argument) and, with ``terminate``, its running ones with SIGTERM (the
        pool process is stopped; prefork only: the threads and solo pools cannot). A task
        still in the queue is not found: when it arrives, it finds the run cancelled."""
        if self.embedded:
            return
        held = set(self._held_tasks(run_id)) - set(running)
        control = self.app.control
        if held:
            control.revoke(sorted(held))
        if running and terminate:
            control.revoke(list(running), terminate=True, signal="SIGTERM")

    def _held_tasks(self, run_id: str) -> list[str]:
        inspect = self.app.control.inspect(timeout=1.0)
        found = []
        for getter in (inspect.reserved, inspect.scheduled):
            for tasks in (getter() or {}).values():
                for t in tasks:
                    req = t.get("request", t)
                    kwargs = req.get("kwargs") or {}
                    if (
                        isinstance(kwargs, dict)
                        and kwargs.get("run_id") == run_id
                        and req.get("id")
                    ):
                        found.append(req["id"])
        return found

    def live_task_ids(self) -> set[str] | None:
        """Task ids active, reserved or scheduled on any worker (1 s to answer; a worker
        that does not answer holds nothing). None when the broker cannot be asked."""
        if self.embedded:
            return set()
        ids: set[str] = set()
        try:
            inspect = self.app.control.inspect(timeout=1.0)
            for getter in (inspect.active, inspect.reserved, inspect.scheduled):
                for tasks in (getter() or {}).values():
                    for t in tasks:
                        req = t.get("request", t)
                        if req.get("id"):
                            ids.add(req["id"])
        except Exception as exc:
            log.warning("could not ask workers for live tasks: %s", exc)
            return None
        return ids
