"""ctx.session: a commit step's writes (and its compensator's) commit atomically with the
step's record, on every SQL backend."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from fluxcelery import FluxEngine, NonRetryableError, RunStatus, StepStatus, workflow


def _table(storage: Any, name: str) -> None:
    with storage.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        conn.execute(sa.text(f"CREATE TABLE {name} (run_id TEXT, what TEXT)"))


def _rows(storage: Any, name: str) -> list[tuple[str, str]]:
    with storage.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(f"SELECT run_id, what FROM {name}"))]


def test_compensator_of_a_commit_step_writes_in_the_same_transaction(
    sql_storage: Any, make_engine: Any
) -> None:
    _table(sql_storage, "cs_ledger")
    undo_calls: list[int] = []

    def charge(ctx: Any) -> None:
        ctx.session.execute(
            sa.text("INSERT INTO cs_ledger VALUES (:r, 'charge')"), {"r": ctx.run_id}
        )

    def refund(ctx: Any) -> None:
        undo_calls.append(ctx.attempt)
        assert ctx.session is not None
        ctx.session.execute(
            sa.text("INSERT INTO cs_ledger VALUES (:r, 'refund')"), {"r": ctx.run_id}
        )
        if ctx.attempt == 1:
            raise RuntimeError("refund API down")  # this attempt's insert must roll back

    def ship(ctx: Any) -> None:
        raise NonRetryableError("no courier")

    wf = (
        workflow("cs-commit-undo")
        .commit("charge", charge, compensate=refund, retries=2)
        .step("ship", ship)
    )
    engine: FluxEngine = make_engine(storage=sql_storage)
    result = engine.execute(wf, {})
    assert result.status == RunStatus.ROLLED_BACK
    assert result.step("charge").status == StepStatus.COMPENSATED
    assert undo_calls == [1, 2]
    assert sorted(_rows(sql_storage, "cs_ledger")) == [(result.id, "charge"), (result.id, "refund")]
    types = [e.type for e in engine.traces(run_id=result.id)]
    assert types[-6:] == [
        "step:error",
        "workflow:rollback_start",
        "step:compensate_error",
        "step:compensate",
        "workflow:rollback_complete",
        "workflow:error",
    ]
    assert types.count("step:compensate_error") == 1 and types.count("step:compensate") == 1


def test_plain_step_compensators_get_no_session(make_engine: Any, sqlite_storage: Any) -> None:
    seen: list[Any] = []
    wf = (
        workflow("cs-plain-undo")
        .step("a", lambda ctx: None, compensate=lambda ctx: seen.append(ctx.session))
        .step("b", lambda ctx: (_ for _ in ()).throw(NonRetryableError("x")))
    )
    result = make_engine(storage=sqlite_storage).execute(wf, {})
    assert result.status == RunStatus.ROLLED_BACK
    assert seen == [None]
