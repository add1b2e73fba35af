"""Parallel branches and for_each items (SPEC section 11): the fan-out of a group step, what
follows a branch step or item, and the join, decided in the same guarded write as the
outcome of the row that completes the group, so that it happens exactly once.

A group step is ``running`` from its fan-out to its join; its branch steps and items are
rows of the run with ``parent`` set. A row whose task was sent carries that task's id (it is
in flight); a ``for_each`` sends its next items as earlier ones end, at most
``max_concurrency`` in flight. Rows of a group are written by several workers at once: a
row's write that loses its race to a sibling's is made again on the fresh run
(``StepRunner``), which is how the last two rows to end meet in one join, never two.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from ..core import transitions as t
from ..core.branching import merge_changes
from ..core.builder import MAX_ITEMS, StepDef, Workflow
from ..core.errors import NonRetryableError
from ..core.jsoncodec import roundtrip
from ..core.records import RunState, StepState
from ..core.states import DONE_STEP, StepStatus
from .change import Action, Change, Next
from .runtime import VIEW_WAITING, Runtime

S = StepStatus


def new_task_id() -> str:
    return str(uuid.uuid4())


def rows_of(state: RunState, parent: int) -> list[StepState]:
    """The rows of group step ``parent``: its branch steps, or its items in item order."""
    return [s for s in state.steps if s.parent == parent]


def in_flight(state: RunState, parent: int) -> list[StepState]:
    """Rows of ``parent`` sent and not ended: pending with a task id, or running."""
    return [
        s
        for s in rows_of(state, parent)
        if s.status == S.RUNNING or (s.status == S.PENDING and s.task_id is not None)
    ]


def running_rows(state: RunState) -> list[int]:
    """Rows with an attempt under way (group steps themselves are not attempts)."""
    return [s.index for s in state.steps if s.status == S.RUNNING and s.kind in ("step", "commit")]


def branch_next(wf: Workflow, state: RunState, row: int) -> int | None:
    """The next step of ``row``'s branch that still has to run (past steps kept done)."""
    nxt = wf.steps[row].next_in_branch
    while nxt is not None and state.steps[nxt].status in DONE_STEP:
        nxt = wf.steps[nxt].next_in_branch
    return nxt


class Groups:
    """Fan-out, follow-up and join of group steps, for ``StepRunner``."""

    def __init__(self, rt: Runtime, advance: Callable[[Change, Workflow, int], Next]) -> None:
        self.rt = rt
        #: Moves the run past a top-level step that is done (``StepRunner._advance``).
        self.advance = advance

    # -- fan-out ----------------------------------------------------------------------------
    def fan_out(
        self,
        change: Change,
        wf: Workflow,
        sdef: StepDef,
        task_id: str | None,
        worker: str | None,
    ) -> Next:
        """Start group step ``sdef``: make its items (for_each, once), mark the rows it
        sends now and say which. A group already running (``resume``, ``recover``) sends
        its rows in flight again. Raises ``FluxError`` when ``items`` gives no list."""
        state = change.state
        p = sdef.index
        if state.steps[p].status == S.RUNNING:
            again = [(s.index, s.task_id or new_task_id()) for s in in_flight(state, p)]
            return self._send(again, wf, state)
        new_rows: list[StepState] = []
        counters: dict[str, int] | None = None
        if sdef.kind == "parallel":
            firsts = []
            for _, indexes in sdef.branches:
                first = indexes[0]
                if state.steps[first].status in DONE_STEP:
                    first = branch_next(wf, state, first) or -1
                if first >= 0:
                    firsts.append(first)
            launch = [(i, new_task_id()) for i in firsts]
            meta: dict[str, Any] = {"branches": [name for name, _ in sdef.branches]}
        else:
            rows = rows_of(state, p)
            if not rows:  # evaluated once: a retry keeps the items it had
                values = self._items(wf, state, sdef)
                kind = "commit" if sdef.item_commit else "step"
                base = len(state.steps)
                new_rows = [
                    StepState(
                        name=sdef.name,
                        index=base + k,
                        kind=kind,
                        item=k,
                        parent=p,
                        scope={"value": v},
                    )
                    for k, v in enumerate(values)
                ]
                rows = new_rows
            todo = [s.index for s in rows if s.status == S.PENDING]
            limit = sdef.max_concurrency or len(todo)
            launch = [(i, new_task_id()) for i in todo[:limit]]
            meta = {"items": len(rows), "max_concurrency": sdef.max_concurrency}
            first = rows[0].index if rows else len(state.steps)
            counters = t.item_counters(
                open=sum(1 for s in rows if s.status not in DONE_STEP),
                in_flight=len(launch),
                next_item=(launch[-1][0] + 1) if launch else first,
            )
        change.apply(
            t.start_group(
                state,
                p,
                new_rows=new_rows,
                launch=launch,
                task_id=task_id,
                worker=worker,
                at=self.rt.clock(),
                meta=meta,
                counters=counters,
            )
        )
        if not launch:  # nothing to run (no items, or every row kept done): join now
            joined = self.join(change, wf, p)
            if joined is not None:
                return joined
        return self._send(launch, wf, state)

    def _items(self, wf: Workflow, state: RunState, sdef: StepDef) -> list[Any]:
        assert sdef.items is not None
        ctx = self.rt.context(wf, state, sdef, 0)
        got = self.rt.invoker.call(
            sdef.items,
            ctx,
            timeout=self.rt.defaults.timeout_of(sdef),
            what=f"items() of for_each {sdef.name!r}",
        )
        if isinstance(got, tuple):
            got = list(got)
        if not isinstance(got, list):
            raise NonRetryableError(
                f"items() of for_each {sdef.name!r} must return a list, got {type(got).__name__}"
            )
        if len(got) > MAX_ITEMS:
            raise NonRetryableError(
                f"items() of for_each {sdef.name!r} gave {len(got)} items (at most {MAX_ITEMS})"
            )
        values = roundtrip(got, what=f"items of for_each {sdef.name!r}")
        assert isinstance(values, list)
        return values

    @staticmethod
    def _send(launch: list[tuple[int, str]], wf: Workflow, state: RunState) -> Next:
        rows = tuple(
            (i, task_id, i if i < len(wf.steps) else state.steps[i].parent or 0)
            for i, task_id in launch
        )
        return Next(Action.FANOUT, rows=rows)

    # -- after a row ended well ----------------------------------------------------------------
    def after_row(self, change: Change, wf: Workflow, row: int) -> Next | None:
        """Row ``row`` completed or was skipped: send what comes next in its group, or join
        when it was the last. None: the group goes on elsewhere (nothing for this task)."""
        state = change.state
        s = state.steps[row]
        p = s.parent
        assert p is not None
        sdef = wf.steps[p]
        launch: list[tuple[int, str]] = []
        if sdef.kind == "parallel":
            nxt = branch_next(wf, state, row)
            if nxt is not None:
                launch = [(nxt, new_task_id())]
        else:
            # An item: its group's counters (moved by this row's outcome already) say what
            # follows, without reading every item; only the join reads them all.
            counters = state.steps[p].scope or {}
            if counters.get("open", 1) == 0:
                return self.join(change, wf, p)
            room = (sdef.max_concurrency or 0) - counters.get("in_flight", 0)
            nxt_item = counters.get("next", len(state.steps))
            looked = nxt_item
            for i in range(nxt_item, min(nxt_item + VIEW_WAITING, len(state.steps))):
                if room <= 0:
                    break
                looked = i + 1
                candidate = state.steps[i]
                if candidate.status == S.PENDING and candidate.task_id is None:
                    launch.append((i, new_task_id()))
                    room -= 1
            if launch or looked > nxt_item:
                change.apply(t.launch_rows(state, launch, group=p, next_item=looked))
            return self._send(launch, wf, state) if launch else None
        if launch:
            change.apply(t.launch_rows(state, launch))
            return self._send(launch, wf, state)
        return self.join(change, wf, p)

    # -- the join ------------------------------------------------------------------------------
    def join(self, change: Change, wf: Workflow, p: int) -> Next | None:
        """When every row of group ``p`` is done: merge their data, complete the group
        step and move the run on (the caller's write). None: rows are still to end.
        Raises ``DataConflict`` when two branches set the same key."""
        state = change.state
        rows = rows_of(state, p)
        if any(r.status not in DONE_STEP for r in rows):
            return None
        sdef = wf.steps[p]
        if sdef.kind == "parallel":
            last = {name: indexes[-1] for name, indexes in sdef.branches}
            output: Any = {name: state.steps[i].output for name, i in last.items()}
            scopes = [(f"branch {name!r}", state.steps[i].scope) for name, i in last.items()]
        else:
            output = [r.output for r in rows]
            scopes = [(f"item {r.item}", r.scope) for r in rows]
        data = merge_changes(state.data, scopes)
        change.apply(
            t.join_group(state, p, output, data, next_index=wf.after(p), at=self.rt.clock())
        )
        return self.advance(change, wf, p)


def group_error(state: RunState, row: int, err: str) -> str:
    """The error of a group step failed by its row ``row``."""
    s = state.steps[row]
    where = f"branch {s.branch!r}" if s.item is None else f"item {s.item}"
    return f"{where} failed: {err}"
