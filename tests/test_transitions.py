"""core/transitions.py: every status change, by name, table-tested without storage, Celery or
sleeping; and a check that no other module assigns a status."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fluxcelery import InvalidTransition, RunState, RunStatus, StepState, StepStatus
from fluxcelery.core import transitions as t

R, S = RunStatus, StepStatus
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=2)
PACKAGE = Path(__file__).resolve().parents[1] / "fluxcelery"


def run(status: RunStatus = R.RUNNING, *steps: StepStatus, current: int = 0) -> RunState:
    kinds = ["step", "commit", "step", "step"]
    return RunState(
        id="r1",
        workflow="wf",
        status=status,
        input={},
        data={},
        steps=[
            StepState(name=f"s{i}", index=i, kind=kinds[i], status=st)
            for i, st in enumerate(steps or (S.PENDING, S.PENDING))
        ],
        current_step=current,
        created_at=T0,
    )


def types(tr: t.Transition) -> list[str]:
    return [e.type for e in tr.events]


ATTEMPT: dict[str, Any] = {"task_id": "task-1", "worker": "w@h"}


def test_start_run_then_step() -> None:
    state = run(R.PENDING)
    tr = t.start_run(state, meta={"input": {}}, task_id="task-1", worker="w@h", at=T0)
    assert state.status == R.RUNNING and types(tr) == ["workflow:start"] and tr.steps == ()
    tr = t.start_step(state, 0, attempt=1, max_attempts=4, at=T0, **ATTEMPT)
    step = state.steps[0]
    assert (step.status, step.attempts, step.task_id, step.started_at) == (
        S.RUNNING,
        1,
        "task-1",
        T0,
    )
    assert tr.steps == (0,)
    event = tr.events[0]
    assert (event.type, event.attempt, event.max_attempts, event.meta) == ("step:start", 1, 4, None)


@pytest.mark.parametrize(
    ("rerun", "meta"),
    [(False, {"redelivered": True}), (True, {"redelivered": True, "outage": True})],
)
def test_a_step_found_running_was_redelivered(rerun: bool, meta: dict[str, bool]) -> None:
    state = run(R.RUNNING, S.RUNNING)
    tr = t.start_step(state, 0, attempt=2, max_attempts=4, at=T0, rerun=rerun, **ATTEMPT)
    assert tr.events[0].meta == meta


def test_a_running_step_reports_progress_and_a_new_attempt_starts_without_it() -> None:
    state = run(R.RUNNING, S.RUNNING)
    state.steps[0].attempts = 1
    tr = t.report_progress(state, 0, done=3, total=10, message="m", at=T1)
    assert state.steps[0].progress == {
        "done": 3,
        "total": 10,
        "message": "m",
        "at": T1.isoformat(),
    }
    assert tr.steps == ()  # stored out of band, never with a version bump
    assert (types(tr), tr.events[0].attempt, tr.events[0].meta) == (
        ["step:progress"],
        1,
        {"done": 3, "total": 10, "message": "m"},
    )
    assert state.status == R.RUNNING and state.steps[0].status == S.RUNNING
    t.start_step(state, 0, attempt=2, max_attempts=4, at=T1, **ATTEMPT)
    assert state.steps[0].progress is None


@pytest.mark.parametrize("status", [S.PENDING, S.COMPLETED, S.FAILED, S.SUSPENDED])
def test_only_a_running_step_reports_progress(status: StepStatus) -> None:
    state = run(R.RUNNING, status)
    with pytest.raises(InvalidTransition):
        t.report_progress(state, 0, done=1, total=None, message=None, at=T1)
    assert state.steps[0].progress is None


def test_complete_step_clears_the_last_attempts_error() -> None:
    state = run(R.RUNNING, S.RUNNING, S.PENDING)
    state.steps[0].error, state.steps[0].traceback = "E: x", "Traceback..."
    tr = t.complete_step(
        state, 0, {"ok": 1}, attempt=2, max_attempts=4, started=T0, at=T1, **ATTEMPT
    )
    step = state.steps[0]
    assert (step.status, step.output, step.error, step.traceback) == (
        S.COMPLETED,
        {"ok": 1},
        None,
        None,
    )
    assert step.duration_ms == 2000 and state.current_step == 1
    assert tr.events[0].duration_ms == 2000


def test_fail_attempt_keeps_the_step_pending_with_its_error_and_traceback() -> None:
    state = run(R.RUNNING, S.RUNNING)
    tr = t.fail_attempt(
        state, 0, "E: x", "tb", attempt=1, max_attempts=4, delay=2.0, started=T0, at=T1, **ATTEMPT
    )
    step = state.steps[0]
    assert (step.status, step.error, step.traceback) == (S.PENDING, "E: x", "tb")
    assert tr.events[0].meta == {"delay_s": 2.0, "next_attempt": 2}


@pytest.mark.parametrize("run_status", [R.PENDING, R.RUNNING, R.SUSPENDED])
def test_fail_step_leaves_the_run_running_for_its_failure_path(run_status: RunStatus) -> None:
    step_status = S.SUSPENDED if run_status == R.SUSPENDED else S.RUNNING
    state = run(run_status, S.COMPLETED, step_status, current=1)
    state.steps[1].wait_deadline = T1
    tr = t.fail_step(state, 1, "E: x", None, attempt=1, max_attempts=1, at=T1)
    assert state.status == R.RUNNING and state.error == "E: x" and state.current_step == 1
    assert state.steps[1].status == S.FAILED and state.steps[1].wait_deadline is None
    assert types(tr) == ["step:error"]


@pytest.mark.parametrize(
    ("status", "error", "events"),
    [
        (R.COMPLETED, None, ["workflow:complete"]),
        (R.FAILED, "E: x", ["workflow:error"]),
    ],
)
def test_finish_run(status: RunStatus, error: str | None, events: list[str]) -> None:
    state = run(R.RUNNING)
    state.error = "stale"
    tr = t.finish_run(state, status, T1, error)
    assert state.status == status and state.finished_at == T1 and types(tr) == events
    assert state.error == error and tr.events[0].duration_ms == 2000


def test_suspend_then_signal_then_finish() -> None:
    state = run(R.RUNNING, S.RUNNING)
    t.suspend_step(state, 0, "approval", 60.0, attempt=1, started=T0, at=T0, **ATTEMPT)
    assert state.status == R.SUSPENDED and state.steps[0].wait_deadline == T0 + timedelta(
        seconds=60
    )
    state.steps[0].started_at = T0
    tr = t.deliver_signal(state, 0, "approval", {"ok": True}, {"ok": True}, T1)
    assert state.status == R.RUNNING and state.current_step == 1
    assert state.steps[0].status == S.COMPLETED and state.steps[0].output == {"ok": True}
    assert tr.events[0].meta == {"signal": "approval", "payload": {"ok": True}}


def test_saga_rollback_to_rolled_back() -> None:
    state = run(R.RUNNING, S.COMPLETED, S.COMPLETED, S.RUNNING, current=2)
    t.fail_step(state, 2, "E: boom", None, attempt=1, max_attempts=1, at=T1)
    tr = t.begin_rollback(state, [1, 0], "E: boom")
    assert state.status == R.ROLLING_BACK and tr.events[0].meta == {"plan": ["s1", "s0"]}
    for i in (1, 0):
        t.begin_compensation(state, i)
        t.compensate_step(
            state, i, attempt=1, max_attempts=4, duration_ms=1, task_id=None, worker=None
        )
    tr = t.finish_rollback(state, T1)
    assert types(tr) == ["workflow:rollback_complete", "workflow:error"]
    assert state.status == R.ROLLED_BACK and state.error == "E: boom"


def test_a_failed_compensation_fails_the_run_naming_the_step() -> None:
    state = run(R.ROLLING_BACK, S.COMPLETED, S.FAILED, current=1)
    state.steps[1].error = "E: boom"
    t.begin_compensation(state, 0)
    tr = t.fail_compensation(
        state,
        0,
        "E: undo",
        "tb",
        retry=False,
        delay=0.0,
        attempt=1,
        max_attempts=1,
        duration_ms=1,
        task_id=None,
        worker=None,
    )
    assert tr.events[0].status == "compensation_failed"
    assert state.steps[0].status == S.COMPENSATION_FAILED
    t.finish_rollback(state, T1)
    assert state.status == R.FAILED
    assert state.error == (
        "CompensationError: compensation failed at step 's0'; original error: E: boom"
    )


def test_reset_for_retry_keeps_a_landed_commit() -> None:
    state = run(R.ROLLED_BACK, S.COMPENSATED, S.COMPENSATION_FAILED, S.FAILED, current=2)
    tr = t.reset_for_retry(state, 0)
    assert [s.status for s in state.steps] == [S.PENDING, S.COMPLETED, S.PENDING]
    assert state.status == R.RUNNING and state.current_step == 0 and set(tr.steps) == {0, 1, 2}
    assert tr.events[0].meta == {"retry": True, "from_step": "s0"}


def test_cancel_leaves_the_running_attempt_to_finish_unless_terminated() -> None:
    state = run(R.RUNNING, S.COMPLETED, S.RUNNING, current=1)
    tr = t.cancel_run(state, "by ops", T1)
    assert state.status == R.CANCELLED and state.steps[1].status == S.RUNNING
    assert (state.cancel_reason, state.error, tr.steps) == ("by ops", "Cancelled: by ops", ())
    assert tr.events[0].meta == {"reason": "by ops", "running": ["s1"]}
    tr = t.settle_cancelled_attempt(state, 1, output="late", started=T0, at=T1)
    assert (state.steps[1].status, state.steps[1].output, tr.events[0].type) == (
        S.COMPLETED,
        "late",
        "step:complete",
    )
    assert state.status == R.CANCELLED  # nothing follows

    state = run(R.RUNNING, S.COMPLETED, S.RUNNING, current=1)
    tr = t.cancel_run(state, "by ops", T1, terminate=True)
    assert state.steps[1].status == S.FAILED and tr.steps == (1,)
    assert state.steps[1].error == "Cancelled: by ops (attempt terminated)"


def test_a_cancel_that_compensates_rolls_back_then_ends_cancelled() -> None:
    state = run(R.SUSPENDED, S.COMPLETED, S.SUSPENDED, current=1)
    tr = t.cancel_run(state, "off", T1, plan=[0])
    assert state.status == R.ROLLING_BACK and types(tr) == [
        "workflow:cancel",
        "workflow:rollback_start",
    ]
    t.begin_compensation(state, 0)
    t.compensate_step(state, 0, attempt=1, max_attempts=1, duration_ms=1, task_id=None, worker=None)
    tr = t.finish_rollback(state, T1)
    assert (state.status, state.error, types(tr)) == (
        R.CANCELLED,
        "Cancelled: off",
        ["workflow:rollback_complete"],
    )


@pytest.mark.parametrize(
    ("make", "state"),
    [
        (lambda s: t.start_run(s, meta=None), run(R.COMPLETED)),
        (lambda s: t.cancel_run(s, "x", T1), run(R.COMPLETED)),
        (lambda s: t.reset_for_retry(s, 0), run(R.COMPLETED, S.COMPLETED)),
        (lambda s: t.cancel_run(s, "x", T1), run(R.ROLLING_BACK, S.RUNNING)),
        (
            lambda s: t.suspend_step(s, 0, "go", None, attempt=1, started=T0, at=T1, **ATTEMPT),
            run(R.ROLLING_BACK, S.RUNNING),
        ),
        (lambda s: t.finish_run(s, R.COMPLETED, T1), run(R.FAILED)),
        (
            lambda s: t.start_step(s, 0, attempt=1, max_attempts=1, at=T1, **ATTEMPT),
            run(R.RUNNING, S.COMPLETED),
        ),
        (lambda s: t.begin_compensation(s, 0), run(R.ROLLING_BACK, S.PENDING)),
    ],
)
def test_an_edge_not_in_the_table_is_refused_before_anything_changes(
    make: Any, state: RunState
) -> None:
    before = (state.status, [(s.status, s.attempts) for s in state.steps])
    with pytest.raises(InvalidTransition):
        make(state)
    assert (state.status, [(s.status, s.attempts) for s in state.steps]) == before


def _status_assignments(path: Path) -> list[int]:
    """Lines of ``path`` that assign a Run/StepStatus to a ``.status`` attribute."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AnnAssign, ast.AugAssign))
            else []
        )
        for target in targets:
            if isinstance(target, ast.Attribute) and target.attr == "status":
                value = ast.unparse(node.value) if node.value is not None else ""
                if "Status" in value or "target" in value or value.startswith(("S.", "R.")):
                    found.append(node.lineno)
    return found


def test_only_core_transitions_assigns_a_status() -> None:
    where = {
        str(p.relative_to(PACKAGE)): lines
        for p in PACKAGE.rglob("*.py")
        if (lines := _status_assignments(p))
    }
    assert set(where) == {"core/transitions.py"}, where


# -- groups: parallel branches and for_each items (SPEC section 11) ----------------------------
def group_run() -> RunState:
    """s0, a parallel at 1 with branch rows 2 (a) and 3 (b), s4 after it."""
    return RunState(
        id="r1",
        workflow="wf",
        status=R.RUNNING,
        input={},
        data={"k": 0},
        steps=[
            StepState(name="s0", index=0, status=S.COMPLETED),
            StepState(name="p", index=1, kind="parallel"),
            StepState(name="a1", index=2, branch="a", parent=1),
            StepState(name="b1", index=3, branch="b", parent=1),
            StepState(name="s4", index=4),
        ],
        current_step=1,
        created_at=T0,
    )


def test_a_group_fans_out_its_rows_move_inside_it_and_the_join_moves_the_run() -> None:
    state = group_run()
    tr = t.start_group(
        state, 1, launch=[(2, "t-a"), (3, "t-b")], task_id="t-p", worker=None, at=T0, meta={}
    )
    assert types(tr) == ["parallel:start"] and tr.steps == (1, 2, 3) and tr.created == ()
    assert state.steps[1].status == S.RUNNING
    assert (state.steps[2].task_id, state.steps[3].task_id) == ("t-a", "t-b")  # in flight
    started = t.start_step(state, 3, attempt=1, max_attempts=1, at=T0, **ATTEMPT)
    assert state.current_step == 1  # a branch step does not move the run's cursor
    assert started.events[0].meta == {"branch": "b"}
    t.complete_step(state, 3, "B", attempt=1, max_attempts=1, started=T0, at=T1, **ATTEMPT)
    assert state.current_step == 1
    joined = t.join_group(state, 1, {"b": "B"}, {"k": 1}, next_index=4, at=T1)
    assert types(joined) == ["parallel:join", "step:complete"]
    assert (state.steps[1].status, state.steps[1].output) == (S.COMPLETED, {"b": "B"})
    assert (state.data, state.current_step) == ({"k": 1}, 4)


def test_a_for_each_adds_its_items_as_rows_and_launches_some() -> None:
    state = group_run()
    items = [StepState(name="e", index=5 + k, item=k, parent=1) for k in range(3)]
    tr = t.start_group(
        state, 1, new_rows=items, launch=[(5, "t0")], task_id=None, worker=None, at=T0
    )
    assert tr.created == (5, 6, 7) and len(state.steps) == 8
    assert state.steps[5].task_id == "t0" and state.steps[6].task_id is None
    with pytest.raises(InvalidTransition):
        t.launch_rows(state, [(1, "x")])  # a running row is not launched again
    bad = [StepState(name="e", index=9, item=9, parent=1)]
    with pytest.raises(InvalidTransition, match="out of order"):
        t.start_group(group_run(), 1, new_rows=bad, task_id=None, worker=None, at=T0)
    skipped = t.skip_step(state, 6, task_id=None, worker=None, at=T0)
    assert skipped.events[0].meta == {"item": 1} and state.current_step == 1


def test_a_failed_branch_holds_the_rollback_and_a_cancel_fails_running_groups() -> None:
    state = group_run()
    t.start_group(state, 1, task_id=None, worker=None, at=T0)
    assert types(t.hold_rollback(state, "branch 'a' failed: x")) == []
    assert state.status == R.ROLLING_BACK and state.error == "branch 'a' failed: x"
    # A run cancelled while its group runs: the group step fails with the cancel.
    state = group_run()
    t.start_group(state, 1, task_id=None, worker=None, at=T0)
    t.start_step(state, 2, attempt=1, max_attempts=1, at=T0, **ATTEMPT)
    tr = t.cancel_run(state, "stop", T1)
    assert state.steps[1].status == S.FAILED and state.steps[2].status == S.RUNNING
    assert tr.events[0].meta == {"reason": "stop", "running": ["a1"]}


def test_reset_for_retry_leaves_the_items_of_earlier_groups_alone() -> None:
    state = group_run()
    state.status = R.FAILED
    state.steps.append(
        StepState(name="e", index=5, item=0, parent=0, status=S.COMPLETED, scope={"value": 1})
    )
    state.steps[1].status = S.FAILED
    t.reset_for_retry(state, 1)
    assert state.steps[5].status == S.COMPLETED  # item of the group at 0, before the retry
    assert state.steps[1].status == S.PENDING
