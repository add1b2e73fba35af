"""One Celery task per step (``flux.<workflow>.<step>``) and per compensator
(``flux.<workflow>.<step>.compensate``). The task body is a thin shell around
``StepRunner``: it maps the runner's next action onto Celery (continue the chain, retry with a
countdown, stop the chain, dispatch compensation).

A failed attempt is visible where Celery users look: an attempt that will be retried ends its
task in RETRY with the handler's exception, and the last one in FAILURE by raising the
handler's exception (secrets masked, see failure.py) once the failure is stored and any
compensation sent, so that Flower's task page, its Failed filter and the worker's ERROR line
tell the truth. Raising also stops the chain."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry
from celery.utils.serialization import get_pickleable_exception
from sqlalchemy.exc import SQLAlchemyError

from ..core.builder import StepDef, Workflow, _Unset
from ..core.errors import DefinitionError, StorageError
from ..core.failure import Failure, stand_in
from ..runner import progress
from ..runner.change import Action, Next
from ..settings import load_settings
from .countdown import first_hop, max_countdown, seconds_left

if TYPE_CHECKING:
    from ..engine import FluxEngine

log = logging.getLogger("fluxcelery.celery")

#: Seconds past the soft limit before the pool kills a step stuck in C code.
HARD_LIMIT_MARGIN = 10.0


def use_engine(app: Celery, engine: FluxEngine, *, replace: bool = True) -> None:
    """Run ``app``'s step tasks with ``engine`` (``replace=False``: unless it has one)."""
    if replace or getattr(app, "flux_engine", None) is None:
        provide_engine(app, lambda: engine, lambda: engine.default_timeout)


def provide_engine(
    app: Celery,
    engine: Callable[[], FluxEngine],
    default_timeout: Callable[[], float | None],
) -> None:
    """Run ``app``'s step tasks with what ``engine()`` returns, called per task (the
    default engine is built on first use, inside the task, where an outage is retried).
    ``default_timeout()`` resolves the time limits of steps without a timeout, at worker
    start, without building the engine."""
    app.flux_engine = engine
    app.flux_default_timeout = default_timeout


def engine_for(app: Celery) -> FluxEngine:
    """The engine ``app``'s step tasks run with (see ``use_engine``)."""
    provider = getattr(app, "flux_engine", None)
    if provider is None:
        raise RuntimeError(
            f"Celery app {app.main!r} has no fluxcelery engine: run workers with "
            "`celery -A fluxcelery worker`, or call fluxcelery.celery.tasks.use_engine(app, "
            "engine)"
        )
    return provider()


def default_timeout_for(app: Celery) -> float | None:
    """The ``default_timeout`` of the engine ``app``'s tasks run with, without building it."""
    provider = getattr(app, "flux_default_timeout", None)
    return provider() if provider is not None else load_settings().default_timeout


def step_task_name(workflow: str, step: str) -> str:
    return f"flux.{workflow}.{step}"


def compensate_task_name(workflow: str, step: str) -> str:
    return f"flux.{workflow}.{step}.compensate"


def _limits(sdef: StepDef, default_timeout: float | None) -> dict[str, Any]:
    """Celery's time limits of a step: its resolved timeout (the step's, else the engine's
    ``default_timeout``), with a hard limit a margin later."""
    timeout = default_timeout if isinstance(sdef.timeout, _Unset) else sdef.timeout
    if timeout is None:
        return {"soft_time_limit": None, "time_limit": None}
    return {"soft_time_limit": timeout, "time_limit": timeout + HARD_LIMIT_MARGIN}


def outage_delay(outages: int) -> int:
    """Seconds before the ``outages``-th retry of a task for an unreachable database or
    broker: 1, 2, 4, ... up to 30."""
    return min(2 ** min(outages, 5), 30)


def _outage_retry(task: Task, exc: BaseException, *, mark: bool = False) -> Retry:
    """The database (or broker) is unreachable: try the same step again later. The step's
    stored state decides what that attempt does, so nothing runs twice by accident.

    The backoff counts this task's outages (its ``outages`` argument), not Celery's
    ``request.retries``, which also counts every step retry and every countdown hop: after
    those an outage would have waited 30 s from its first retry.

    ``mark``: pass ``outage=True`` to the retried step task, so that an attempt left
    ``running`` by the outage is re-run rather than counted as a worker loss."""
    kwargs = dict(task.request.kwargs or {})
    outages = int(kwargs.get("outages") or 0)
    countdown = outage_delay(outages)
    log.warning(
        "%s for run %s: %s; retrying in %ss", task.name, kwargs.get("run_id"), exc, countdown
    )
    kwargs["outages"] = outages + 1
    if mark:
        kwargs["outage"] = True
    return task.retry(exc=exc, countdown=countdown, max_retries=None, kwargs=kwargs)


def _redelivered(task: Task) -> bool:
    """The broker delivers this message again (its worker died before acking it)."""
    return bool((task.request.delivery_info or {}).get("redelivered"))


def _hop(task: Task, due: str | None) -> None:
    """A retry whose delay is longer than a message may be held arrives early: send it on
    (the same task, no attempt counted) until it is due."""
    left = seconds_left(due)
    if left:
        raise task.retry(countdown=min(left, max_countdown(task.app)), max_retries=None)


#: Exceptions that steer Celery itself: a handler's is shown as a stand-in of the same name.
_CELERY_CONTROL = (Retry, Ignore, Reject)


def _shown(failure: Failure) -> BaseException:
    """The exception a task ends with for ``failure``."""
    exc = failure.exception
    return stand_in(exc) if isinstance(exc, _CELERY_CONTROL) else exc


def _apply(
    task: Task, engine: FluxEngine, run_id: str, nxt: Next, workflow: str
) -> BaseException | None:
    """Map the runner's next action onto Celery. Returns the exception the task must end
    with (a step failed for good), for the caller to raise outside its outage handling: a
    handler's own ``OSError`` or ``SQLAlchemyError`` is a failure, not a database outage."""
    action = nxt.action
    if action is Action.RETRY:
        countdown, due = first_hop(task.app, nxt.delay)
        # A fresh attempt: no outage mark, no earlier due time (a for_each item keeps its row).
        kwargs = {"run_id": run_id, **due}
        row = (task.request.kwargs or {}).get("row")
        if row is not None:
            kwargs["row"] = row
        if nxt.failure is None:
            raise task.retry(countdown=countdown, max_retries=None, kwargs=kwargs)
        # RETRY with the handler's exception; chained, so that the traceback Flower shows
        # for the retry is the handler's, not only this module's.
        exc = _shown(nxt.failure)
        retry = task.retry(
            countdown=countdown,
            max_retries=None,
            kwargs=kwargs,
            exc=get_pickleable_exception(exc),
            throw=False,
        )
        raise retry from exc
    if action is Action.CONTINUE and task.request.chain:
        return None  # Celery sends the next task of the chain.
    task.request.chain = None  # every other outcome ends this chain
    if action in (Action.CONTINUE, Action.COMPENSATE):
        state = engine.get(run_id)
        if state is not None:
            engine.continue_run(state, nxt)
    elif action is Action.FANOUT:
        engine.fan_out(run_id, workflow, nxt)
    elif action is Action.SUSPEND and nxt.wait_timeout:
        engine.dispatcher().schedule_wait_timeout(run_id, nxt.index or 0, nxt.wait_timeout)
    # Stored, and compensation sent: the task ends in FAILURE with the handler's exception.
    # Not in eager mode (task_always_eager): an eager chain re-raises a failed task's
    # exception into the caller of ``start``, whose run is stored and settled already.
    if nxt.failure is None or task.request.is_eager:
        return None
    return _shown(nxt.failure)


def register_workflow(app: Celery, wf: Workflow, default_timeout: float | None) -> list[str]:
    """Create (once) the tasks of every step of ``wf`` on ``app``, with time limits from
    each step's timeout resolved against ``default_timeout`` (the running engine's). A task
    registered before takes the limits of the latest registration."""
    names = []
    for sdef in wf.steps:
        limits = _limits(sdef, default_timeout)
        names.append(_register_step(app, wf.name, sdef, limits))
        if sdef.compensate is not None:
            names.append(_register_compensation(app, wf.name, sdef, limits))
    return names


def _registered(
    app: Celery, name: str, target: tuple[str, str, str], limits: dict[str, Any]
) -> bool:
    """Whether task ``name`` exists already for ``target`` (workflow, step, role); if so it
    takes ``limits`` (the worker reads them at each execution). A name
    taken by anything else is a ``DefinitionError``: dots in workflow and step names can make
    two names meet (``flux.a.b.c``), and the task registered first would run for both."""
    task = app.tasks.get(name)
    if task is None:
        return False
    existing = getattr(task, "flux_target", None)
    if existing != target:

        def what(t: tuple[str, str, str] | None) -> str:
            if t is None:
                return "a task that is not a fluxcelery step"
            role = "the compensation of step" if t[2] == "compensate" else "step"
            return f"{role} {t[1]!r} of workflow {t[0]!r}"

        raise DefinitionError(
            f"Celery task {name!r} is already {what(existing)}, so it cannot also run "
            f"{what(target)}: rename one of them"
        )
    for key, value in limits.items():
        setattr(task, key, value)
    return True


class StepTask(Task):
    """The class of step and compensation tasks. Its messages carry no time limits: Celery
    would send this process's limits of the task, and a worker applies a message's limits
    over its own. A step's limits are the worker's, from its engine's resolved timeout."""

    def _get_exec_options(self) -> dict[str, Any]:
        options = dict(super()._get_exec_options())
        options.pop("soft_time_limit", None)
        options.pop("time_limit", None)
        return options


def _define(
    app: Celery, name: str, limits: dict[str, Any], body: Any, target: tuple[str, str, str]
) -> str:
    """Register a step or compensation task: at-least-once delivery (acks late, requeue on a
    lost worker), retries driven by fluxcelery, no result stored, the step's time limits."""
    app.task(
        name=name,
        base=StepTask,
        flux_target=target,
        bind=True,
        shared=False,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=None,
        ignore_result=True,
        **limits,
    )(body)
    return name


def _progress_listener(task: Task) -> Callable[[dict[str, Any]], None] | None:
    """Celery's progress convention, ``update_state(state="PROGRESS", meta=...)``, when the
    app has a result backend (Flower and ``AsyncResult.info`` show it). The task id is
    captured here: the handler may report from another thread, where ``task.request`` is
    empty."""
    from celery.backends.base import DisabledBackend

    task_id = task.request.id
    if task_id is None or isinstance(task.backend, DisabledBackend):
        return None

    def listener(report: dict[str, Any]) -> None:
        task.update_state(task_id=task_id, state="PROGRESS", meta=report)

    return listener


def _register_step(app: Celery, workflow: str, sdef: StepDef, limits: dict[str, Any]) -> str:
    name = step_task_name(workflow, sdef.name)
    target = (workflow, sdef.name, "step")
    if _registered(app, name, target, limits):
        return name
    index = sdef.index

    def run_step(
        self: Task,
        run_id: str,
        outage: bool = False,
        not_before: str | None = None,
        outages: int = 0,
        row: int | None = None,
    ) -> None:
        _hop(self, not_before)
        listening = progress.LISTENER.set(_progress_listener(self))
        try:
            # Inside the try: a fresh pool process builds its engine (and checks migrations)
            # here, and the database may be down right then. Failing the task would ack it
            # and strand the run; retrying it later loses nothing.
            engine = engine_for(self.app)
            nxt = engine.runner.run_step(
                run_id,
                index if row is None else row,  # ``row``: an item of this for_each
                task_id=self.request.id,
                worker=self.request.hostname,
                # Redelivered, an outage retry is a worker lost while it re-ran the attempt:
                # that counts as an attempt like any other loss (a handler that kills its
                # worker would otherwise be re-run under the same attempt forever).
                outage=outage and not _redelivered(self),
                workflow=workflow,
                definition=index,
            )
            failed = _apply(self, engine, run_id, nxt, workflow)
        except (StorageError, SQLAlchemyError, OSError) as exc:
            raise _outage_retry(self, exc, mark=True)
        finally:
            progress.LISTENER.reset(listening)
        if failed is not None:
            raise failed

    run_step.__name__ = f"step_{index}"
    return _define(app, name, limits, run_step, target)


def _register_compensation(
    app: Celery, workflow: str, sdef: StepDef, limits: dict[str, Any]
) -> str:
    name = compensate_task_name(workflow, sdef.name)
    target = (workflow, sdef.name, "compensate")
    if _registered(app, name, target, limits):
        return name
    index = sdef.index

    def compensate(
        self: Task,
        run_id: str,
        not_before: str | None = None,
        outages: int = 0,
        row: int | None = None,
    ) -> None:
        _hop(self, not_before)
        try:
            engine = engine_for(self.app)  # inside the try: see run_step
            nxt = engine.runner.run_compensation(
                run_id,
                index if row is None else row,  # ``row``: an item of this for_each
                task_id=self.request.id,
                worker=self.request.hostname,
            )
            failed = _apply(self, engine, run_id, nxt, workflow)
        except (StorageError, SQLAlchemyError, OSError) as exc:
            raise _outage_retry(self, exc)
        if failed is not None:
            raise failed

    compensate.__name__ = f"compensate_{index}"
    return _define(app, name, limits, compensate, target)


def register_builtin_tasks(app: Celery) -> None:
    @app.task(
        name="flux.wait_timeout",
        bind=True,
        acks_late=True,
        ignore_result=True,
        shared=False,
        max_retries=None,
    )
    def wait_timeout(self: Task, run_id: str, index: int, outages: int = 0) -> bool:
        """Fail a suspended step whose wait passed with no signal. Early (a wait longer than
        a message may be held is timed in hops), schedule the next hop."""
        try:
            engine = engine_for(self.app)
            if engine.expire_wait(run_id, index):
                return True
            left = engine.wait_remaining(run_id, index)
            if left is not None:
                engine.dispatcher().schedule_wait_timeout(run_id, index, left)
            return False
        except (StorageError, SQLAlchemyError, OSError) as exc:
            raise _outage_retry(self, exc)

    @app.task(name="flux.recover", ignore_result=True, shared=False)
    def recover(older_than: float | None = None) -> list[str]:
        """Continue stuck runs and expire overdue waits (schedule it with celery beat)."""
        return engine_for(app).recover(older_than)
