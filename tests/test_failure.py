"""failure.py: the exception a step task ends with and the traceback stored on the step,
with the run's secrets masked in every message of the chain."""

from __future__ import annotations

import pickle

import pytest
from celery.exceptions import Ignore, Retry

from fluxcelery import Backoff, FluxEngine, MemoryStorage, StepStatus, workflow
from fluxcelery.celery.tasks import _shown
from fluxcelery.core.failure import StepFailed, capture, masked_exception, stand_in

SECRET = "sk-live-0123456789"


def scrub(text: str) -> str:
    return text.replace(SECRET, "***")


class TwoArgs(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_an_exception_without_secrets_is_shown_as_itself() -> None:
    exc = raised(ValueError("plain"))
    failure = capture(exc, "ValueError: plain", scrub)
    assert failure.exception is exc
    assert failure.traceback is not None
    assert failure.traceback.startswith("Traceback (most recent call last):")
    assert failure.traceback.endswith("ValueError: plain")
    assert "in raised" in failure.traceback


def test_a_secret_in_the_message_or_the_chain_is_masked_in_a_copy_of_the_same_type() -> None:
    try:
        try:
            raise KeyError(f"token {SECRET}")
        except KeyError as inner:
            raise ValueError(f"refused {SECRET}") from inner
    except ValueError as caught:
        outer = caught
    failure = capture(outer, "x", scrub)
    copy = failure.exception
    assert type(copy) is ValueError
    assert str(copy) == "refused ***"
    assert isinstance(copy.__cause__, KeyError)
    assert str(copy.__cause__) == "'token ***'"
    assert copy.__traceback__ is outer.__traceback__  # the same frames
    assert failure.traceback is not None
    assert SECRET not in failure.traceback
    assert "The above exception was the direct cause" in failure.traceback
    assert str(outer) == f"refused {SECRET}"  # the original is left alone


def test_a_type_that_cannot_be_built_from_a_message_gets_a_stand_in_of_the_same_name() -> None:
    exc = raised(TwoArgs(402, f"declined {SECRET}"))
    copy = masked_exception(exc, scrub)
    assert type(copy).__name__ == "TwoArgs"
    assert type(copy).__module__ == __name__
    assert repr(copy) == "TwoArgs('402: declined ***')"
    assert copy.__traceback__ is exc.__traceback__


def test_no_exception_gives_step_failed_and_no_traceback() -> None:
    failure = capture(None, "WorkerLost: step 'x' was interrupted 4 times", scrub)
    assert isinstance(failure.exception, StepFailed)
    assert str(failure.exception) == "WorkerLost: step 'x' was interrupted 4 times"
    assert failure.traceback is None
    pickle.loads(pickle.dumps(failure.exception))  # travels from a pool child


@pytest.mark.parametrize("control", [Retry("again"), Ignore("skip")])
def test_a_handlers_celery_control_exception_cannot_steer_its_task(control: Exception) -> None:
    shown = _shown(capture(raised(control), "x", scrub))
    assert not isinstance(shown, (Retry, Ignore))
    assert type(shown).__name__ == type(control).__name__
    assert str(shown) == str(control)


def test_stand_in_keeps_message_and_frames() -> None:
    exc = raised(Ignore("why"))
    made = stand_in(exc)
    assert str(made) == "why" and made.__traceback__ is exc.__traceback__


def test_an_oserror_keeps_its_type_and_fields() -> None:
    exc = raised(FileNotFoundError(2, "No such file", f"/keys/{SECRET}"))
    copy = masked_exception(exc, scrub)
    assert type(copy) is FileNotFoundError
    assert str(copy) == "[Errno 2] No such file: '/keys/***'"


def test_the_failing_steps_traceback_is_stored_masked_and_cleared_by_a_success() -> None:
    calls = {"n": 0}

    def charge(ctx):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError(f"gateway refused key {ctx.input['api_token']}")
        return "ok"

    wf = workflow("failure-traceback").step(
        "charge", charge, retries=1, backoff=Backoff(base=0, jitter=False)
    )
    engine = FluxEngine(storage=MemoryStorage())
    failed = engine.execute(wf, {"api_token": SECRET})
    step = failed.step("charge")
    assert step.status == StepStatus.FAILED
    assert step.traceback is not None
    assert "in charge" in step.traceback
    # It starts at the handler: fluxcelery's calling frames (runner, invoke, the thread
    # pool the timeout runs it on) are cut.
    assert step.traceback.splitlines()[1].endswith(", in charge")
    assert "fluxcelery" not in step.traceback and "concurrent" not in step.traceback
    assert step.traceback.endswith("RuntimeError: gateway refused key ***")
    assert SECRET not in step.traceback
    assert failed.steps[0].to_dict()["traceback"] == step.traceback

    retried = engine.retry(failed.id).get(timeout=10)
    assert retried.step("charge").status == StepStatus.COMPLETED
    assert retried.step("charge").traceback is None
