"""The transition table is enforced on every persisted change (SPEC section 4)."""

from __future__ import annotations

import pytest

from fluxcelery import FluxEngine, InvalidTransition, RunStatus, StepStatus, workflow
from fluxcelery.core import transitions
from fluxcelery.core.states import (
    RUN_TRANSITIONS,
    STEP_TRANSITIONS,
    TERMINAL_RUN,
    check_run_change,
    check_run_transition,
    check_step_transition,
)

R, S = RunStatus, StepStatus


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (R.PENDING, R.RUNNING),
        (R.RUNNING, R.SUSPENDED),
        (R.SUSPENDED, R.RUNNING),
        (R.RUNNING, R.ROLLING_BACK),
        (R.ROLLING_BACK, R.ROLLED_BACK),
        (R.ROLLING_BACK, R.FAILED),
        (R.FAILED, R.RUNNING),
        (R.ROLLED_BACK, R.RUNNING),
        (R.SUSPENDED, R.CANCELLED),
    ],
)
def test_spec_run_transitions_are_allowed(before: RunStatus, after: RunStatus) -> None:
    check_run_transition(before, after)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (R.COMPLETED, R.RUNNING),
        (R.CANCELLED, R.RUNNING),
        (R.PENDING, R.ROLLED_BACK),
        (R.SUSPENDED, R.COMPLETED),
        (R.ROLLED_BACK, R.COMPLETED),
    ],
)
def test_other_run_transitions_are_refused(before: RunStatus, after: RunStatus) -> None:
    with pytest.raises(InvalidTransition) as err:
        check_run_transition(before, after)
    assert before.value in str(err.value) and after.value in str(err.value)


def test_completed_and_cancelled_are_final() -> None:
    assert RUN_TRANSITIONS[R.COMPLETED] == frozenset()
    assert RUN_TRANSITIONS[R.CANCELLED] == frozenset()
    assert {R.COMPLETED, R.CANCELLED, R.FAILED, R.ROLLED_BACK} == TERMINAL_RUN


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (R.PENDING, R.COMPLETED),  # start and skip the only step: two transitions
        (R.SUSPENDED, R.COMPLETED),  # a signal to the last step: two transitions
        (R.FAILED, R.COMPLETED),  # was accepted "through running"
        (R.COMPLETED, R.FAILED),
    ],
)
def test_a_change_is_one_edge_of_the_table(before: RunStatus, after: RunStatus) -> None:
    """Strict: a write that passes through ``running`` is checked edge by edge where its
    transitions are made (core/transitions.py, tests/test_transitions.py)."""
    with pytest.raises(InvalidTransition):
        check_run_change(before, after)
    check_run_change(before, before)  # no change of status


def test_every_step_status_has_a_row() -> None:
    assert set(STEP_TRANSITIONS) == set(S)
    with pytest.raises(InvalidTransition, match="step 'x'"):
        check_step_transition(S.PENDING, S.COMPENSATED, "x")


def test_invalid_change_is_refused_before_it_is_stored(engine: FluxEngine) -> None:
    wf = workflow("states-guard").step("a", lambda ctx: 1)
    result = engine.execute(wf)
    state = engine.get(result.id)
    assert state is not None
    change = engine.rt.change(state)
    with pytest.raises(InvalidTransition, match="completed -> suspended"):
        # completed -> suspended is not in the table: refused before anything changes
        change.apply(
            transitions.suspend_step(
                state,
                0,
                "go",
                None,
                attempt=1,
                started=state.created_at,
                at=state.created_at,
                task_id=None,
                worker=None,
            )
        )
    assert state.steps[0].status == S.COMPLETED and state.status == R.COMPLETED
    stored = engine.get(result.id)
    assert stored is not None and stored.version == state.version
    assert stored.steps[0].status == S.COMPLETED
