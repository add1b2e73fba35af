"""Approval steps (SPEC section 16), in process on every storage: a policy decides at once
or asks; only approvers decide; a decision is traced with who, when and why and becomes
``ctx.results[name]``; a rejection fails the step for good and the saga rolls back."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fluxcelery import (
    ConcurrentUpdate,
    DefinitionError,
    FluxEngine,
    InvalidTransition,
    NotAllowed,
    Rejected,
    RunStatus,
    StepStatus,
    wait_for,
    workflow,
)
from fluxcelery.cli.main import cli

S = StepStatus


def _flow(name: str, calls: list[str], **approval: Any) -> Any:
    def undo(ctx: Any) -> None:
        calls.append("undo reserve")

    def ship(ctx: Any) -> dict[str, Any]:
        calls.append("ship")
        return {"approved_by": ctx.results["manager"]["by"]}

    return (
        workflow(name)
        .step("reserve", lambda ctx: calls.append("reserve") or "r-1", compensate=undo)
        .approval("manager", **approval)
        .commit("ship", ship)
    )


def _events(engine: FluxEngine, run_id: str) -> list[tuple[str, str | None, str | None]]:
    return [(e.type, e.step, e.status) for e in engine.traces(run_id=run_id)]


def _decided(engine: FluxEngine, run_id: str) -> dict[str, Any]:
    (event,) = [e for e in engine.traces(run_id=run_id) if e.type == "approval:decided"]
    return dict(event.meta or {})


def test_ask_suspends_and_an_approver_continues_the_run(any_storage: Any) -> None:
    calls: list[str] = []
    engine = FluxEngine(storage=any_storage)
    wf = _flow("appr-ask", calls, approvers=["ann", "lee"], timeout=3600)
    waiting = engine.execute(wf, {})
    assert waiting.status == RunStatus.SUSPENDED
    step = engine.get(waiting.id).steps[1]  # type: ignore[union-attr]
    assert (step.kind, step.status, step.waiting_for) == (
        "approval",
        S.SUSPENDED,
        "approval:manager",
    )
    assert step.wait_deadline is not None
    requested = [e for e in engine.traces(run_id=waiting.id) if e.type == "approval:requested"]
    assert [e.meta for e in requested] == [{"approvers": ["ann", "lee"], "timeout": 3600.0}]

    done = engine.approve(waiting.id, "lee", "budget checked").get(timeout=10)

    assert done.status == RunStatus.COMPLETED
    decision = done.results["manager"]
    assert decision["decision"] == "approved" and decision["by"] == "lee"
    assert decision["comment"] == "budget checked" and decision["at"]
    assert done.results["ship"] == {"approved_by": "lee"}
    assert calls == ["reserve", "ship"]
    assert _decided(engine, waiting.id) == decision
    types = [t for t, _, _ in _events(engine, waiting.id)]
    assert types.index("approval:requested") < types.index("approval:decided")
    assert types[-1] == "workflow:complete"


def test_someone_outside_the_approvers_changes_nothing(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage)
    waiting = engine.execute(_flow("appr-who", [], approvers=["ann"]), {})
    before = _events(engine, waiting.id)
    for decide in (
        lambda: engine.approve(waiting.id, "mallory"),
        lambda: engine.reject(waiting.id, "mallory", "no"),
    ):
        with pytest.raises(NotAllowed, match="'mallory' may not decide approval step 'manager'"):
            decide()
    state = engine.get(waiting.id)
    assert state is not None and state.status == RunStatus.SUSPENDED
    assert state.steps[1].output is None
    assert _events(engine, waiting.id) == before


def test_approvers_may_be_a_callable_of_the_context(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage)

    def managers(ctx: Any) -> list[str]:  # never the requester
        return [n for n in ("ann", "lee") if n != ctx.input["requester"]]

    wf = _flow("appr-callable", [], approvers=managers)
    waiting = engine.execute(wf, {"requester": "ann"})
    with pytest.raises(NotAllowed, match="approvers: lee"):
        engine.approve(waiting.id, "ann")
    assert engine.approve(waiting.id, "lee").get(timeout=10).status == RunStatus.COMPLETED


def test_without_approvers_anyone_may_decide(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage)
    waiting = engine.execute(_flow("appr-anyone", []), {})
    assert engine.approve(waiting.id, "anyone").get(timeout=10).status == RunStatus.COMPLETED


def test_a_rejection_fails_the_step_for_good_and_the_saga_rolls_back(any_storage: Any) -> None:
    calls: list[str] = []
    engine = FluxEngine(storage=any_storage)
    waiting = engine.execute(_flow("appr-reject", calls, approvers=["ann"]), {})

    done = engine.reject(waiting.id, "ann", "over budget").get(timeout=10)

    assert done.status == RunStatus.ROLLED_BACK
    assert done.error == "Rejected: over budget"
    state = engine.get(waiting.id)
    assert state is not None
    step = state.steps[1]
    assert (step.status, step.attempts, step.error) == (S.FAILED, 1, "Rejected: over budget")
    assert step.output["decision"] == "rejected" and step.output["by"] == "ann"
    assert step.output["comment"] == "over budget"
    assert calls == ["reserve", "undo reserve"]
    assert _decided(engine, waiting.id)["reason"] == "over budget"
    types = [t for t, _, _ in _events(engine, waiting.id)]
    assert types[types.index("approval:decided") + 1] == "step:error"
    assert types[-1] == "workflow:error"
    # A rejected approval is not retried from where it failed without a new decision: a
    # retry asks again.
    again = engine.retry(waiting.id).get(timeout=10)
    assert again.status == RunStatus.SUSPENDED


@pytest.mark.parametrize(
    ("choice", "status", "by"),
    [("auto", RunStatus.COMPLETED, "policy"), ("deny", RunStatus.ROLLED_BACK, "policy")],
)
def test_the_policy_decides_at_once(
    any_storage: Any, choice: str, status: RunStatus, by: str
) -> None:
    calls: list[str] = []
    engine = FluxEngine(storage=any_storage)
    seen: list[Any] = []

    def policy(ctx: Any) -> str:
        seen.append(ctx.input)
        return choice

    done = engine.execute(_flow(f"appr-{choice}", calls, policy=policy), {"amount": 5})
    assert done.status == status
    assert seen == [{"amount": 5}]
    decision = _decided(engine, done.id)
    assert decision["by"] == by
    assert decision["decision"] == ("approved" if choice == "auto" else "rejected")
    types = [t for t, _, _ in _events(engine, done.id)]
    assert "approval:requested" not in types and "step:suspend" not in types
    if choice == "deny":
        assert done.error == "Rejected: denied by policy"
        assert calls == ["reserve", "undo reserve"]
        state = engine.get(done.id)
        assert state is not None and state.steps[1].attempts == 1  # not retried
    else:
        assert done.results["manager"]["by"] == "policy"
        assert calls == ["reserve", "ship"]


def test_a_policy_answer_that_is_not_a_choice_fails_the_step_naming_it(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage)
    done = engine.execute(_flow("appr-bad-policy", [], policy=lambda ctx: "maybe"), {})
    assert done.status == RunStatus.ROLLED_BACK
    assert "returned 'maybe'; expected one of auto, ask, deny" in (done.error or "")


def test_an_approval_is_not_a_plain_signal_and_a_plain_wait_is_not_an_approval(
    any_storage: Any,
) -> None:
    engine = FluxEngine(storage=any_storage)
    waiting = engine.execute(_flow("appr-signal", [], approvers=["ann"]), {})
    with pytest.raises(NotAllowed, match="use approve/reject"):
        engine.signal(waiting.id, "approval:manager", {"decision": "approved", "by": "ann"})
    plain = workflow("appr-plain-wait").step("wait", lambda ctx: wait_for("go"))
    other = engine.execute(plain, {})
    with pytest.raises(InvalidTransition, match="waits for signal 'go', not for an approval"):
        engine.approve(other.id, "ann")
    done = engine.approve(waiting.id, "ann").get(timeout=10)
    with pytest.raises(InvalidTransition, match="not suspended"):
        engine.approve(done.id, "ann")


def test_bad_deciders_and_reasons_are_refused_before_anything_is_read(any_storage: Any) -> None:
    engine = FluxEngine(storage=any_storage)
    waiting = engine.execute(_flow("appr-args", []), {})
    with pytest.raises(ValueError, match="'by' must name who decides"):
        engine.approve(waiting.id, "  ")
    with pytest.raises(ValueError, match="give a reason"):
        engine.reject(waiting.id, "ann", "")


def test_a_decision_with_no_answer_within_the_timeout_fails_the_step(any_storage: Any) -> None:
    calls: list[str] = []
    engine = FluxEngine(storage=any_storage)
    waiting = engine.execute(_flow("appr-timeout", calls, timeout=60), {})
    state = engine.get(waiting.id)
    assert state is not None and state.steps[1].wait_deadline is not None
    assert engine.expire_wait(
        waiting.id, 1, now=state.steps[1].wait_deadline + timedelta(seconds=1)
    )
    done = engine.get(waiting.id)
    assert done is not None and done.status == RunStatus.ROLLED_BACK
    assert done.error == "StepTimeout: no decision on approval step 'manager' within its timeout"
    assert calls == ["reserve", "undo reserve"]


def test_two_deciders_at_once_decide_once(sql_storage: Any) -> None:
    calls: list[str] = []
    engine = FluxEngine(storage=sql_storage)
    waiting = engine.execute(_flow("appr-race", calls), {})
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def decide(fn: Any) -> None:
        barrier.wait()
        try:
            fn()
            outcomes.append("landed")
        except (ConcurrentUpdate, InvalidTransition) as exc:
            outcomes.append(type(exc).__name__)

    threads = [
        threading.Thread(target=decide, args=(lambda: engine.approve(waiting.id, "ann"),)),
        threading.Thread(target=decide, args=(lambda: engine.reject(waiting.id, "lee", "no"),)),
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert sorted(outcomes).count("landed") == 1, outcomes
    decided = [e for e in engine.traces(run_id=waiting.id) if e.type == "approval:decided"]
    assert len(decided) == 1
    state = engine.get(waiting.id)
    assert state is not None
    assert state.status in (RunStatus.COMPLETED, RunStatus.ROLLED_BACK)
    assert calls.count("ship") + calls.count("undo reserve") == 1


def test_definition_problems_are_named_together() -> None:
    with pytest.raises(DefinitionError) as err:
        workflow("appr-defs").approval(
            "ok",
            policy="auto",
            approvers=[],
            timeout=-1,
            compensate=3,  # type: ignore[arg-type]
        )
    text = str(err.value)
    for part in ("policy must be callable", "approvers must be", "timeout must be", "compensate"):
        assert part in text
    wf = workflow("appr-describe").approval("mgr", approvers={"lee", "ann"}, policy=lambda c: "ask")
    described = wf.describe()["steps"][0]
    assert described["kind"] == "approval" and described["approvers"] == ["ann", "lee"]
    assert described["policy"] is not None


def test_rejected_is_a_non_retryable_error_users_can_raise() -> None:
    exc = Rejected("no budget")
    assert exc.code == "rejected" and str(exc) == "no budget"


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_approve_and_reject(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PURCHASE_APPROVERS", "ann,lee")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # workflows/
    db = f"sqlite:///{tmp_path}/flux.db"
    runner = CliRunner()

    def flux(*args: str) -> Any:
        return runner.invoke(
            cli, ["--db", db, "--workflows", "workflows.approval", *args], catch_exceptions=False
        )

    def body(amount: str) -> dict[str, str]:
        return {"request_id": "r-1", "requester": "kim", "amount": amount}

    def start(amount: str) -> str:
        out = flux(
            "run", "purchase-approval", "--local", "--input", json.dumps(body(amount)), "--json"
        )
        assert out.exit_code == 0, out.output
        doc = json.loads(out.output)
        assert doc["status"] == "suspended"
        return str(doc["id"])

    first = start("250.00")
    refused = flux("approve", first, "--by", "kim")
    assert refused.exit_code == 1
    assert "'kim' may not decide approval step 'manager'" in refused.output
    ok = flux("approve", first, "--by", "ann", "--comment", "fine", "--json")
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert doc["status"] == "completed"
    assert doc["results"]["manager"]["by"] == "ann"
    assert doc["results"]["place-order"]["approved_by"] == "ann"
    assert "approved by ann: fine" in flux("show", first).output

    second = start("300.00")
    missing = flux("reject", second, "--by", "lee")
    assert missing.exit_code == 2 and "--reason" in missing.output
    plain = flux("run", "purchase-approval", "--local", "--input", json.dumps(body("300.00")))
    assert "waiting for a decision on approval 'manager': fluxcelery approve" in plain.output
    no = flux("reject", second, "--by", "lee", "--reason", "not this quarter", "--json")
    assert no.exit_code == 1, no.output
    assert '"status": "rolled_back"' in no.output
    assert '"error": "Rejected: not this quarter"' in no.output
    assert "ended rolled_back: Rejected: not this quarter" in no.output


def test_compensations_see_the_rejected_decision(any_storage: Any) -> None:
    seen: list[Any] = []

    def undo(ctx: Any) -> None:
        seen.append(ctx.results.get("manager"))

    wf = (
        workflow("appr-undo-sees")
        .step("reserve", lambda ctx: 1, compensate=undo)
        .approval("manager")
        .step("ship", lambda ctx: 2)
    )
    engine = FluxEngine(storage=any_storage)
    waiting = engine.execute(wf, {})
    engine.reject(waiting.id, "ann", "too late").get(timeout=10)
    assert [(d["decision"], d["by"], d["comment"]) for d in seen] == [
        ("rejected", "ann", "too late")
    ]
