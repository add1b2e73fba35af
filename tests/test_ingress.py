"""The AMQP ingress: pure message decisions (table-driven), the consumer against a real
RabbitMQ with a recording engine (acks, duplicates, dead letters, outages, reconnection), and
the HTTP producer as a plain ASGI app."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import pickle
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import AMQP_URL, require_service
from pydantic import BaseModel, ConfigDict, Field

from fluxcelery import InvalidInput, RunState, RunStatus, StepState, StorageError, workflow
from fluxcelery.cli.consume import main
from fluxcelery.contrib.http_producer import ProducerApp
from fluxcelery.core.errors import DispatchError, WorkflowNotFound
from fluxcelery.ingress import (
    Accepted,
    ConsumeStats,
    IngressConfigError,
    IngressConsumer,
    Publisher,
    Rejected,
    Topology,
    check_message,
    consume,
    dead_letter_headers,
    derive_run_id,
    is_transient,
)

ROOT = Path(__file__).resolve().parent.parent


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1)
    qty: int = Field(gt=0)


class TinyOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: str = Field(min_length=1)
    customer: str = Field(min_length=1)
    items: list[Line] = Field(min_length=1)
    amount: float = Field(gt=0)


WF = workflow("ingress-test-order").input(TinyOrder).step("noop", lambda ctx: None)
OTHER = workflow("ingress-test-other").step("noop", lambda ctx: None)
WORKFLOWS = {WF.name: WF, OTHER.name: OTHER}
GOOD = {"order_id": "o-1", "customer": "ann", "items": [{"sku": "A", "qty": 1}], "amount": 3.5}
JSON = "application/json"


def load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    return module


def decide(body: bytes, content_type: str | None = JSON, **kw: Any) -> Accepted | Rejected:
    kw.setdefault("message_id", "m-1")
    kw.setdefault("headers", {})
    return check_message(body, content_type, workflow=WF.name, workflows=WORKFLOWS, **kw)


# -- pure decisions ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (json.dumps(GOOD).encode(), JSON, None),
        (json.dumps(GOOD).encode(), "application/json; charset=utf-8", None),
        (json.dumps(GOOD).encode(), "application/vnd.orders+json", None),
        (json.dumps(GOOD).encode(), "text/plain", "unsupported_content_type"),
        (json.dumps(GOOD).encode(), None, "unsupported_content_type"),
        (pickle.dumps(GOOD), "application/x-python-serialize", "unsupported_content_type"),
        (b'{"order_id": ', JSON, "invalid_json"),
        (b"\xff\xfe\x00garbage", JSON, "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, JSON, "invalid_json"),
        (b"[1, 2]", JSON, "not_an_object"),
        (b'"an order"', JSON, "not_an_object"),
        (b"null", JSON, "not_an_object"),
        (json.dumps({**GOOD, "amount": "lots"}).encode(), JSON, "invalid_input"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "items"}).encode(),
            JSON,
            "invalid_input",
        ),
        (json.dumps({**GOOD, "extra": 1}).encode(), JSON, "invalid_input"),
        (json.dumps({**GOOD, "note": "x" * 2_000_000}).encode(), JSON, "payload_too_large"),
    ],
)
def test_check_message(body: bytes, content_type: str | None, code: str | None) -> None:
    decision = decide(body, content_type)
    if code is None:
        assert decision == Accepted("m-1", WF.name, GOOD)
    else:
        assert isinstance(decision, Rejected), decision
        assert decision.code == code
        assert decision.reason


def test_check_message_names_the_field_and_the_limit() -> None:
    bad = decide(json.dumps({**GOOD, "items": [{"sku": "A", "qty": 0}]}).encode())
    assert isinstance(bad, Rejected) and "items.0.qty" in bad.reason
    big = decide(b"{}" + b" " * 100, max_bytes=50)
    assert isinstance(big, Rejected) and big.code == "payload_too_large" and "50" in big.reason


def test_a_header_may_route_to_another_registered_workflow() -> None:
    other = decide(b"{}", headers={"x-flux-workflow": OTHER.name})
    assert other == Accepted("m-1", OTHER.name, {})
    unknown = decide(b"{}", headers={"x-flux-workflow": "nope"})
    assert isinstance(unknown, Rejected) and unknown.code == "unknown_workflow"
    # The reason travels with the dead letter: the count of workflows, not their names.
    assert "nope" in unknown.reason and "registered)" in unknown.reason
    assert WF.name not in unknown.reason and OTHER.name not in unknown.reason


@pytest.mark.parametrize(
    ("message_id", "expected"),
    [
        ("order-o-1", "order-o-1"),
        ("a" * 64, "a" * 64),
        ("a" * 65, None),
        ("has space", None),
        ("-leading-dash", None),
        ("ünïcode", None),
    ],
)
def test_derive_run_id_from_message_id(message_id: str, expected: str | None) -> None:
    run_id = derive_run_id(message_id, GOOD)
    if expected is not None:
        assert run_id == expected
    else:
        assert run_id.startswith("msg-") and len(run_id) <= 64
        assert run_id == derive_run_id(message_id, {"other": "body"})  # the id decides


def test_derive_run_id_without_message_id_hashes_the_canonical_body() -> None:
    a = derive_run_id(None, {"b": 1, "a": [1, 2]})
    assert a.startswith("body-") and len(a) <= 64
    assert a == derive_run_id("", {"a": [1, 2], "b": 1})  # key order does not matter
    assert a != derive_run_id(None, {"a": [2, 1], "b": 1})


def test_dead_letter_headers_keep_the_original_and_say_why() -> None:
    headers = dead_letter_headers(
        {"x-trace": "t1", "x-flux-error": "old reason"},
        Rejected("invalid_input", "field 'amount': required", "order-fulfillment"),
        queue="orders.workflow",
        exchange="orders.workflow",
        routing_key="orders.workflow",
        message_id="order-o-9",
    )
    assert headers["x-trace"] == "t1"
    assert headers["x-flux-error"] == "field 'amount': required"
    assert headers["x-flux-error-code"] == "invalid_input"
    assert headers["x-flux-original-routing-key"] == "orders.workflow"
    assert headers["x-flux-original-exchange"] == "orders.workflow"
    assert headers["x-flux-original-message-id"] == "order-o-9"
    assert headers["x-flux-error-workflow"] == "order-fulfillment"
    assert headers["x-flux-queue"] == "orders.workflow"
    assert headers["x-flux-dead-lettered-at"].endswith("+00:00")


def test_topology_names() -> None:
    t = Topology("orders.workflow")
    assert (t.exchange, t.routing_key) == ("orders.workflow", "orders.workflow")
    assert (t.dead_letter_exchange, t.dead_letter_queue) == (
        "orders.workflow.dlx",
        "orders.workflow.dlq",
    )
    args = t.work_queue().queue_arguments
    assert args == {
        "x-dead-letter-exchange": "orders.workflow.dlx",
        "x-dead-letter-routing-key": "orders.workflow.dlq",
    }
    assert t.work_queue().durable and t.dlq().durable


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (StorageError("db down"), True),
        (DispatchError("could not send run r to the broker"), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (__import__("kombu").exceptions.OperationalError("broker down"), True),
        (__import__("sqlalchemy").exc.OperationalError("SELECT", {}, Exception("gone")), True),
        (TypeError("bug"), False),
        (ValueError("bad"), False),
        (KeyError("x"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_publish_script_malformed_messages_get_their_documented_codes() -> None:
    po = load_script("publish_order")
    bad = po.malformed_messages(len(po.MALFORMED_KINDS), prefix="t")
    assert [m.kind for m in bad] == list(po.MALFORMED_KINDS)
    order_wf = _order_workflow()
    for m in bad:
        decision = check_message(
            m.body,
            m.content_type,
            message_id=m.message_id,
            headers={},
            workflow=order_wf.name,
            workflows={order_wf.name: order_wf},
        )
        assert isinstance(decision, Rejected), m.kind
        assert decision.code == po.EXPECTED_CODES[m.kind], (m.kind, decision)
    for m in po.build_orders(30, prefix="t", fail_ratio=0.1):
        decision = check_message(
            m.body,
            m.content_type,
            message_id=m.message_id,
            headers={},
            workflow=order_wf.name,
            workflows={order_wf.name: order_wf},
        )
        assert decision == Accepted(m.message_id, order_wf.name, m.order)


@pytest.mark.parametrize(("count", "ratio", "forced"), [(100, 0.1, 10), (20, 0.1, 2), (7, 0, 0)])
def test_forced_share_is_exact(count: int, ratio: float, forced: int) -> None:
    po = load_script("publish_order")
    assert len(po.forced_indexes(count, ratio)) == forced
    orders = po.build_orders(count, prefix="t", fail_ratio=ratio)
    assert sum(1 for m in orders if m.order.get("force_fail") == "charge") == forced


def _order_workflow() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from workflows.order import order

    return order


# -- the consumer on RabbitMQ, with a recording engine ----------------------------------------
class RecordingEngine:
    """What the consumer needs of ``FluxEngine``: ``workflows``, ``workflow``, ``get``,
    ``start`` and ``resume``, recording calls and failing on request."""

    max_payload_bytes = 1024 * 1024

    def __init__(self) -> None:
        self.runs: dict[str, Any] = {}
        self.starts: list[str] = []
        self.resumed: list[str] = []
        self.fail_next: list[BaseException] = []
        self.store_then_fail = False
        self.lock = threading.Lock()

    @property
    def workflows(self) -> dict[str, Any]:
        return dict(WORKFLOWS)

    def workflow(self, name: str) -> Any:
        if name not in WORKFLOWS:
            raise WorkflowNotFound(name, list(WORKFLOWS))
        return WORKFLOWS[name]

    def get(self, run_id: str) -> Any:
        return self.runs.get(run_id)

    def start(self, wf: Any, body: Any, *, run_id: str) -> Any:
        wf.validate_input(body)
        with self.lock:
            if self.store_then_fail:
                self.store_then_fail = False
                self._store(wf, body, run_id)
                raise ConnectionResetError("broker went away while enqueueing")
            if self.fail_next:
                raise self.fail_next.pop(0)
            self.starts.append(run_id)
            if run_id not in self.runs:
                self._store(wf, body, run_id)
        return SimpleNamespace(id=run_id)

    def _store(self, wf: Any, body: Any, run_id: str) -> None:
        self.runs[run_id] = RunState(
            id=run_id,
            workflow=wf.name,
            status=RunStatus.PENDING,
            input=wf.prepare_input(body),
            data={},
            steps=[StepState(name="noop", index=0)],
        )

    def resume(self, run_id: str) -> Any:
        self.resumed.append(run_id)
        return SimpleNamespace(id=run_id)


@pytest.fixture
def rabbit_queue() -> Iterator[str]:
    require_service("rabbitmq")
    queue = f"flux.test.ingress.{uuid.uuid4().hex[:8]}"
    yield queue
    from kombu import Connection

    with Connection(AMQP_URL) as conn:
        Topology(queue).delete(conn.default_channel)


def publish(queue: str, *messages: tuple[bytes, str, str | None]) -> None:
    with Publisher(AMQP_URL, queue) as p:
        for body, content_type, message_id in messages:
            p.publish_raw(body, content_type=content_type, message_id=message_id)


def good(order_id: str) -> tuple[bytes, str, str]:
    return json.dumps({**GOOD, "order_id": order_id}).encode(), JSON, f"order-{order_id}"


def dead_letters(queue: str) -> list[Any]:
    from kombu import Connection

    out = []
    with Connection(AMQP_URL) as conn:
        channel = conn.default_channel
        while (msg := channel.basic_get(f"{queue}.dlq", no_ack=True)) is not None:
            out.append(msg)
    return out


def queue_depth(queue: str) -> int:
    from kombu import Connection

    with Connection(AMQP_URL) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


def run_consume(queue: str, engine: RecordingEngine, **kw: Any) -> ConsumeStats:
    kw.setdefault("idle_timeout", 1.0)
    return consume(queue, WF.name, broker_url=AMQP_URL, engine=engine, **kw)  # type: ignore[arg-type]


def test_messages_start_runs_once_and_bad_ones_are_dead_lettered(rabbit_queue: str) -> None:
    publish(
        rabbit_queue,
        good("a"),
        good("b"),
        good("a"),  # a duplicate: same message id
        (b"not json", JSON, "bad-1"),
        (pickle.dumps(GOOD), "application/x-python-serialize", "bad-2"),
        (json.dumps({"order_id": "c"}).encode(), JSON, "bad-3"),
    )
    engine = RecordingEngine()
    events: list[dict[str, Any]] = []
    stats = run_consume(rabbit_queue, engine, on_event=events.append)
    assert (stats.received, stats.started, stats.duplicates, stats.dead_lettered) == (6, 2, 1, 3)
    assert stats.by_code == {"invalid_json": 1, "unsupported_content_type": 1, "invalid_input": 1}
    assert engine.starts == ["order-a", "order-b"]
    assert [e["outcome"] for e in events] == ["started"] * 2 + ["duplicate"] + ["dead_lettered"] * 3
    dead = dead_letters(rabbit_queue)
    by_id = {m.properties["message_id"]: m for m in dead}
    assert set(by_id) == {"bad-1", "bad-2", "bad-3"}
    pickled = by_id["bad-2"]
    assert pickled.properties["content_type"] == "application/x-python-serialize"
    assert pickled.body == pickle.dumps(GOOD)  # the original bytes, never unpickled
    for m in dead:
        assert m.headers["x-flux-error"] and m.headers["x-flux-error-code"]
        assert m.headers["x-flux-original-routing-key"] == rabbit_queue
        assert m.headers["x-flux-original-message-id"] == m.properties["message_id"]
    assert queue_depth(rabbit_queue) == 0  # everything was acked


def test_hostile_messages_are_handled_and_the_consumer_goes_on(rabbit_queue: str) -> None:
    """A message id with a lone surrogate or a byte that is not UTF-8, a body with a lone
    surrogate and no id: each ends started or dead-lettered, everything is acked, and the
    consumer goes on to the good message after them. Before, the 0xff id stopped the
    consumer while py-amqp read the frame (redelivered after every restart), and a lone
    surrogate broke ``derive_run_id``."""
    import amqp
    from kombu import Connection

    body = json.dumps({**GOOD, "order_id": "s"}).encode()
    publish(
        rabbit_queue,
        (body, JSON, "order-\ud800"),
        (json.dumps({**GOOD, "order_id": "\ud800"}).encode(), JSON, None),
    )
    with Connection(AMQP_URL) as conn:
        raw = amqp.Message(body, content_type=JSON, message_id=b"order-\xff")
        conn.default_channel.basic_publish(raw, exchange=rabbit_queue, routing_key=rabbit_queue)
    publish(rabbit_queue, good("after"))
    engine = RecordingEngine()
    stats = run_consume(rabbit_queue, engine)
    assert stats.received == 4
    assert stats.started + stats.duplicates + stats.dead_lettered == 4
    assert "order-after" in engine.starts
    assert queue_depth(rabbit_queue) == 0  # all acked
    for message in dead_letters(rabbit_queue):
        assert message.headers["x-flux-error-code"]


def test_an_unexpected_error_dead_letters_with_internal_error(
    rabbit_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fluxcelery.ingress.consumer as consumer_module

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(consumer_module, "check_message", explode)
    publish(rabbit_queue, good("x"), good("y"))
    stats = run_consume(rabbit_queue, RecordingEngine())
    assert (stats.received, stats.dead_lettered) == (2, 2)
    assert stats.by_code == {"internal_error": 2}
    dead = dead_letters(rabbit_queue)
    assert [m.headers["x-flux-error-code"] for m in dead] == ["internal_error"] * 2
    assert "KeyError" in dead[0].headers["x-flux-error"]
    assert queue_depth(rabbit_queue) == 0


def test_outages_are_waited_out_and_nothing_is_acked_early(rabbit_queue: str) -> None:
    publish(rabbit_queue, good("a"))
    engine = RecordingEngine()
    engine.fail_next = [StorageError("database down"), ConnectionRefusedError()]
    stats = run_consume(rabbit_queue, engine)
    assert engine.starts == ["order-a"]
    assert (stats.started, stats.start_retries, stats.dead_lettered) == (1, 2, 0)


def test_a_run_stored_but_not_enqueued_is_resumed(rabbit_queue: str) -> None:
    publish(rabbit_queue, good("a"))
    engine = RecordingEngine()
    engine.store_then_fail = True
    stats = run_consume(rabbit_queue, engine)
    assert engine.resumed == ["order-a"] and stats.started == 1


def test_a_message_that_keeps_breaking_start_is_dead_lettered(rabbit_queue: str) -> None:
    publish(rabbit_queue, good("a"), good("b"))
    engine = RecordingEngine()
    engine.fail_next = [TypeError("bug in a validator")] * 3
    stats = run_consume(rabbit_queue, engine)
    assert stats.by_code == {"start_failed": 1} and engine.starts == ["order-b"]
    [dead] = dead_letters(rabbit_queue)
    assert "TypeError: bug in a validator" in dead.headers["x-flux-error"]


def test_run_id_taken_by_another_workflow_is_dead_lettered(rabbit_queue: str) -> None:
    publish(rabbit_queue, good("a"))
    engine = RecordingEngine()
    engine.runs["order-a"] = SimpleNamespace(workflow="someone-else", status=RunStatus.COMPLETED)
    stats = run_consume(rabbit_queue, engine)
    assert stats.by_code == {"run_id_conflict": 1} and engine.starts == []


def test_stopping_early_requeues_what_was_prefetched(rabbit_queue: str) -> None:
    publish(rabbit_queue, *[good(f"o{i}") for i in range(6)])
    engine = RecordingEngine()
    first = run_consume(rabbit_queue, engine, max_messages=2, prefetch=10)
    assert first.received == 2 and len(engine.starts) == 2
    second = run_consume(rabbit_queue, engine)
    assert second.started == 4
    assert sorted(engine.starts) == sorted(f"order-o{i}" for i in range(6))


def test_reconnects_after_losing_the_broker_connection(rabbit_queue: str) -> None:
    total = 30
    publish(rabbit_queue, *[good(f"o{i}") for i in range(total)])
    engine = RecordingEngine()
    slow_start = engine.start

    def start(*a: Any, **kw: Any) -> Any:
        time.sleep(0.02)
        return slow_start(*a, **kw)

    engine.start = start  # type: ignore[method-assign]
    stop = threading.Event()
    consumer = IngressConsumer(
        AMQP_URL,
        Topology(rabbit_queue),
        WF.name,
        engine,  # type: ignore[arg-type]
        prefetch=5,
        max_messages=None,
        idle_timeout=None,
        stop=stop,
        on_event=None,
        max_bytes=1 << 20,
        progress_interval=60,
    )
    thread = threading.Thread(target=consumer.run, kwargs={"safety_interval": 0.1}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while len(engine.starts) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    consumer.live_connection.connection.sock.shutdown(socket.SHUT_RDWR)  # the network drops
    while len(engine.runs) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=10)
    assert set(engine.runs) == {f"order-o{i}" for i in range(total)}
    assert consumer.stats.reconnects >= 1
    stats = consumer.stats
    assert sorted(engine.starts) == sorted(engine.runs)  # one start per run
    assert stats.started == total  # what was redelivered counted as a duplicate, not a run
    assert stats.duplicates == stats.received - total
    assert stats.dead_lettered == 0
    assert queue_depth(rabbit_queue) == 0


def test_a_queue_declared_with_other_arguments_is_a_clear_error(rabbit_queue: str) -> None:
    from kombu import Connection

    with Connection(AMQP_URL) as conn:
        conn.default_channel.queue_declare(rabbit_queue, durable=True, auto_delete=False)
    with pytest.raises(IngressConfigError, match="exists with other arguments"):
        run_consume(rabbit_queue, RecordingEngine())


def test_unknown_workflow_fails_before_consuming() -> None:
    with pytest.raises(WorkflowNotFound):
        consume("never-declared", "no-such-workflow", broker_url=AMQP_URL, engine=RecordingEngine())  # type: ignore[arg-type]


def test_main_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUX_INGRESS_URL", raising=False)
    monkeypatch.setenv("FLUX_BROKER_URL", "memory://")
    assert main(["--queue", "q"]) == 2  # no broker
    monkeypatch.setenv("FLUX_BROKER_URL", AMQP_URL)
    assert main(["--workflows", "no.such.module"]) == 2
    assert main(["--workflow", "no-such-workflow", "--queue", "never-declared"]) == 2


# -- the HTTP producer --------------------------------------------------------------------------
class FakePublisher:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[Any, str]] = []
        self.raw: list[bytes] = []
        self.fail = fail

    def publish_raw(self, body: bytes, *, content_type: str, message_id: str) -> str:
        if self.fail:
            raise ConnectionRefusedError("broker down")
        assert content_type == "application/json"
        self.raw.append(body)
        self.sent.append((json.loads(body), message_id))
        return message_id

    def ping(self) -> None:
        if self.fail:
            raise ConnectionRefusedError("broker down")

    def close(self) -> None:
        pass


def call(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    server: tuple[str, int] | None = None,
    **headers: str,
) -> tuple[int, Any]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "server": server,
    }
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
    incoming = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.fixture
def http_app() -> tuple[ProducerApp, FakePublisher]:
    publisher = FakePublisher()
    return ProducerApp(queue="orders.t", workflow=WF.name, publisher=publisher), publisher


def test_http_post_order_publishes_and_returns_the_run_id(http_app: Any) -> None:
    app, publisher = http_app
    status, body = call(app, "POST", "/orders", json.dumps(GOOD).encode(), content_type=JSON)
    assert status == 202
    assert body == {
        "message_id": "order-o-1",
        "run_id": "order-o-1",
        "queue": "orders.t",
        "workflow": WF.name,
    }
    assert publisher.sent == [(GOOD, "order-o-1")]
    status, body = call(
        app, "POST", "/orders", json.dumps(GOOD).encode(), content_type=JSON, idempotency_key="k-7"
    )
    assert (status, body["message_id"], body["run_id"]) == (202, "k-7", "k-7")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (json.dumps({**GOOD, "amount": -1}).encode(), JSON, 400, "invalid_input"),
        (json.dumps({"order_id": "x"}).encode(), JSON, 400, "invalid_input"),
        (b"{nope", JSON, 400, "invalid_json"),
        (b"[]", JSON, 400, "not_an_object"),
        (json.dumps(GOOD).encode(), "text/plain", 415, "unsupported_content_type"),
        (b'{"a": "' + b"x" * (1 << 20) + b'"}', JSON, 413, "payload_too_large"),
    ],
)
def test_http_rejects_bad_orders_with_the_reason(
    http_app: Any, body: bytes, content_type: str, status: int, code: str
) -> None:
    app, publisher = http_app
    got_status, got = call(app, "POST", "/orders", body, content_type=content_type)
    assert (got_status, got["error"]) == (status, code)
    assert got["message"]
    assert publisher.sent == []


def test_http_invalid_input_names_the_field(http_app: Any) -> None:
    app, _ = http_app
    _, got = call(
        app, "POST", "/orders", json.dumps({**GOOD, "amount": "x"}).encode(), content_type=JSON
    )
    assert got["field"] == "amount" and "amount" in got["message"]


def test_http_routes_health_and_broker_failures(http_app: Any) -> None:
    app, _ = http_app
    assert call(app, "GET", "/healthz") == (
        200,
        {"status": "ok", "queue": "orders.t", "workflow": WF.name},
    )
    assert call(app, "GET", "/nope")[0] == 404
    assert call(app, "GET", "/orders")[0] == 405
    down = ProducerApp(workflow=WF.name, publisher=FakePublisher(fail=True))
    assert call(down, "GET", "/healthz")[0] == 503
    status, body = call(down, "POST", "/orders", json.dumps(GOOD).encode(), content_type=JSON)
    assert (status, body["error"]) == (503, "broker_unavailable")
    unknown = ProducerApp(workflow="no-such-workflow", publisher=FakePublisher())
    assert call(unknown, "GET", "/healthz")[0] == 503


ORDER = json.dumps(GOOD).encode()


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong-token", 401),
        ("Basic c2VjcmV0", 401),
        ("Bearer s3cret-token-1", 202),
        ("bearer  s3cret-token-1 ", 202),
    ],
)
def test_http_orders_need_the_bearer_token_when_one_is_set(
    authorization: str | None, status: int
) -> None:
    app = ProducerApp(workflow=WF.name, publisher=FakePublisher(), token="s3cret-token-1")
    headers = {"content_type": JSON}
    if authorization is not None:
        headers["authorization"] = authorization
    got, body = call(app, "POST", "/orders", ORDER, server=("0.0.0.0", 8000), **headers)
    assert got == status, body
    if status == 401:
        assert body["error"] == "unauthorized" and "s3cret" not in json.dumps(body)
    assert call(app, "GET", "/healthz", server=("0.0.0.0", 8000))[0] == 200  # stays open


def test_http_off_loopback_without_a_token_takes_no_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLUX_PRODUCER_TOKEN", raising=False)
    publisher = FakePublisher()
    app = ProducerApp(workflow=WF.name, publisher=publisher)
    status, body = call(app, "POST", "/orders", ORDER, server=("10.1.2.3", 8000), content_type=JSON)
    assert (status, body["error"]) == (503, "auth_not_configured")
    assert "FLUX_PRODUCER_TOKEN" in body["message"]
    assert publisher.sent == []
    # On loopback the producer stays open without a token (a developer's machine).
    assert (
        call(app, "POST", "/orders", ORDER, server=("127.0.0.1", 8000), content_type=JSON)[0] == 202
    )


def test_http_producer_main_refuses_a_public_host_without_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fluxcelery.contrib.http_producer import main as producer_main

    monkeypatch.delenv("FLUX_PRODUCER_TOKEN", raising=False)
    assert producer_main(["--host", "0.0.0.0", "--port", "1"]) == 2


def test_http_producer_publishes_to_rabbitmq(rabbit_queue: str) -> None:
    app = ProducerApp(broker_url=AMQP_URL, queue=rabbit_queue, workflow=WF.name)
    status, body = call(app, "POST", "/orders", json.dumps(GOOD).encode(), content_type=JSON)
    assert status == 202
    assert call(app, "GET", "/healthz")[0] == 200
    engine = RecordingEngine()
    stats = run_consume(rabbit_queue, engine)
    assert stats.started == 1 and engine.starts == [body["run_id"]] == ["order-o-1"]


def test_invalid_input_from_start_is_dead_lettered_too(rabbit_queue: str) -> None:
    """The engine validates again (e.g. a size limit of its own): its refusal is final."""
    publish(rabbit_queue, good("a"))
    engine = RecordingEngine()
    engine.fail_next = [InvalidInput("Invalid input for workflow: too large for the engine")]
    stats = run_consume(rabbit_queue, engine)
    assert stats.by_code == {"invalid_input": 1}


def test_replaying_dead_letters_after_the_fix(rabbit_queue: str) -> None:
    from fluxcelery.ingress import replay_dead_letters

    late = workflow("ingress-test-late").step("noop", lambda ctx: None)
    publish(rabbit_queue, (b"{}", JSON, "late-1"), (b"oops", JSON, "bad-1"))
    with Publisher(AMQP_URL, rabbit_queue) as p:
        p.publish_raw(
            b"{}", content_type=JSON, message_id="late-2", headers={"x-flux-workflow": late.name}
        )
    engine = RecordingEngine()
    stats = run_consume(rabbit_queue, engine)
    assert stats.by_code == {"invalid_input": 1, "invalid_json": 1, "unknown_workflow": 1}

    listed = replay_dead_letters(AMQP_URL, rabbit_queue, dry_run=True)
    assert sorted(m["message_id"] for m in listed) == ["bad-1", "late-1", "late-2"]
    WORKFLOWS[late.name] = late  # the fix: the workflow is deployed
    try:
        moved = replay_dead_letters(AMQP_URL, rabbit_queue, code="unknown_workflow")
        assert [m["message_id"] for m in moved] == ["late-2"]
        stats = run_consume(rabbit_queue, engine)
    finally:
        del WORKFLOWS[late.name]
    assert stats.started == 1 and engine.starts == ["late-2"]
    left = dead_letters(rabbit_queue)
    assert sorted(m.properties["message_id"] for m in left) == ["bad-1", "late-1"]
    assert all("x-flux-error-code" in m.headers for m in left)
