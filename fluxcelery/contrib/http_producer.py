"""A small HTTP front door for the AMQP ingress: ``POST /orders`` validates the order with the
workflow's own input schema and publishes it to the ingress queue; ``GET /healthz``.

A plain ASGI app (no framework), served with uvicorn (``pip install "fluxcelery[http]"``)::

    FLUX_PRODUCER_TOKEN=... uvicorn fluxcelery.contrib.http_producer:app --host 0.0.0.0

Authentication: with ``FLUX_PRODUCER_TOKEN`` set, ``POST /orders`` needs
``Authorization: Bearer <token>`` (compared in constant time; 401 without it). Served on any
address but loopback, the token is required: without one every order is refused (503), and
``python -m fluxcelery.contrib.http_producer --host 0.0.0.0`` does not start. ``GET /healthz``
stays open (health checks).

Configured from the environment: ``FLUX_INGRESS_URL`` (else ``FLUX_BROKER_URL``),
``FLUX_INGRESS_QUEUE`` (``orders.workflow``), ``FLUX_INGRESS_WORKFLOW``
(``order-fulfillment``) and ``FLUX_WORKFLOWS`` (the modules defining it). It needs no database:
the run is created by the consumer, whose run id is the message id returned here.

Answers: 202 ``{"message_id", "run_id", "queue"}`` once the broker confirmed the message;
400 with the reason for input the consumer would dead-letter (the body goes through the
consumer's own ``check_message``, and the bytes checked are the bytes published); 413 over
1 MiB; 415 for a body that is not JSON; 503 when the broker is unreachable.

Idempotency: the message id is the ``Idempotency-Key`` header when given (UTF-8, at most 255
bytes), else ``order-<order_id>``. Posting the same order again answers 202 with
``"duplicate": true`` and starts nothing new; the same key with a different body is refused
with 409 ``idempotency_conflict``. The producer knows a key from its own recent posts and,
when ``FLUX_DATABASE_URL`` is set (compose sets it), from the run store; a conflict it cannot
see (another producer process, before the run exists) is dead-lettered by the consumer with
the code ``idempotency_conflict``, never taken silently.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..core.builder import Workflow, registered_workflows
from ..core.errors import WorkflowNotFound
from ..core.jsoncodec import canonical_json
from ..core.records import RunState
from ..declarative.sources import import_workflow_sources
from ..ingress import (
    DEFAULT_QUEUE,
    DEFAULT_WORKFLOW,
    MAX_MESSAGE_BYTES,
    Accepted,
    Publisher,
    check_message,
    derive_run_id,
)
from ..settings import is_loopback, load_settings

log = logging.getLogger("fluxcelery.http_producer")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": code, "message": message, **extra}


TOKEN_ENV = "FLUX_PRODUCER_TOKEN"
#: AMQP's limit for a message id (a short string).
MAX_KEY_BYTES = 255
#: How many recent keys the producer remembers to answer repeats and conflicts itself.
RECENT_KEYS = 10_000
#: The HTTP status of each refusal code ``check_message`` gives.
STATUS_OF = {"payload_too_large": 413, "unsupported_content_type": 415}


class ProducerApp:
    """The ASGI callable. Settings are read when first needed, so the module-level ``app``
    picks up the environment uvicorn runs with."""

    def __init__(
        self,
        *,
        broker_url: str | None = None,
        queue: str | None = None,
        workflow: str | None = None,
        publisher: Any = None,
        max_bytes: int = MAX_MESSAGE_BYTES,
        token: str | None = None,
        storage: Any = None,
    ) -> None:
        self._token = token
        self._storage = storage
        self._storage_checked = storage is not None
        #: run id -> canonical stored input of orders this process published (oldest first).
        self._recent: OrderedDict[str, str] = OrderedDict()
        self._broker_url = broker_url
        self._queue = queue
        self._workflow = workflow
        self._publisher = publisher
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._imported = False

    # -- configuration ------------------------------------------------------------------
    @property
    def queue(self) -> str:
        return self._queue or os.environ.get("FLUX_INGRESS_QUEUE") or DEFAULT_QUEUE

    @property
    def workflow_name(self) -> str:
        return self._workflow or os.environ.get("FLUX_INGRESS_WORKFLOW") or DEFAULT_WORKFLOW

    def broker_url(self) -> str:
        if self._broker_url:
            return self._broker_url

        return os.environ.get("FLUX_INGRESS_URL") or load_settings().broker_url

    def publisher(self) -> Any:
        with self._lock:
            if self._publisher is None:
                url = self.broker_url()
                if url.startswith("memory://"):
                    raise HttpError(
                        503, "no_broker", "set FLUX_INGRESS_URL or FLUX_BROKER_URL to amqp://..."
                    )
                self._publisher = Publisher(url, self.queue)
            return self._publisher

    def storage(self) -> Any:
        """The run store, when ``FLUX_DATABASE_URL`` says where it is (else None: the
        producer needs no database, and then only the consumer sees older keys)."""
        with self._lock:
            if not self._storage_checked:
                self._storage_checked = True
                url = os.environ.get("FLUX_DATABASE_URL")
                if url:
                    from ..storage.sql import SqlStorage

                    self._storage = SqlStorage(url, auto_migrate=False)
            return self._storage

    def workflow(self) -> Workflow:
        if not self._imported:
            import_workflow_sources(load_settings().workflows)
            self._imported = True
        known = registered_workflows()
        wf = known.get(self.workflow_name)
        if wf is None:
            raise WorkflowNotFound(self.workflow_name, list(known))
        return wf

    # -- ASGI ---------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, body = await self._route(scope, receive)
        except HttpError as exc:
            status, body = exc.status, exc.body
        except Exception as exc:  # never leak a traceback to a client
            log.exception("http producer: unexpected error")
            status, body = 500, {"error": "internal", "message": type(exc).__name__}
        await _respond(send, status, body)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                try:
                    self.workflow()  # a typo in the configuration fails at start, not per request
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if self._publisher is not None:
                    self._publisher.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        if path == "/healthz":
            if method not in ("GET", "HEAD"):
                raise HttpError(405, "method_not_allowed", "use GET")
            return await self._health()
        if path == "/orders":
            if method != "POST":
                raise HttpError(405, "method_not_allowed", "use POST")
            headers = _decode_headers(scope["headers"])
            self._authorize(scope, headers)
            return await self._post_order(headers, await self._read_body(receive))
        raise HttpError(404, "not_found", f"no route {path}; try POST /orders or GET /healthz")

    @property
    def token(self) -> str | None:
        return self._token if self._token is not None else (os.environ.get(TOKEN_ENV) or None)

    def _authorize(self, scope: Scope, headers: dict[str, str]) -> None:
        token = self.token
        server = scope.get("server") or (None, None)
        if token is None:
            if server[0] is None or is_loopback(server[0]):
                return  # loopback, or unknown (a Unix socket, a test calling the app)
            raise HttpError(
                503,
                "auth_not_configured",
                f"{TOKEN_ENV} must be set to take orders on {server[0]}",
            )
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.encode()
        ):
            raise HttpError(401, "unauthorized", "send Authorization: Bearer <token>")

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                raise HttpError(400, "disconnected", "client went away")
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise HttpError(413, "payload_too_large", f"body over {self.max_bytes} bytes")
            chunks.append(chunk)
            if not event.get("more_body"):
                return b"".join(chunks)

    async def _post_order(self, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any]]:
        wf = self.workflow()
        decision = check_message(
            raw,
            headers.get("content-type"),
            message_id=None,
            headers=None,
            workflow=wf.name,
            workflows={wf.name: wf},
            max_bytes=self.max_bytes,
        )
        if not isinstance(decision, Accepted):
            extra = {"field": decision.field} if decision.field else {}
            status = STATUS_OF.get(decision.code, 400)
            raise HttpError(status, decision.code, decision.reason, **extra)
        message_id = _message_id(headers, decision.body)
        run_id = derive_run_id(message_id, decision.body)
        content = canonical_json(decision.stored)
        answer = {
            "message_id": message_id,
            "run_id": run_id,
            "queue": self.queue,
            "workflow": wf.name,
        }
        seen = await self._seen(run_id, wf.name, decision.stored, content)
        if seen is not None:
            return 202, {**answer, "duplicate": True, **seen}
        publisher = self.publisher()
        try:
            await asyncio.to_thread(
                publisher.publish_raw,
                raw,
                content_type="application/json",
                message_id=message_id,
            )
        except Exception as exc:
            log.warning("http producer: publish failed: %s", exc)
            raise HttpError(503, "broker_unavailable", f"could not publish: {exc}") from None
        self._remember(run_id, content)
        return 202, answer

    async def _seen(
        self, run_id: str, workflow: str, stored: Any, content: str
    ) -> dict[str, Any] | None:
        """``{}`` (or the run's status) when this key was already taken for this content;
        None when it is new; 409 when it was taken for other content."""
        with self._lock:
            recent = self._recent.get(run_id)
        if recent is not None:
            if recent != content:
                raise HttpError(
                    409,
                    "idempotency_conflict",
                    f"key {run_id} was already used for a different order; "
                    "send a new Idempotency-Key for new content",
                )
            return {}
        existing = await asyncio.to_thread(self._stored_run, run_id)
        if existing is None:
            return None
        conflict = existing.start_conflict(workflow, stored)
        if conflict is not None:
            raise HttpError(409, "idempotency_conflict", conflict)
        self._remember(run_id, content)
        return {"status": existing.status.value}

    def _stored_run(self, run_id: str) -> RunState | None:
        try:
            storage = self.storage()
            if storage is None:
                return None
            state: RunState | None = storage.load_run(run_id)
            return state
        except Exception as exc:  # the consumer decides when the store cannot answer
            log.warning("http producer: cannot read the run store (%s); publishing", exc)
            return None

    def _remember(self, run_id: str, content: str) -> None:
        with self._lock:
            self._recent[run_id] = content
            self._recent.move_to_end(run_id)
            while len(self._recent) > RECENT_KEYS:
                self._recent.popitem(last=False)

    async def _health(self) -> tuple[int, dict[str, Any]]:
        info: dict[str, Any] = {"queue": self.queue, "workflow": self.workflow_name}
        try:
            self.workflow()
            publisher = self.publisher()
            await asyncio.wait_for(asyncio.to_thread(publisher.ping), 5.0)
        except Exception as exc:
            return 503, {"status": "unavailable", "reason": str(exc) or type(exc).__name__, **info}
        return 200, {"status": "ok", **info}


def _decode_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Header names in lower case; values as UTF-8 (what clients send for an
    ``Idempotency-Key`` with non-ASCII text), never garbled as Latin-1; a value that is not
    UTF-8 is a 400 naming the header."""
    headers = {}
    for key, value in raw:
        name = key.decode("latin-1").lower()
        try:
            headers[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "invalid_header", f"header {name!r} is not UTF-8") from None
    return headers


def _message_id(headers: dict[str, str], body: dict[str, Any]) -> str:
    key = headers.get("idempotency-key")
    if key is not None:
        key = key.strip()
        if not key or len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise HttpError(
                400,
                "invalid_header",
                f"Idempotency-Key must be 1 to {MAX_KEY_BYTES} bytes of UTF-8 text",
            )
        return key
    order_id = body.get("order_id")
    if isinstance(order_id, str) and order_id:
        key = f"order-{order_id}"
        if len(key.encode("utf-8")) <= MAX_KEY_BYTES:
            return key
        return "order-" + hashlib.sha256(order_id.encode("utf-8")).hexdigest()
    return str(uuid.uuid4())


async def _respond(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


app = ProducerApp()


def main(argv: list[str] | None = None) -> int:
    """``python -m fluxcelery.contrib.http_producer [--host H] [--port P]``."""
    import argparse

    import uvicorn

    p = argparse.ArgumentParser(prog="python -m fluxcelery.contrib.http_producer")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    if not is_loopback(args.host) and not os.environ.get(TOKEN_ENV):
        print(f"refusing to serve on {args.host} without {TOKEN_ENV}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
