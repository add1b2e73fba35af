"""The consumer: kombu's ``ConsumerMixin`` (reconnects with backoff) around ``check_message``
and ``engine.start``; dead letters are republished with publisher confirms, then acked."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from amqp import serialization as amqp_serialization
from kombu import Connection, Producer
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.mixins import ConsumerMixin

from ..core.errors import FluxError, IdempotencyConflict, InvalidInput, describe_error
from ..defaults import default_engine
from .messages import (
    DEFAULT_QUEUE,
    DEFAULT_WORKFLOW,
    MAX_MESSAGE_BYTES,
    RETRY_POLICY,
    Accepted,
    Rejected,
    Topology,
    check_message,
    dead_letter_headers,
    is_transient,
    printable,
    raw_body,
)

if TYPE_CHECKING:
    from kombu.message import Message

    from ..engine import FluxEngine

log = logging.getLogger("fluxcelery.ingress")


def _decode_text(raw: Any) -> Any:
    """py-amqp's decoding of short strings (message properties, header values): strict
    UTF-8 there (``surrogatepass``) raises on a message id with a byte like 0xff while the
    frame is read, before any message reaches us; the broker delivers it again after every
    restart, so one such message would stop the ingress for good. Undecodable bytes become
    lone surrogates (``surrogateescape``) and the message is handled (dead-lettered)."""
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return raw.decode("utf-8", "surrogateescape")
    return raw


def tolerate_undecodable_text() -> None:
    """Plug ``_decode_text`` into py-amqp (idempotent; this process consumes untrusted
    messages: ``consume`` calls it)."""
    amqp_serialization.pstr_t = _decode_text


# -- statistics -------------------------------------------------------------------------------
@dataclass
class ConsumeStats:
    """What one ``consume`` call did."""

    queue: str = DEFAULT_QUEUE
    received: int = 0
    started: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    start_retries: int = 0
    reconnects: int = 0
    by_code: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def line(self) -> str:
        codes = ", ".join(f"{k}={v}" for k, v in sorted(self.by_code.items()))
        return (
            f"queue {self.queue}: {self.received} received, {self.started} started, "
            f"{self.duplicates} duplicates, {self.dead_lettered} dead-lettered"
            + (f" ({codes})" if codes else "")
            + (f", {self.requeued} requeued" if self.requeued else "")
            + (f", {self.reconnects} reconnects" if self.reconnects else "")
            + f" in {self.elapsed_s:.1f}s"
        )


class IngressConfigError(FluxError):
    """The broker refused the ingress topology (a queue exists with other arguments)."""

    code = "ingress_config"


class _Stop(Exception):
    """Raised from a reconnect loop when the consumer was asked to stop."""


class _Requeue(Exception):
    """Give the message back to the broker (stopping while an outage lasts)."""


# -- the consumer -----------------------------------------------------------------------------
class IngressConsumer(ConsumerMixin):
    """kombu's ``ConsumerMixin`` (reconnects with backoff) around ``check_message`` and
    ``engine.start``. Dead letters are published on a separate connection with publisher
    confirms, so waiting for a confirm never re-enters the consumer."""

    def __init__(
        self,
        broker_url: str,
        topology: Topology,
        workflow: str,
        engine: FluxEngine,
        *,
        prefetch: int,
        max_messages: int | None,
        idle_timeout: float | None,
        stop: threading.Event,
        on_event: Callable[[dict[str, Any]], Any] | None,
        max_bytes: int,
        progress_interval: float,
        health_file: str | None = None,
    ) -> None:
        self.connection = Connection(broker_url, heartbeat=30)
        self.health_file = health_file
        self._last_touch = 0.0
        self.broker_url = broker_url
        self.topology = topology
        self.workflow = workflow
        self.engine = engine
        self.prefetch = prefetch
        self.max_messages = max_messages
        self.idle_timeout = idle_timeout
        self.stop = stop
        self.on_event = on_event
        self.max_bytes = max_bytes
        self.progress_interval = progress_interval
        self.stats = ConsumeStats(queue=topology.queue)
        self._producer_conn: Connection | None = None
        self._last_activity = time.monotonic()
        self._last_progress = time.monotonic()
        self._connected_once = False
        self.live_connection: Any = None

    # kombu hooks
    def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
        from amqp.exceptions import PreconditionFailed

        try:
            self.topology.declare(channel)
        except PreconditionFailed as exc:
            raise IngressConfigError(
                f"queue {self.topology.queue!r} or {self.topology.dead_letter_queue!r} exists "
                f"with other arguments ({exc}); delete it or choose another --queue"
            ) from exc
        return [
            Consumer(
                queues=[self.topology.work_queue()],
                on_message=self._on_message,
                prefetch_count=self.prefetch,
            )
        ]

    def on_connection_revived(self) -> None:
        if self._connected_once:
            self.stats.reconnects += 1
            log.warning("ingress: reconnected to the broker")
        self._connected_once = True

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        if self.should_stop or self.stop.is_set():
            raise _Stop()
        log.warning("ingress: broker unreachable (%s); retrying in %.0fs", exc, interval)

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **_: Any) -> None:
        self.live_connection = connection  # tests cut it to prove reconnection
        log.info("ingress: consuming %s -> workflow %s", self.topology.queue, self.workflow)
        self._touch(force=True)

    def on_iteration(self) -> None:
        now = time.monotonic()
        if self.stop.is_set():
            self.should_stop = True
        elif self.idle_timeout is not None and now - self._last_activity >= self.idle_timeout:
            log.info("ingress: idle for %.1fs, stopping", self.idle_timeout)
            self.should_stop = True
        if now - self._last_progress >= self.progress_interval:
            self._last_progress = now
            log.info("ingress: %s", self.stats.line())
        self._touch()

    def _touch(self, force: bool = False) -> None:
        """Liveness for container health checks: the file's mtime is recent while the
        consumer is connected and looping (it goes stale during an outage)."""
        now = time.monotonic()
        if self.health_file and (force or now - self._last_touch >= 5.0):
            self._last_touch = now
            try:
                with open(self.health_file, "a"):
                    os.utime(self.health_file)
            except OSError as exc:
                log.warning("ingress: cannot touch health file %s: %s", self.health_file, exc)

    def on_consume_end(self, connection: Any, channel: Any) -> None:
        self._close_producer()

    # messages
    def _on_message(self, message: Message) -> None:
        if self.should_stop:
            message.requeue()  # prefetched after we decided to stop: not ours to handle
            return
        self._last_activity = time.monotonic()
        self.stats.received += 1
        props = message.properties or {}
        message_id = props.get("message_id")
        headers = message.headers or {}
        try:
            decision: Accepted | Rejected = check_message(
                raw_body(message),
                message.content_type,
                message_id=message_id,
                headers=headers,
                workflow=self.workflow,
                workflows=self.engine.workflows,
                max_bytes=self.max_bytes,
                max_input_bytes=self.engine.max_payload_bytes,
            )
        except Exception as exc:  # every message ends acked or dead-lettered
            decision = self._internal_error(exc, message_id)
        try:
            if isinstance(decision, Accepted):
                outcome = self._start(decision)
                if isinstance(outcome, Rejected):
                    self._dead_letter(message, outcome)
                    return
                # Counted before the ack: if the ack is lost with the connection, the run
                # exists all the same and the redelivery counts as a duplicate.
                self._count(outcome, run_id=decision.run_id, message_id=message_id)
                message.ack()
            else:
                self._dead_letter(message, decision)
        except _Requeue:
            message.requeue()
            self.stats.requeued += 1
            self._emit({"outcome": "requeued", "message_id": message_id})
        except (KombuOperationalError, OSError):
            raise  # the broker: kombu reconnects, and the message comes again
        except Exception as exc:  # every message ends acked or dead-lettered
            rejected = self._internal_error(exc, message_id)
            try:
                self._dead_letter(message, rejected)
            except (KombuOperationalError, OSError):
                raise
            except Exception:  # even the dead letter could not be made: let the broker
                log.exception("ingress: dead-lettering message %s failed", printable(message_id))
                message.reject(requeue=False)  # the queue's x-dead-letter-exchange takes it
                self._count_dead_letter(rejected, message_id)
        finally:
            self._last_activity = time.monotonic()
            if self.max_messages is not None and self.stats.received >= self.max_messages:
                self.should_stop = True

    def _internal_error(self, exc: Exception, message_id: Any) -> Rejected:
        log.exception("ingress: message %s could not be handled", printable(message_id))
        return Rejected("internal_error", printable(f"{type(exc).__name__}: {exc}"), self.workflow)

    def _count(self, outcome: str, **info: Any) -> None:
        if outcome == "started":
            self.stats.started += 1
        else:
            self.stats.duplicates += 1
        self._emit({"outcome": outcome, **info})

    def _start(self, accepted: Accepted) -> str | Rejected:
        """``started`` or ``duplicate``; a ``Rejected`` for input the engine refuses, a run
        id taken by another workflow, or a run id taken by other content (the same key
        reused: ``idempotency_conflict``); waits out outages (or raises ``_Requeue``)."""
        failures = 0
        while True:
            try:
                existing = self.engine.get(accepted.run_id)
                if existing is not None:
                    if existing.workflow != accepted.workflow:
                        return Rejected(
                            "run_id_conflict",
                            f"run {accepted.run_id} already exists for workflow "
                            f"{existing.workflow!r}",
                            accepted.workflow,
                        )
                    conflict = existing.start_conflict(accepted.workflow, accepted.stored)
                    if conflict is not None:
                        return Rejected(IdempotencyConflict.code, conflict, accepted.workflow)
                    if failures and _never_dispatched(existing):
                        # Our own earlier start stored the run but did not enqueue it
                        # (an engine that keeps the run when dispatch fails): enqueue it now.
                        self.engine.resume(accepted.run_id)
                        return "started"
                    return "duplicate"
                wf = self.engine.workflow(accepted.workflow)
                self.engine.start(wf, accepted.body, run_id=accepted.run_id)
                return "started"
            except (InvalidInput, IdempotencyConflict) as exc:  # a conflict: a race lost
                return Rejected(exc.code, str(exc), accepted.workflow)
            except Exception as exc:
                failures += 1
                self.stats.start_retries += 1
                if not is_transient(exc) and failures >= 3:
                    code = exc.code if isinstance(exc, FluxError) else "start_failed"
                    return Rejected(code, f"{type(exc).__name__}: {exc}", accepted.workflow)
                delay = min(30.0, 0.5 * 2 ** (failures - 1))
                log.warning(
                    "ingress: could not start run %s (%s: %s); retry %d in %.1fs",
                    accepted.run_id,
                    type(exc).__name__,
                    exc,
                    failures,
                    delay,
                )
                if self.stop.wait(delay):
                    raise _Requeue() from exc

    def _dead_letter(self, message: Message, rejected: Rejected) -> None:
        props = message.properties or {}
        info = message.delivery_info or {}
        headers = dead_letter_headers(
            message.headers,
            rejected,
            queue=self.topology.queue,
            exchange=info.get("exchange"),
            routing_key=info.get("routing_key"),
            message_id=props.get("message_id"),
        )
        body = raw_body(message)
        extra = {k: props[k] for k in ("message_id", "correlation_id") if props.get(k)}
        producer = Producer(self._producer())
        producer.publish(
            body,
            exchange=self.topology.dead_letter_exchange,
            routing_key=self.topology.dead_letter_queue,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            headers=headers,
            delivery_mode=2,
            retry=True,
            retry_policy=RETRY_POLICY,
            **extra,
        )
        message.ack()  # only after the broker confirmed the dead letter
        self._count_dead_letter(rejected, props.get("message_id"))

    def _count_dead_letter(self, rejected: Rejected, message_id: Any) -> None:
        self.stats.dead_lettered += 1
        self.stats.by_code[rejected.code] = self.stats.by_code.get(rejected.code, 0) + 1
        log.warning(
            "ingress: dead-lettered message %s to %s: [%s] %s",
            printable(message_id or "(no id)"),
            self.topology.dead_letter_queue,
            rejected.code,
            rejected.reason,
        )
        self._emit(
            {
                "outcome": "dead_lettered",
                "message_id": message_id,
                "code": rejected.code,
                "reason": rejected.reason,
            }
        )

    def _producer(self) -> Connection:
        if self._producer_conn is None:
            conn = Connection(self.broker_url, transport_options={"confirm_publish": True})
            conn.ensure_connection(self.on_connection_error, max_retries=None)
            self._producer_conn = conn
        return self._producer_conn

    def _close_producer(self) -> None:
        if self._producer_conn is not None:
            try:
                self._producer_conn.release()
            finally:
                self._producer_conn = None

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception as exc:  # an observer must not break the consumer
            log.warning("ingress: on_event raised %s", exc)


def _never_dispatched(state: Any) -> bool:
    return state.status.value == "pending" and all(
        s.status.value == "pending" and not s.attempts for s in state.steps
    )


T = TypeVar("T")


def wait_out_outage(
    attempt: Callable[[], T], stop: threading.Event, what: str, max_delay: float = 30.0
) -> T | None:
    """``attempt()`` until it succeeds, waiting out outages (``is_transient``) with backoff
    and one warning per try; None when ``stop`` is set first. A consumer started while its
    database restarts (compose starting everything at once, a failover) waits instead of
    exiting, as it does for the broker."""
    failures = 0
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not is_transient(exc):
                raise
            failures += 1
            delay = min(max_delay, 0.5 * 2 ** (failures - 1))
            log.warning(
                "ingress: %s is unreachable (%s); retrying in %.1fs",
                what,
                describe_error(exc),
                delay,
            )
            if stop.wait(delay):
                return None


def consume(
    queue: str = DEFAULT_QUEUE,
    workflow: str = DEFAULT_WORKFLOW,
    *,
    broker_url: str,
    engine: FluxEngine | None = None,
    prefetch: int = 10,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
    stop: threading.Event | None = None,
    on_event: Callable[[dict[str, Any]], Any] | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
    progress_interval: float = 10.0,
    health_file: str | None = None,
) -> ConsumeStats:
    """Consume ``queue`` until ``stop`` is set, ``max_messages`` were handled or the queue
    stayed empty for ``idle_timeout`` seconds; each good message starts one run of
    ``workflow`` on ``engine`` (default: the configured engine). Raises ``WorkflowNotFound``
    at once when ``workflow`` is not registered, before touching the queue."""
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    if max_messages is not None and max_messages < 1:
        raise ValueError(f"max_messages must be >= 1 or None, got {max_messages}")
    if broker_url.startswith("memory://"):
        raise ValueError("the ingress needs a real AMQP broker URL (amqp://...), not memory://")
    stop = stop or threading.Event()
    if engine is None:
        engine = wait_out_outage(default_engine, stop, "the database")
        if engine is None:
            return ConsumeStats(queue=queue)  # asked to stop before the database came back
    engine.workflow(workflow)  # fail fast on a typo, before dead-lettering every message
    tolerate_undecodable_text()
    consumer = IngressConsumer(
        broker_url,
        Topology(queue),
        workflow,
        engine,
        prefetch=prefetch,
        max_messages=max_messages,
        idle_timeout=idle_timeout,
        stop=stop,
        on_event=on_event,
        max_bytes=max_bytes,
        progress_interval=progress_interval,
        health_file=health_file,
    )
    started = time.monotonic()
    pause = 1.0
    try:
        while not consumer.should_stop and not consumer.stop.is_set():
            try:
                consumer.run(safety_interval=0.25)
            except _Stop:
                break
            except IngressConfigError:
                raise
            except (KombuOperationalError, OSError) as exc:
                # kombu reconnects on its own connection errors; these escaped a publish.
                log.warning("ingress: broker error %s; restarting in %.0fs", exc, pause)
                consumer.stats.reconnects += 1
                if consumer.stop.wait(pause):
                    break
                pause = min(pause * 2, 30.0)
    finally:
        consumer._close_producer()
        consumer.connection.release()
        consumer.stats.elapsed_s = time.monotonic() - started
    log.info("ingress: done: %s", consumer.stats.line())
    return consumer.stats
