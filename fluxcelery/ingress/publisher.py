"""Publishing to an ingress queue (``scripts/publish_order.py`` and the HTTP producer)."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from kombu import Connection, Producer

from .messages import DEFAULT_QUEUE, RETRY_POLICY, Topology, replay_headers


class Publisher:
    """Publishes to an ingress queue with publisher confirms (``publish`` returns once the
    broker has the message). Declares the topology first: a direct exchange drops what no
    queue is bound to, so publishing before the consumer's first start must not lose orders."""

    def __init__(self, broker_url: str, queue: str = DEFAULT_QUEUE) -> None:
        self.topology = Topology(queue)
        self.connection = Connection(broker_url, transport_options={"confirm_publish": True})
        self._declared = False
        self._lock = threading.Lock()

    def publish_json(
        self, body: Any, *, message_id: str | None = None, headers: dict[str, Any] | None = None
    ) -> str:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return self.publish_raw(
            data,
            content_type="application/json",
            content_encoding="utf-8",
            message_id=message_id,
            headers=headers,
        )

    def publish_raw(
        self,
        body: bytes,
        *,
        content_type: str,
        content_encoding: str = "binary",
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Publish bytes as they are (tests and demos publish malformed messages too)."""
        message_id = message_id or str(uuid.uuid4())
        with self._lock:
            channel = self.connection.default_channel
            if not self._declared:
                self.topology.declare(channel)
                self._declared = True
            Producer(channel).publish(
                body,
                exchange=self.topology.exchange,
                routing_key=self.topology.routing_key,
                content_type=content_type,
                content_encoding=content_encoding,
                message_id=message_id,
                headers=headers or {},
                delivery_mode=2,
                retry=True,
                retry_policy=RETRY_POLICY,
            )
        return message_id

    def ping(self) -> None:
        """Raise unless the broker is reachable (health checks)."""
        with self._lock:
            self.connection.ensure_connection(max_retries=1, timeout=3)
            if not self._declared:
                self.topology.declare(self.connection.default_channel)
                self._declared = True

    def close(self) -> None:
        self.connection.release()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def replay_dead_letters(
    broker_url: str,
    queue: str = DEFAULT_QUEUE,
    *,
    code: str | None = None,
    limit: int | None = None,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Move dead letters of ``queue`` back onto it, with their original headers, after the
    cause was fixed (a workflow module deployed, a schema relaxed). Only messages whose
    ``x-flux-error-code`` is ``code`` (when given), at most ``limit``; the others stay where
    they were. Each is republished with confirms before it leaves the DLQ. Returns what was
    (or, with ``dry_run``, would be) replayed."""
    topology = Topology(queue)
    replayed: list[dict[str, Any]] = []
    with Connection(broker_url, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        topology.declare(channel)
        waiting = channel.queue_declare(topology.dead_letter_queue, passive=True).message_count
        held = []  # not ours to replay: left unacked, so they return in order when we close
        for _ in range(waiting):
            if limit is not None and len(replayed) >= limit:
                break
            msg = channel.basic_get(topology.dead_letter_queue, no_ack=False)
            if msg is None:
                break
            headers = dict(msg.headers or {})
            info = {
                "message_id": msg.properties.get("message_id"),
                "code": headers.get("x-flux-error-code"),
                "error": headers.get("x-flux-error"),
            }
            selected = code is None or info["code"] == code
            if not selected or dry_run:
                held.append(msg)
                if selected:
                    replayed.append(info)
                continue
            body = (
                msg.body.encode(msg.content_encoding or "utf-8")
                if isinstance(msg.body, str)
                else bytes(msg.body)
            )
            extra = {
                k: msg.properties[k]
                for k in ("message_id", "correlation_id")
                if msg.properties.get(k)
            }
            Producer(channel).publish(
                body,
                exchange=topology.exchange,
                routing_key=headers.get("x-flux-original-routing-key") or topology.routing_key,
                content_type=msg.properties.get("content_type") or "application/octet-stream",
                content_encoding=msg.properties.get("content_encoding") or "binary",
                headers=replay_headers(headers),
                delivery_mode=2,
                **extra,
            )
            channel.basic_ack(msg.delivery_tag)
            replayed.append(info)
        channel.close()  # requeues what was held, in its original order
    return replayed
