"""The enterprise example without Docker: RabbitMQ → the AMQP consumer → real `celery worker`
processes → PostgreSQL, with workflows/order.py (its ``notify`` a for_each over 3 recipients).

100 orders (10 forced to fail at charge-payment) plus duplicates and malformed messages:
every order becomes exactly one run keyed by its message id; forced failures show their
retries and the stock compensation in ``flux_traces`` and end ``rolled_back``; ``retry`` then
completes one; the malformed messages wait in the DLQ with their reason; nothing is lost."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import AMQP_URL, require_service

from fluxcelery import RunStatus
from fluxcelery.ingress import Topology, consume

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
for path in (str(ROOT), str(ROOT / "scripts")):
    if path not in sys.path:
        sys.path.insert(0, path)

import publish_order as po  # noqa: E402  (scripts/)

ORDERS = 100
FAIL_RATIO = 0.1
CHARGE_RETRIES = 2  # the workers' ORDERS_CHARGE_RETRIES: 3 attempts, 2 step:retry events
MALFORMED = 5  # bad JSON, pickle, missing field, wrong type, oversize
RECIPIENTS = ("customer", "warehouse", "accounting")  # workflows.order.recipients: notify's items


@pytest.fixture(scope="module")
def enterprise(rabbit_cluster: Any) -> Iterator[SimpleNamespace]:
    """Workers running workflows.order (short backoffs) and the consumer in a thread."""
    require_service("rabbitmq")
    from workflows.order import order

    c = rabbit_cluster
    c.env.update(
        FLUX_WORKFLOWS="workflows.order",
        ORDERS_BACKOFF_BASE="0.05",
        ORDERS_BACKOFF_MAX="0.1",
        ORDERS_CHARGE_RETRIES=str(CHARGE_RETRIES),
        ORDERS_CHARGE_FAILURE_RATE="0",
    )
    c.engine.register(order)
    c.worker("orders", concurrency=4)
    queue = f"orders.workflow.it-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    events: list[dict[str, Any]] = []
    result: dict[str, Any] = {}

    def run() -> None:
        result["stats"] = consume(
            queue,
            "order-fulfillment",
            broker_url=AMQP_URL,
            engine=c.engine,
            stop=stop,
            on_event=events.append,
            progress_interval=5,
        )

    thread = threading.Thread(target=run, name="ingress", daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(cluster=c, engine=c.engine, queue=queue, events=events)
    finally:
        stop.set()
        thread.join(timeout=30)
        from kombu import Connection

        with Connection(AMQP_URL) as conn:
            Topology(queue).delete(conn.default_channel)


def wait_terminal(engine: Any, run_ids: list[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    final = {RunStatus.COMPLETED, RunStatus.ROLLED_BACK, RunStatus.FAILED, RunStatus.CANCELLED}
    states: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for rid in run_ids:
            if rid not in states or states[rid].status not in final:
                state = engine.get(rid)
                if state is not None:
                    states[rid] = state
        if len(states) == len(run_ids) and all(s.status in final for s in states.values()):
            return states
        time.sleep(0.25)
    unfinished = {r: s.status.value for r, s in states.items() if s.status not in final}
    missing = [r for r in run_ids if r not in states]
    raise AssertionError(f"no run for {missing[:5]}; unfinished {list(unfinished.items())[:5]}")


def dead_letters(queue: str) -> list[Any]:
    from kombu import Connection

    out = []
    with Connection(AMQP_URL) as conn:
        channel = conn.default_channel
        while (msg := channel.basic_get(f"{queue}.dlq", no_ack=True)) is not None:
            out.append(msg)
    return out


def rows(engine: Any, sql: str, **params: Any) -> list[Any]:
    with engine.storage.engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def test_hundred_orders_become_exactly_one_run_each(enterprise: SimpleNamespace) -> None:
    started = time.monotonic()
    engine, queue = enterprise.engine, enterprise.queue
    prefix = f"it{uuid.uuid4().hex[:6]}"
    orders = po.build_orders(ORDERS, prefix=prefix, fail_ratio=FAIL_RATIO)
    bad = po.malformed_messages(MALFORMED, prefix=prefix)
    duplicates = orders[:3] + orders[-2:]  # a producer that retried: same message ids
    po.publish_amqp(orders + bad + duplicates, AMQP_URL, queue, rate=0)
    ids = [m.message_id for m in orders]
    forced = {m.message_id for m in orders if m.kind == "forced"}
    assert len(forced) == round(ORDERS * FAIL_RATIO)

    states = wait_terminal(engine, ids, timeout=90)

    # Every message became exactly one run, whose id is the message id.
    runs = [
        r
        for r in engine.list(workflow="order-fulfillment", limit=None)
        if str(r.input.get("order_id", "")).startswith(prefix + "-")
    ]
    assert sorted(r.id for r in runs) == sorted(ids)
    statuses = Counter(s.status for s in states.values())
    assert statuses == {
        RunStatus.COMPLETED: ORDERS - len(forced),
        RunStatus.ROLLED_BACK: len(forced),
    }
    assert {r for r, s in states.items() if s.status == RunStatus.ROLLED_BACK} == forced

    # Forced failures: retries of charge-payment, then the reservation released.
    for rid in forced:
        events = engine.traces(run_id=rid)
        charge = [(e.type, e.attempt) for e in events if e.step == "charge-payment"]
        assert charge == [
            ("step:start", 1),
            ("step:retry", 1),
            ("step:start", 2),
            ("step:retry", 2),
            ("step:start", 3),
            ("step:error", 3),
        ]
        tail = [(e.type, e.step) for e in events][-5:]
        assert tail == [
            ("step:error", "charge-payment"),
            ("workflow:rollback_start", None),
            ("step:compensate", "reserve-stock"),
            ("workflow:rollback_complete", None),
            ("workflow:error", None),
        ]
        assert events[-1].status == "rolled_back"
        assert "PaymentGatewayError" in (events[-1].error or "")
    one_ok = next(r for r in ids if r not in forced)
    events = engine.traces(run_id=one_ok)
    # notify is a for_each over 3 recipients: its items run concurrently on the workers, so
    # their events interleave; the events around them come in order.
    items = [(e.type, (e.meta or {}).get("item")) for e in events if "item" in (e.meta or {})]
    assert sorted(items) == sorted(
        (t, i) for i in range(len(RECIPIENTS)) for t in ("step:start", "step:complete")
    )
    assert [e.type for e in events if "item" not in (e.meta or {})] == ["workflow:start"] + [
        "step:start",
        "step:complete",
    ] * 3 + ["parallel:start", "parallel:join", "step:complete", "workflow:complete"]

    # Side effects landed once: reservations kept for completed runs, released for the rest.
    reserved = rows(
        engine,
        "SELECT status, count(DISTINCT run_id) FROM orders_stock_reservations "
        "WHERE order_id LIKE :p GROUP BY status",
        p=prefix + "-%",
    )
    assert dict(reserved) == {"reserved": ORDERS - len(forced), "released": len(forced)}
    notified = rows(
        engine,
        "SELECT channel, count(DISTINCT run_id) FROM orders_outbox WHERE order_id LIKE :p "
        "GROUP BY channel",
        p=prefix + "-%",
    )
    assert dict(notified) == {channel: ORDERS - len(forced) for channel in RECIPIENTS}
    outbox = rows(
        engine, "SELECT count(*) FROM orders_outbox WHERE order_id LIKE :p", p=prefix + "-%"
    )
    assert outbox[0][0] == (ORDERS - len(forced)) * len(RECIPIENTS)  # one row per recipient

    # The malformed messages are in the DLQ with their reason; nothing else is.
    dead = dead_letters(queue)
    assert Counter(m.headers["x-flux-error-code"] for m in dead) == Counter(
        po.EXPECTED_CODES[m.kind] for m in bad
    )
    for m in dead:
        assert m.headers["x-flux-error"]
        assert m.headers["x-flux-original-message-id"] == m.properties["message_id"]
        assert m.headers["x-flux-original-routing-key"] == queue

    # The consumer's own account: nothing lost, duplicates started nothing.
    mine = [e for e in enterprise.events if str(e.get("message_id", "")).find(prefix) >= 0]
    outcomes = Counter(e["outcome"] for e in mine)
    assert outcomes == {
        "started": ORDERS,
        "duplicate": len(duplicates),
        "dead_lettered": MALFORMED,
    }
    from kombu import Connection

    with Connection(AMQP_URL) as conn:
        assert conn.default_channel.queue_declare(queue, passive=True).message_count == 0
    print(
        f"\n{ORDERS} orders: {statuses[RunStatus.COMPLETED]} completed, "
        f"{statuses[RunStatus.ROLLED_BACK]} rolled back, "
        f"{len(forced) * CHARGE_RETRIES} charge retries, {len(dead)} dead-lettered, "
        f"{len(duplicates)} duplicates ignored, {time.monotonic() - started:.1f}s"
    )
    enterprise.forced = sorted(forced)


def test_retry_completes_a_rolled_back_order(enterprise: SimpleNamespace) -> None:
    engine = enterprise.engine
    forced = getattr(enterprise, "forced", None)
    if not forced:
        pytest.skip("needs the rolled-back runs of the previous test")
    rid = forced[0]
    # The operator's way: `fluxcelery retry RUN_ID --wait`, a separate process on the same
    # database and broker; the run continues on the workers.
    import json
    import subprocess
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).with_name("fluxcelery"))
    out = subprocess.run(
        [cli, "--json", "retry", rid, "--wait", "--timeout", "60"],
        env=enterprise.cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "completed"
    # The Python API (engine.retry) is the same operation; check what was stored.
    stored = engine.get(rid)
    assert stored is not None
    from fluxcelery import FluxResult

    result = FluxResult.from_state(stored)
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.data["pass"] == 2  # the forced failure applied to the first pass only
    events = engine.traces(run_id=rid)
    restart = next(e for e in events if e.type == "workflow:start" and (e.meta or {}).get("retry"))
    assert restart.meta["from_step"] == "reserve-stock"  # the compensated commit is redone
    assert events[-1].type == "workflow:complete"
    lines = rows(
        engine,
        "SELECT pass_no, status FROM orders_stock_reservations WHERE run_id = :r "
        "GROUP BY pass_no, status ORDER BY pass_no",
        r=rid,
    )
    assert [tuple(x) for x in lines] == [(1, "released"), (2, "reserved")]
    notified = rows(engine, "SELECT channel FROM orders_outbox WHERE run_id = :r", r=rid)
    assert sorted(r[0] for r in notified) == sorted(RECIPIENTS)  # once per recipient


def test_http_producer_feeds_the_same_queue(enterprise: SimpleNamespace) -> None:
    """POST /orders → the queue → one run, with the run id the HTTP answer promised."""
    import asyncio
    import json

    from fluxcelery.contrib.http_producer import ProducerApp

    app = ProducerApp(broker_url=AMQP_URL, queue=enterprise.queue, workflow="order-fulfillment")
    order = po.make_order(f"http{uuid.uuid4().hex[:6]}", 3)
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "http.request", "body": json.dumps(order).encode()}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/orders",
        "headers": [(b"content-type", b"application/json")],
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 202
    run_id = json.loads(sent[1]["body"])["run_id"]
    state = wait_terminal(enterprise.engine, [run_id], timeout=60)[run_id]
    assert state.status == RunStatus.COMPLETED
    assert state.input["order_id"] == order["order_id"]
    app.publisher().close()
