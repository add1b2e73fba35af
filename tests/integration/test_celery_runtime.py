"""Workflows on real `celery -A fluxcelery worker -P prefork` processes, on RabbitMQ and on
Redis, with PostgreSQL state. The same core cases run on both brokers."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from fluxcelery import RunStatus, StepStatus
from fluxcelery.storage import schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def starts(engine, run_id: str, step: str) -> list:
    return [e for e in engine.traces(run_id=run_id, type="step:start") if e.step == step]


def test_four_step_workflow_via_delay(cluster) -> None:
    import it_workflows as w

    handle = cluster.engine.start(w.four, {"add": 2})
    result = handle.get(timeout=30)
    assert result.status == RunStatus.COMPLETED
    assert result.data == {"n": 4}
    assert result.results["d"] == {"total": 4}
    assert [s.status for s in result.steps] == [StepStatus.COMPLETED] * 4
    assert cluster.effects(result.id, "b") == 1
    types = [e.type for e in cluster.engine.traces(run_id=result.id)]
    assert types == ["workflow:start"] + ["step:start", "step:complete"] * 4 + ["workflow:complete"]
    # Each step ran as its own Celery task, named flux.<workflow>.<step>, id stored.
    task_ids = [s.task_id for s in result.steps]
    assert all(task_ids) and len(set(task_ids)) == 4
    for event in cluster.engine.traces(run_id=result.id, type="step:complete"):
        assert event.task_id == result.step(event.step).task_id
        assert event.worker and event.worker.startswith("main-")


def test_retries_use_celery_countdown(cluster) -> None:
    import it_workflows as w

    result = cluster.engine.start(w.retrying, {}).get(timeout=30)
    assert result.status == RunStatus.COMPLETED
    flaky = result.step("flaky")
    assert flaky.attempts == 3
    retries = cluster.engine.traces(run_id=result.id, type="step:retry")
    assert [e.attempt for e in retries] == [1, 2]
    assert all(e.meta and e.meta["delay_s"] == 0.2 for e in retries)
    # A Celery retry re-sends the same task id with a countdown: no sleeping in the worker.
    attempts = starts(cluster.engine, result.id, "flaky")
    assert [e.attempt for e in attempts] == [1, 2, 3]
    assert len({e.task_id for e in attempts}) == 1
    gaps = [(b.ts - a.ts).total_seconds() for a, b in itertools.pairwise(attempts)]
    assert all(g >= 0.15 for g in gaps), gaps


def test_suspend_signal_completes(cluster) -> None:
    import it_workflows as w

    handle = cluster.engine.start(w.approval, {})
    suspended = handle.get(timeout=30)
    assert suspended.status == RunStatus.SUSPENDED
    assert suspended.step("approve").waiting_for == "approval"
    result = cluster.engine.signal(handle.id, "approval", {"by": "ann"}).get(timeout=30)
    assert result.status == RunStatus.COMPLETED
    assert result.results["finish"] == {"approved_by": "ann"}
    finish = starts(cluster.engine, handle.id, "finish")
    assert len(finish) == 1 and finish[0].task_id  # continued on a worker


def test_retry_failed_run_from_failed_step(cluster, tmp_path: Path) -> None:
    import it_workflows as w

    flag = tmp_path / "flag"
    handle = cluster.engine.start(w.fix_then_retry, {"flag": str(flag)})
    failed = handle.get(timeout=30)
    assert failed.status == RunStatus.FAILED
    assert failed.step("check").status == StepStatus.FAILED
    assert "flag file" in (failed.error or "")
    flag.write_text("ok")
    result = cluster.engine.retry(handle.id).get(timeout=30)
    assert result.status == RunStatus.COMPLETED
    # Earlier steps were not re-run; the commit landed once.
    assert len(starts(cluster.engine, handle.id, "first")) == 1
    assert len(starts(cluster.engine, handle.id, "charge")) == 1
    assert len(starts(cluster.engine, handle.id, "check")) == 2
    assert cluster.effects(handle.id, "charge") == 1


def test_saga_compensation_runs_as_tasks_in_reverse(cluster) -> None:
    import it_workflows as w

    result = cluster.engine.start(w.saga, {}).get(timeout=30)
    assert result.status == RunStatus.ROLLED_BACK
    assert [s.status for s in result.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
    ]
    comps = cluster.engine.traces(run_id=result.id, type="step:compensate")
    assert [e.step for e in comps] == ["hold", "reserve"]
    assert all(e.task_id for e in comps)
    types = [e.type for e in cluster.engine.traces(run_id=result.id)]
    assert types[-5:] == [
        "workflow:rollback_start",
        "step:compensate",
        "step:compensate",
        "workflow:rollback_complete",
        "workflow:error",
    ]


def test_soft_time_limit_times_out_and_retries(cluster) -> None:
    import it_workflows as w

    result = cluster.engine.start(w.timeouts, {}).get(timeout=60)
    assert result.status == RunStatus.FAILED
    assert result.step("hang").attempts == 2
    assert (result.error or "").startswith("StepTimeout:")
    assert len(cluster.engine.traces(run_id=result.id, type="step:retry")) == 1


def test_many_concurrent_runs_complete(cluster) -> None:
    import it_workflows as w

    n = 200
    started = time.monotonic()
    handles = [cluster.engine.start(w.four, {"add": 1}) for _ in range(n)]
    results = [h.get(timeout=120) for h in handles]
    elapsed = time.monotonic() - started
    assert [r.status for r in results] == [RunStatus.COMPLETED] * n
    assert all(r.data == {"n": 2} for r in results)
    print(f"\n{n} runs of 4 steps on {cluster.broker}: {elapsed:.1f}s ({n / elapsed:.0f} runs/s)")


def test_task_events_carry_run_id_for_flower(cluster) -> None:
    """Flower builds its task list from worker events; each step task's kwargs carry the run
    id, so Flower's search `kwargs:run_id=<id>` finds every task of a run."""
    import ast
    import threading

    import it_workflows as w

    seen: dict[str, str] = {}
    ready = threading.Event()
    done = threading.Event()

    def on_received(event: dict) -> None:
        seen[event["uuid"]] = event["name"] + " " + event.get("kwargs", "")

    def capture() -> None:
        with cluster.app.connection() as conn:
            recv = cluster.app.events.Receiver(conn, handlers={"task-received": on_received})
            ready.set()
            for _ in recv.itercapture(limit=None, timeout=1.0, wakeup=False):
                if done.is_set():
                    break

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.5)  # let the event queue bind before the run starts
    result = cluster.engine.start(w.four, {"add": 1}).get(timeout=30)
    deadline = time.monotonic() + 10
    ids = {s.task_id for s in result.steps}
    while time.monotonic() < deadline and not ids <= set(seen):
        time.sleep(0.1)
    done.set()
    assert ids <= set(seen), (ids, seen)
    for step in result.steps:
        name, _, kwargs = seen[step.task_id].partition(" ")
        assert name == f"flux.it-four.{step.name}"
        assert ast.literal_eval(kwargs) == {"run_id": result.id}


def test_recover_redispatches_a_run_whose_message_was_lost(cluster) -> None:
    """A run stuck `running` (its task message lost) is continued by `recover`."""
    import it_workflows as w

    result = cluster.engine.start(w.four, {"add": 1}).get(timeout=30)
    # Rewind the run as if the worker had died before sending step c, and the message
    # were gone: step c pending, cursor at c, last update long ago.
    old = "2000-01-01 00:00:00+00"
    with cluster.storage.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE flux_runs SET status='running', current_step=2, finished_at=NULL, "
                "updated_at=:old, version=version+1 WHERE id=:id"
            ),
            {"old": old, "id": result.id},
        )
        conn.execute(
            schema.steps.update()
            .where(schema.steps.c.run_id == result.id, schema.steps.c.idx >= 2)
            .values(status="pending", attempts=0, output=None)
        )
    acted = cluster.engine.recover(older_than=60)
    assert result.id in acted
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = cluster.engine.get(result.id)
        if state and state.status == RunStatus.COMPLETED:
            break
        time.sleep(0.1)
    assert state is not None and state.status == RunStatus.COMPLETED
    assert cluster.effects(result.id, "b") == 1  # the commit step was not re-run


def test_start_with_the_broker_down_leaves_nothing(it_schema: str) -> None:
    """A start that cannot reach the broker raises DispatchError and stores nothing, so the
    same run id can be started again once the broker is back."""
    import it_workflows as w

    from fluxcelery import DispatchError, FluxEngine, SqlStorage
    from fluxcelery.celery.app import build_app
    from fluxcelery.settings import Settings

    settings = Settings(
        broker_url="amqp://guest:guest@127.0.0.1:1//",
        database_url=it_schema,
        celery={
            "broker_connection_timeout": 1,
            "broker_connection_max_retries": 0,
            "broker_transport_options": {"max_retries": 0},
        },
    )
    engine = FluxEngine(storage=SqlStorage(it_schema), app=build_app(settings))
    try:
        with pytest.raises(DispatchError, match="nothing was stored"):
            engine.start(w.four, {"add": 1}, run_id="broker-down-1")
        assert engine.get("broker-down-1") is None
    finally:
        engine.close()
