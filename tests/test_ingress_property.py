"""The AMQP ingress under any message at all (issue #16): hypothesis publishes arbitrary
bodies, content types, content encodings, message ids (text or raw bytes) and header tables
to a real RabbitMQ queue, each twice (a redelivery), while one real consumer runs against a
real engine. Properties: the consumer never exits; each message ends started, duplicate or
dead-lettered with a code, and its copy ends the same way; every message is acked; no run
is started (dispatched) twice; the dead-letter queue holds exactly the dead-lettered ones.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import AMQP_URL, require_service
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from fluxcelery import FluxEngine, MemoryStorage, workflow
from fluxcelery.ingress import WORKFLOW_HEADER, ConsumeStats, Topology, consume

pytestmark = pytest.mark.integration

ANY_OBJECT = workflow("prop-ingress").step("noop", lambda ctx: None)
OTHER = workflow("prop-ingress-other").step("noop", lambda ctx: None)
OUTCOMES = {"started", "duplicate", "dead_lettered"}


class CountingDispatcher:
    """Counts what the engine sends to workers, per run id (no worker needed)."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()

    def register(self, wf: Any, default_timeout: float | None) -> None:
        pass

    def dispatch(self, state: Any, wf: Any, nxt: Any, countdown: float | None = None) -> None:
        self.sent[state.id] += 1

    def schedule_wait_timeout(self, run_id: str, index: int, seconds: float) -> None:
        pass

    def live_task_ids(self) -> set[str] | None:
        return set()


@dataclass
class Ingress:
    queue: str
    engine: FluxEngine
    dispatcher: CountingDispatcher
    thread: threading.Thread
    stop: threading.Event
    events: list[dict[str, Any]] = field(default_factory=list)
    published: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    channel: Any = None


@pytest.fixture(scope="module")
def ingress() -> Iterator[Ingress]:
    require_service("rabbitmq")
    from kombu import Connection

    dispatcher = CountingDispatcher()
    engine = FluxEngine(storage=MemoryStorage(), dispatcher=dispatcher)
    engine.register(ANY_OBJECT)
    engine.register(OTHER)
    queue = f"flux.test.prop.{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    events: list[dict[str, Any]] = []
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["stats"] = consume(
                queue,
                ANY_OBJECT.name,
                broker_url=AMQP_URL,
                engine=engine,
                stop=stop,
                on_event=events.append,
                prefetch=1,
            )
        except BaseException as exc:  # the property says this never happens
            result["raised"] = exc

    with Connection(AMQP_URL) as conn:
        Topology(queue).declare(conn.default_channel)  # before the consumer's first declare
        thread = threading.Thread(target=run, name="prop-ingress", daemon=True)
        thread.start()
        state = Ingress(queue, engine, dispatcher, thread, stop, events, result=result)
        state.channel = _publishing_channel()
        try:
            yield state
        finally:
            stop.set()
            thread.join(30)
            state.channel.connection.close()
            Topology(queue).delete(conn.default_channel)


TEXT_OR_BYTES = st.text(max_size=40) | st.binary(max_size=40)
HEADER_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
HEADERS = st.dictionaries(st.text(max_size=16), HEADER_VALUES, max_size=4) | st.fixed_dictionaries(
    {WORKFLOW_HEADER: st.sampled_from([OTHER.name, "no-such-workflow", ""]) | HEADER_VALUES}
)
JSON_BODIES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
).map(lambda v: json.dumps({"v": v}).encode())
BODIES = st.one_of(
    JSON_BODIES, JSON_BODIES, st.binary(max_size=300), st.sampled_from([b"{}", b'{"a": 1}', b"[]"])
)
JSON_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/vnd.order+json"]
)
#: Mostly JSON (so that bodies get as far as the schema and the engine), else anything.
CONTENT_TYPES = st.one_of(
    JSON_TYPES,
    JSON_TYPES,
    JSON_TYPES,
    st.none() | st.sampled_from(["text/plain", ""]) | TEXT_OR_BYTES,
)
ENCODINGS = st.sampled_from(["utf-8", "binary", "latin-1", "gzip", "no-such-codec"]) | st.none()
MESSAGE_IDS = st.none() | st.text(min_size=1, max_size=60) | st.binary(min_size=1, max_size=60)


def _publish(ingress: Ingress, body: bytes, props: dict[str, Any], headers: dict[str, Any]) -> bool:
    """Publish with a confirm; False when RabbitMQ refused the frame itself (it closes the
    connection on a header table it cannot parse): such a message never reaches anyone."""
    import amqp

    message = amqp.Message(body, application_headers=headers, delivery_mode=2, **props)
    try:
        ingress.channel.basic_publish_confirm(
            message, exchange=ingress.queue, routing_key=ingress.queue
        )
    except (OSError, amqp.exceptions.AMQPError):
        ingress.channel = _publishing_channel()
        return False
    ingress.published += 1
    return True


def _publishing_channel() -> Any:
    import amqp

    conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
    conn.connect()
    channel = conn.channel()
    channel.confirm_select()
    return channel


def _wait_for(ingress: Ingress, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(ingress.events) < count:
        assert ingress.thread.is_alive(), f"the consumer exited: {ingress.result}"
        assert time.monotonic() < deadline, f"{count - len(ingress.events)} messages unhandled"
        time.sleep(0.005)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=BODIES,
    content_type=CONTENT_TYPES,
    encoding=ENCODINGS,
    message_id=MESSAGE_IDS,
    headers=HEADERS,
)
def test_any_message_ends_acked_or_dead_lettered_and_starts_at_most_once(
    ingress: Ingress,
    body: bytes,
    content_type: str | bytes | None,
    encoding: str | None,
    message_id: str | bytes | None,
    headers: dict[str, Any],
) -> None:
    props: dict[str, Any] = {}
    if content_type is not None:
        props["content_type"] = content_type
    if encoding is not None:
        props["content_encoding"] = encoding
    if message_id is not None:
        props["message_id"] = message_id
    before = len(ingress.events)
    if not _publish(ingress, body, props, headers):
        reject()  # RabbitMQ itself refused it
    assert _publish(ingress, body, props, headers)  # the same message again: a redelivery
    _wait_for(ingress, before + 2)
    first, second = ingress.events[before : before + 2]
    event(f"{first['outcome']} {first.get('code') or ''}".strip())  # --hypothesis-show-statistics
    assert {first["outcome"], second["outcome"]} <= OUTCOMES
    if first["outcome"] == "dead_lettered":
        assert second["outcome"] == "dead_lettered" and second["code"] == first["code"]
        assert first["code"] and first["reason"]
    else:
        assert second["outcome"] == "duplicate", (first, second)
        assert second["run_id"] == first["run_id"]
    assert max(ingress.dispatcher.sent.values(), default=0) <= 1  # nothing started twice


def test_after_the_property_nothing_is_left_and_everything_adds_up(ingress: Ingress) -> None:
    """Runs after the property (file order): the totals over every generated message."""
    from kombu import Connection

    assert ingress.published > 0, "the property test did not run first"
    _wait_for(ingress, ingress.published)
    ingress.stop.set()
    ingress.thread.join(30)
    assert not ingress.thread.is_alive() and "raised" not in ingress.result
    stats: ConsumeStats = ingress.result["stats"]
    assert stats.received == ingress.published
    assert stats.started + stats.duplicates + stats.dead_lettered == stats.received
    runs = ingress.engine.list(limit=None)
    assert stats.started == len(runs) == len(ingress.dispatcher.sent)
    assert set(ingress.dispatcher.sent.values()) <= {1}  # each run dispatched once
    with Connection(AMQP_URL) as conn:
        channel = conn.default_channel
        assert channel.queue_declare(ingress.queue, passive=True).message_count == 0
        dead = channel.queue_declare(f"{ingress.queue}.dlq", passive=True).message_count
    assert dead == stats.dead_lettered
