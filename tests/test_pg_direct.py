"""The PostgreSQL hot path. Its own connections (fluxcelery/storage/pgdirect.py): a dropped
connection is an outage (``StorageError``) that heals on the next call, threads and forked
children each get their own, and a child never ends the parent's session. The claim
(``load_and_claim``): it starts a step only in the plain case, and only once."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict

from fluxcelery import SqlStorage, workflow
from fluxcelery.core.errors import StorageError
from fluxcelery.core.jsoncodec import dumps, dumps_for_jsonb
from fluxcelery.core.records import RunState, StepState, utcnow
from fluxcelery.core.states import RunStatus, StepStatus
from fluxcelery.runner.change import Action
from fluxcelery.storage.base import StepClaim
from fluxcelery.storage.pgdirect import conninfo
from fluxcelery.trace.event import TraceEvent, new_event_id


def new_run(run_id: str) -> RunState:
    return RunState(
        id=run_id,
        workflow="pg-direct",
        status=RunStatus.PENDING,
        input={"n": 1},
        data={},
        steps=[StepState(name="a", index=0)],
    )


def backend_pid(storage: SqlStorage) -> int:
    rows = storage._fetch("SELECT pg_backend_pid()", {})
    return int(rows[0][0])


def terminate(storage: SqlStorage, pid: int) -> None:
    with storage.engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.commit()


def test_conninfo_keeps_every_part_of_the_url() -> None:
    url = (
        "postgresql+psycopg://u:p%40ss@127.0.0.1:5433/db"
        "?options=-csearch_path%3Dx%20-cstatement_timeout%3D5000&sslmode=disable"
    )
    assert conninfo_to_dict(conninfo(url)) == {
        "host": "127.0.0.1",
        "port": "5433",
        "user": "u",
        "password": "p@ss",
        "dbname": "db",
        "options": "-csearch_path=x -cstatement_timeout=5000",
        "sslmode": "disable",
    }


def test_options_with_spaces_reach_the_server(pg_schema_url: str) -> None:
    """Two ``-c`` options (a space between them) must both apply on the hot path's own
    connections: a ``+`` for the space once lost the search path (tables not found)."""
    storage = SqlStorage(pg_schema_url + "%20-cstatement_timeout%3D4321")
    try:
        storage.init()
        assert storage.create_run(new_run("direct-options"), []) is True
        rows = storage._fetch("SELECT current_setting('statement_timeout')", {})
        assert rows[0][0] == "4321ms"
        assert storage.load_run("direct-options") is not None
    finally:
        storage.delete_run("direct-options")
        storage.close()


def test_a_killed_connection_is_a_storage_error_then_heals(pg_storage: SqlStorage) -> None:
    assert pg_storage.create_run(new_run("direct-1"), []) is True
    terminate(pg_storage, backend_pid(pg_storage))
    with pytest.raises(StorageError) as caught:
        pg_storage.load_run("direct-1")
    assert "database error" in str(caught.value)
    assert "p@ss" not in str(caught.value)
    state = pg_storage.load_run("direct-1")  # a new connection
    assert state is not None and state.input == {"n": 1}


def test_each_thread_has_its_own_connection(pg_storage: SqlStorage) -> None:
    pids: list[int] = []
    threads = [threading.Thread(target=lambda: pids.append(backend_pid(pg_storage))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(pids)) == 2
    assert backend_pid(pg_storage) not in pids


def test_a_forked_child_opens_its_own_and_leaves_the_parents_alone(
    pg_storage: SqlStorage,
) -> None:
    """``os.fork`` as a prefork pool does (multiprocessing would also run other libraries'
    after-fork hooks, which is not what is tested here)."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork (prefork workers)")
    assert pg_storage.create_run(new_run("direct-fork"), []) is True
    parent = backend_pid(pg_storage)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_end)
            child = backend_pid(pg_storage)
            found = pg_storage.load_run("direct-fork") is not None
            os.write(write_end, f"{child} {found}".encode())
            pg_storage.close()
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    child, found = report.split()
    assert found == "True"
    assert int(child) != parent
    # The parent's session survived the child's close().
    assert backend_pid(pg_storage) == parent
    assert pg_storage.load_run("direct-fork") is not None


# -- the claim: load a run and start its step in one statement ---------------------------------
def claim_for(run: RunState, index: int, **changes: Any) -> StepClaim:
    values: dict[str, Any] = {
        "index": index,
        "workflow": run.workflow,
        "step": run.steps[index].name,
        "kind": run.steps[index].kind,
        "definition_hash": "hash-1",
        "max_attempts": 3,
        "task_id": f"task-{index}",
        "worker": "w1@host",
        "event_id": new_event_id(),
        "now": utcnow(),
        "start_event_id": new_event_id(),
    }
    values.update(changes)
    return StepClaim(**values)


def running_run(storage: SqlStorage, run_id: str) -> RunState:
    """A run in the state a Celery worker finds it in before step 1: step 0 done."""
    run = new_run(run_id)
    run.steps.append(StepState(name="b", index=1))
    run.definition_hash = "hash-1"
    assert storage.create_run(run, []) is True
    run.status = RunStatus.RUNNING
    run.steps[0].status = StepStatus.COMPLETED
    run.steps[0].attempts = 1
    run.current_step = 1
    assert storage.save_run(run, run.version, [0], []) is True
    return run


def test_a_claim_starts_the_step_and_stores_its_event(pg_storage: SqlStorage) -> None:
    run = running_run(pg_storage, "claim-1")
    claim = claim_for(run, 1)
    before, claimed = pg_storage.load_and_claim("claim-1", claim)
    assert claimed is True
    assert before is not None
    assert before.steps[1].status is StepStatus.PENDING  # as it was before the claim
    after = pg_storage.load_run("claim-1")
    assert after is not None
    assert after.version == before.version + 1
    step = after.steps[1]
    assert (step.status, step.attempts, step.task_id) == (StepStatus.RUNNING, 1, "task-1")
    assert step.started_at == claim.now and step.finished_at is None
    events = pg_storage.list_traces(run_id="claim-1")
    assert [(e.id, e.type, e.step, e.attempt, e.max_attempts, e.worker) for e in events] == [
        (claim.event_id, "step:start", "b", 1, 3, "w1@host")
    ]


@pytest.mark.parametrize(
    "why",
    ["other definition", "not the current step", "step not pending", "no attempts left", "done"],
)
def test_a_claim_outside_the_plain_case_changes_nothing(pg_storage: SqlStorage, why: str) -> None:
    run = running_run(pg_storage, f"claim-no-{why}")
    claim = claim_for(run, 1)
    if why == "other definition":
        claim = claim_for(run, 1, definition_hash="hash-2")
    elif why == "not the current step":
        claim = claim_for(run, 0)
    elif why == "step not pending":
        run.steps[1].status = StepStatus.RUNNING
        run.steps[1].attempts = 1
        assert pg_storage.save_run(run, run.version, [1], []) is True
    elif why == "no attempts left":
        run.steps[1].attempts = 3
        assert pg_storage.save_run(run, run.version, [1], []) is True
    else:
        run.status = RunStatus.CANCELLED
        assert pg_storage.save_run(run, run.version, [], []) is True
    stored = pg_storage.load_run(run.id)
    loaded, claimed = pg_storage.load_and_claim(run.id, claim)
    assert claimed is False
    assert loaded is not None and stored is not None
    assert loaded.to_dict() == stored.to_dict()
    again = pg_storage.load_run(run.id)
    assert again is not None and again.to_dict() == stored.to_dict()
    assert pg_storage.list_traces(run_id=run.id) == []


def test_a_claim_starts_a_pending_run_with_its_stored_start_meta(
    pg_storage: SqlStorage,
) -> None:
    run = new_run("claim-pending")
    run.definition_hash = "hash-1"
    run.start_meta = {"input": {"n": 1, "password": "***"}}
    assert pg_storage.create_run(run, []) is True
    claim = claim_for(run, 0)
    before, claimed = pg_storage.load_and_claim("claim-pending", claim)
    assert claimed is True
    assert before is not None and before.status is RunStatus.PENDING
    after = pg_storage.load_run("claim-pending")
    assert after is not None
    assert after.status is RunStatus.RUNNING
    assert (after.steps[0].status, after.steps[0].attempts) == (StepStatus.RUNNING, 1)
    events = pg_storage.list_traces(run_id="claim-pending")
    assert [(e.id, e.type, e.status, e.task_id, e.meta) for e in events] == [
        (claim.start_event_id, "workflow:start", "running", "task-0", run.start_meta),
        (claim.event_id, "step:start", "running", "task-0", None),
    ]


def test_a_pending_run_without_start_meta_is_not_claimed(pg_storage: SqlStorage) -> None:
    """Runs created before migration 0002 have no stored start meta: the worker's usual
    path starts them (and redacts their input itself)."""
    run = new_run("claim-pending-old")
    run.definition_hash = "hash-1"
    assert pg_storage.create_run(run, []) is True
    loaded, claimed = pg_storage.load_and_claim("claim-pending-old", claim_for(run, 0))
    assert claimed is False
    assert loaded is not None and loaded.status is RunStatus.PENDING
    assert pg_storage.list_traces(run_id="claim-pending-old") == []


def test_of_concurrent_claims_of_one_step_exactly_one_lands(pg_storage: SqlStorage) -> None:
    run = running_run(pg_storage, "claim-race")
    barrier = threading.Barrier(8)
    outcomes: list[bool] = []

    def claim(n: int) -> None:
        barrier.wait()
        _, claimed = pg_storage.load_and_claim(
            "claim-race", claim_for(run, 1, task_id=f"task-{n}", event_id=new_event_id())
        )
        outcomes.append(claimed)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False] * 7 + [True]
    final = pg_storage.load_run("claim-race")
    assert final is not None and final.steps[1].attempts == 1
    assert [e.type for e in pg_storage.list_traces(run_id="claim-race")] == ["step:start"]


def test_claimed_and_unclaimed_step_tasks_store_the_same_run(
    pg_storage: SqlStorage, make_engine: Any
) -> None:
    """A step task with the claim (``workflow=`` given) and without it must leave the same
    run and trace behind, through a retry, a ``when`` (never claimed) and a commit step."""
    flaky_calls: list[int] = []

    def flaky(ctx: Any) -> int:
        flaky_calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return ctx.attempt

    def write(ctx: Any) -> dict[str, Any]:
        return {"written": True}

    wf = (
        workflow("pg-claim-parity")
        .step("a", lambda ctx: 1)
        .step("b", flaky, retries=2)
        .step("c", lambda ctx: 3, when=lambda ctx: True)
        .commit("d", write)
    )
    engine = make_engine(storage=pg_storage)
    engine.register(wf)

    def drive(run_id: str, claim: bool) -> list[tuple[Any, ...]]:
        state = engine._new_run(wf, {"n": 1}, "celery", run_id)
        assert pg_storage.create_run(state, []) is True
        index, n = 0, 0
        while index < len(wf.steps):
            n += 1
            nxt = engine.runner.run_step(
                run_id,
                index,
                task_id=f"{run_id}-t{n}",
                worker="w@h",
                workflow=wf.name if claim else None,
            )
            if nxt.action is Action.DONE:
                break
            index = nxt.index if nxt.index is not None else index
        final = pg_storage.load_run(run_id)
        assert final is not None and final.status is RunStatus.COMPLETED
        steps = [(s.name, s.status.value, s.attempts, s.output, s.error) for s in final.steps]
        events = [  # what an attempt used (meta.cpu_ms, run_delay_ms) differs from run to run
            (e.type, e.step, e.status, e.attempt, e.max_attempts, e.worker, _untimed(e.meta))
            for e in pg_storage.list_traces(run_id=run_id)
        ]
        return [final.version, steps, events]

    landed: list[str] = []
    real_claim = pg_storage.load_and_claim

    def counting_claim(run_id: str, claim: StepClaim) -> Any:
        state, ok = real_claim(run_id, claim)
        if ok:
            landed.append(claim.step)
        return state, ok

    pg_storage.load_and_claim = counting_claim  # type: ignore[method-assign]
    claimed = drive("parity-claim", claim=True)
    plain = drive("parity-plain", claim=False)
    assert claimed == plain
    # c has a condition (never claimed); a starts the pending run, b is claimed twice.
    assert landed == ["a", "b", "b", "d"]
    assert flaky_calls == [1, 2, 1, 2]


def test_large_floats_stay_floats_in_jsonb(pg_storage: SqlStorage) -> None:
    """jsonb keeps numbers as numeric and prints 1e+16 back as 10000000000000000 (an int);
    the store spells such floats out with a decimal point. A string with "e+" in it takes
    the same slower encoding and comes back unchanged."""
    value = {"avogadro": 6.02214076e23, "max": 1.7976931348623157e308, "small": 1e-7, "n": 2**70}
    state = new_run("pg-floats")
    state.input = value
    state.steps[0].output = [value, "see e+ here", -1.5e16]
    event = TraceEvent.make("hook:error", "pg-floats", "pg-direct", meta={"v": value})
    assert pg_storage.create_run(state, [event]) is True
    loaded = pg_storage.load_run("pg-floats")
    assert loaded is not None
    assert loaded.input == value
    assert loaded.steps[0].output == [value, "see e+ here", -1.5e16]
    assert type(loaded.steps[0].output[2]) is float
    (stored,) = pg_storage.list_traces(run_id="pg-floats")
    assert stored.meta == {"v": value} and type(stored.meta["v"]["avogadro"]) is float
    assert dumps_for_jsonb({"x": 1.5}) == dumps({"x": 1.5})  # the common case: one encode


def test_a_load_sends_the_runs_json_once_not_once_per_step(pg_storage: SqlStorage) -> None:
    """psycopg parses every jsonb value it receives: with input and data on each step's row,
    a 20-step run with a 48 KB input cost 7 ms of client CPU per load (every step task)."""
    from fluxcelery.storage import postgres
    from fluxcelery.storage.core_rows import STEP_AT

    run = new_run("load-once")
    run.input = {"items": [{"sku": f"A{i}", "note": "x" * 40} for i in range(50)]}
    run.data = {"seen": [1, 2, 3]}
    run.steps = [StepState(name=f"s{i}", index=i) for i in range(5)]
    assert pg_storage.create_run(run, [])
    rows = pg_storage._fetch(postgres.LOAD_SQL, {"id": "load-once"})
    assert [row[STEP_AT] for row in rows] == [0, 1, 2, 3, 4]
    assert rows[0][5] == run.input and rows[0][6] == run.data
    assert all(row[5] is None and row[6] is None for row in rows[1:])
    loaded = pg_storage.load_run("load-once")
    assert loaded is not None
    assert (loaded.input, loaded.data, len(loaded.steps)) == (run.input, run.data, 5)
    claim = StepClaim(
        index=0,
        workflow="pg-direct",
        step="s0",
        kind="step",
        definition_hash="",
        max_attempts=3,
        task_id="t-1",
        worker="w",
        event_id=new_event_id(),
        now=utcnow(),
        start_event_id=new_event_id(),
    )
    # The claim statement ends with the same load (this claim does not land: other hash).
    state, landed = pg_storage.load_and_claim("load-once", claim)
    assert state is not None and not landed
    assert (state.input, state.data, len(state.steps)) == (run.input, run.data, 5)


def _untimed(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """``meta`` without ``cpu_ms`` and ``run_delay_ms`` (None when nothing else is left)."""
    return {k: v for k, v in (meta or {}).items() if k not in ("cpu_ms", "run_delay_ms")} or None
