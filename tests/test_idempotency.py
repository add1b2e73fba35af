"""Idempotency compares content (issue #16, defect 5): a key (a run id, an AMQP message id, an
HTTP ``Idempotency-Key`` or an order id) used again with the same content is the existing
run; with other content it is refused (``IdempotencyConflict``, HTTP 409, dead-letter code
``idempotency_conflict``), never silently taken for a duplicate. Before, every second start
under a key was dropped as a duplicate whatever its body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import AMQP_URL, RecordingDispatcher, require_service
from test_ingress import (
    GOOD,
    JSON,
    WF,
    FakePublisher,
    call,
    dead_letters,
    publish,
    queue_depth,
    rabbit_queue,  # noqa: F401 - a fixture
)

from fluxcelery import FluxEngine, IdempotencyConflict, MemoryStorage, RunStatus, workflow
from fluxcelery.contrib.http_producer import ProducerApp
from fluxcelery.ingress import consume

ECHO = workflow("idem-echo").step("echo", lambda ctx: ctx.input)
OTHER = workflow("idem-other").step("echo", lambda ctx: ctx.input)


@pytest.fixture
def engine() -> Any:
    dispatcher = RecordingDispatcher()
    engine = FluxEngine(storage=MemoryStorage(), dispatcher=dispatcher)
    engine.register(WF)
    engine.register(ECHO)
    engine.register(OTHER)
    engine.sent = dispatcher.sent  # type: ignore[attr-defined]
    yield engine
    engine.close()


# -- the engine ---------------------------------------------------------------------------------
def test_start_under_a_taken_run_id_repeats_only_the_same_content(engine: Any) -> None:
    engine.start(ECHO, {"amount": 10}, run_id="k-1")
    again = engine.start(ECHO, {"amount": 10}, run_id="k-1")  # a repeat: nothing new
    assert again.id == "k-1" and engine.sent == ["k-1"]
    with pytest.raises(IdempotencyConflict, match="different input") as info:
        engine.start(ECHO, {"amount": 99}, run_id="k-1")
    assert info.value.code == "idempotency_conflict" and info.value.run_id == "k-1"
    with pytest.raises(IdempotencyConflict, match="idem-echo"):
        engine.start(OTHER, {"amount": 10}, run_id="k-1")
    assert engine.sent == ["k-1"]
    assert engine.get("k-1").input == {"amount": 10}  # the stored run is untouched


def test_execute_under_a_taken_run_id_repeats_only_the_same_content(engine: Any) -> None:
    first = engine.execute(ECHO, {"n": 1}, run_id="x-1")
    assert first.status == RunStatus.COMPLETED
    assert engine.execute(ECHO, {"n": 1}, run_id="x-1").id == first.id
    with pytest.raises(IdempotencyConflict):
        engine.execute(ECHO, {"n": 2}, run_id="x-1")
    assert len(engine.list(limit=None)) == 1


def test_the_same_content_is_compared_as_stored_not_as_spelled(engine: Any) -> None:
    """Key order and a pydantic default do not make content different."""
    engine.start(WF, GOOD, run_id="o-1")
    reordered = dict(reversed(list(GOOD.items())))
    engine.start(WF, reordered, run_id="o-1")
    assert engine.sent == ["o-1"]


# -- the AMQP consumer ----------------------------------------------------------------------
def test_consumer_dead_letters_a_reused_message_id_with_other_content(
    rabbit_queue: str,  # noqa: F811
    engine: Any,
) -> None:
    require_service("rabbitmq")
    order = json.dumps(GOOD).encode()
    changed = json.dumps({**GOOD, "amount": 999.0}).encode()
    publish(
        rabbit_queue,
        (order, JSON, "order-o-1"),
        (order, JSON, "order-o-1"),  # redelivered / sent twice: a duplicate
        (changed, JSON, "order-o-1"),  # the same key, another order: refused
    )
    stats = consume(rabbit_queue, WF.name, broker_url=AMQP_URL, engine=engine, idle_timeout=1.0)
    assert (stats.started, stats.duplicates, stats.dead_lettered) == (1, 1, 1)
    assert stats.by_code == {"idempotency_conflict": 1}
    [dead] = dead_letters(rabbit_queue)
    assert dead.headers["x-flux-error-code"] == "idempotency_conflict"
    assert "999" not in dead.headers["x-flux-error"]  # the reason does not echo content
    assert dead.body == changed  # kept for whoever sorts it out
    assert engine.get("order-o-1").input["amount"] == 3.5
    assert queue_depth(rabbit_queue) == 0


# -- the HTTP producer ----------------------------------------------------------------------
def _post(app: ProducerApp, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
    return call(app, "POST", "/orders", json.dumps(body).encode(), content_type=JSON, **headers)


def test_producer_answers_repeats_and_conflicts_it_published_itself() -> None:
    publisher = FakePublisher()
    app = ProducerApp(workflow=WF.name, publisher=publisher, storage=MemoryStorage())
    status, first = _post(app, GOOD)
    assert status == 202 and "duplicate" not in first
    status, again = _post(app, GOOD)
    assert (status, again["duplicate"], again["run_id"]) == (202, True, first["run_id"])
    status, body = _post(app, {**GOOD, "amount": 7.0})  # same order id, other content
    assert (status, body["error"]) == (409, "idempotency_conflict")
    status, body = _post(app, {**GOOD, "amount": 7.0}, idempotency_key="k-9")
    assert status == 202
    status, body = _post(app, GOOD, idempotency_key="k-9")
    assert (status, body["error"]) == (409, "idempotency_conflict")
    assert [message_id for _, message_id in publisher.sent] == ["order-o-1", "k-9"]


def test_producer_reads_the_run_store_for_keys_it_did_not_publish(engine: Any) -> None:
    engine.start(WF, GOOD, run_id="order-o-1")  # e.g. another producer, or the AMQP door
    publisher = FakePublisher()
    app = ProducerApp(workflow=WF.name, publisher=publisher, storage=engine.storage)
    status, body = _post(app, GOOD)
    assert (status, body["duplicate"], body["status"]) == (202, True, "pending")
    status, body = _post(app, {**GOOD, "customer": "bob"})
    assert (status, body["error"]) == (409, "idempotency_conflict")
    assert "bob" not in body["message"]
    assert publisher.sent == []


def test_producer_without_a_store_leaves_older_keys_to_the_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLUX_DATABASE_URL", raising=False)
    publisher = FakePublisher()
    app = ProducerApp(workflow=WF.name, publisher=publisher)
    assert _post(app, GOOD)[0] == 202
    assert app.storage() is None
    assert _post(app, {**GOOD, "amount": 8.0})[0] == 409  # still known from its own posts
