"""What each message becomes, decided without I/O: the queue topology, the checks a message
must pass, its run id and the headers of its dead letter. Table-driven tests live in
tests/test_ingress.py."""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kombu import Exchange, Queue
from kombu.exceptions import OperationalError as KombuOperationalError

from ..core.errors import DispatchError, InvalidInput, StorageError
from ..core.jsoncodec import DEFAULT_MAX_BYTES, JsonTextError, canonical_json, parse_json_text

if TYPE_CHECKING:
    from ..core.builder import Workflow

DEFAULT_QUEUE = "orders.workflow"
DEFAULT_WORKFLOW = "order-fulfillment"
MAX_MESSAGE_BYTES = 1024 * 1024
#: A message may name another registered workflow with this header.
WORKFLOW_HEADER = "x-flux-workflow"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")
#: kombu's publish retry policy for dead letters and publishers.
RETRY_POLICY = {"max_retries": 10, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 5}


# -- topology -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Topology:
    """Exchange, queue and dead-letter names derived from one queue name."""

    queue: str

    @property
    def exchange(self) -> str:
        return self.queue

    @property
    def routing_key(self) -> str:
        return self.queue

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.queue}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dlq"

    def work_queue(self) -> Queue:
        return Queue(
            self.queue,
            Exchange(self.exchange, "direct", durable=True),
            routing_key=self.routing_key,
            durable=True,
            queue_arguments={
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-routing-key": self.dead_letter_queue,
            },
        )

    def dlq(self) -> Queue:
        return Queue(
            self.dead_letter_queue,
            Exchange(self.dead_letter_exchange, "direct", durable=True),
            routing_key=self.dead_letter_queue,
            durable=True,
        )

    def declare(self, channel: Any) -> None:
        """Declare both exchanges, both queues and their bindings (idempotent)."""
        self.dlq().bind(channel).declare()
        self.work_queue().bind(channel).declare()

    def delete(self, channel: Any) -> None:
        """Remove what ``declare`` created (tests and teardown)."""
        for name in (self.queue, self.dead_letter_queue):
            channel.queue_delete(name)
        for name in (self.exchange, self.dead_letter_exchange):
            channel.exchange_delete(name)


# -- the decision (pure) ----------------------------------------------------------------------
@dataclass(frozen=True)
class Accepted:
    """Start ``workflow`` with ``body`` as run ``run_id``."""

    run_id: str
    workflow: str
    body: dict[str, Any]
    #: The input as the run stores it (``Workflow.prepare_input``): what "the same
    #: content" is compared on when the run id exists already.
    stored: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class Rejected:
    """Dead-letter the message: ``code`` is stable, ``reason`` is for a person."""

    code: str
    reason: str
    workflow: str | None = None
    #: The input field at fault (``invalid_input``), when known.
    field: str | None = None


def derive_run_id(message_id: str | None, body: Mapping[str, Any]) -> str:
    """The run id of a message: its ``message_id`` when it is a usable id, a hash of it when
    it is not, else a hash of the canonical JSON body (a re-sent copy maps to the same run)."""
    if message_id:
        if _SAFE_ID.match(message_id):
            return message_id
        return "msg-" + hashlib.sha256(_utf8(message_id)).hexdigest()[:40]
    return "body-" + hashlib.sha256(_utf8(canonical_json(body))).hexdigest()[:40]


def _utf8(text: str) -> bytes:
    """UTF-8 of any text, lone surrogates included (a JSON ``"\\ud800"``, an id with an
    undecodable byte): the same bytes as ``encode()`` for every text that has them."""
    return text.encode("utf-8", "surrogatepass")


def printable(text: Any) -> str:
    """``text`` safe to log or put in a header: lone surrogates as ``\\udcff`` escapes."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def is_json_content_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def check_message(
    body: bytes,
    content_type: str | None,
    *,
    message_id: str | None,
    headers: Mapping[str, Any] | None,
    workflow: str,
    workflows: Mapping[str, Workflow],
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_input_bytes: int | None = DEFAULT_MAX_BYTES,
) -> Accepted | Rejected:
    """Decide what one message becomes. Never deserializes anything but JSON. Accepted
    means the engine will take the input as it is (``Workflow.prepare_input`` with the
    engine's ``max_input_bytes``): the HTTP producer answers with this same decision."""
    if not is_json_content_type(content_type):
        return Rejected(
            "unsupported_content_type",
            f"content type {content_type or '(none)'!r} is not accepted; "
            "publish JSON with content_type=application/json",
        )
    if len(body) > max_bytes:
        return Rejected(
            "payload_too_large", f"message is {len(body)} bytes, over the limit of {max_bytes}"
        )
    try:
        value = parse_json_text(body)
    except JsonTextError as exc:
        return Rejected("invalid_json", f"body is not valid JSON: {exc}")
    if not isinstance(value, dict):
        return Rejected("not_an_object", f"body must be a JSON object, got {type(value).__name__}")
    name = str((headers or {}).get(WORKFLOW_HEADER) or workflow)
    wf = workflows.get(name)
    if wf is None:
        # The count, not the names: the reason travels with the message to whoever reads the
        # dead-letter queue, and the name came from outside.
        return Rejected(
            "unknown_workflow",
            f"Unknown workflow: {printable(name)!r} ({len(workflows)} registered)",
            printable(name),
        )
    try:
        stored = wf.prepare_input(value, max_bytes=max_input_bytes)
    except InvalidInput as exc:
        return Rejected(InvalidInput.code, str(exc), name, exc.field)
    return Accepted(derive_run_id(message_id, value), name, value, stored)


def dead_letter_headers(
    original: Mapping[str, Any] | None,
    rejected: Rejected,
    *,
    queue: str,
    exchange: str | None,
    routing_key: str | None,
    message_id: str | None,
) -> dict[str, Any]:
    """The original headers plus why and where from (what an operator replays from)."""
    headers = replay_headers(original)
    headers.update(
        {
            "x-flux-error": rejected.reason[:2000],
            "x-flux-error-code": rejected.code,
            "x-flux-queue": queue,
            "x-flux-original-exchange": exchange or "",
            "x-flux-original-routing-key": routing_key or "",
            "x-flux-original-message-id": message_id or "",
            "x-flux-dead-lettered-at": datetime.now(UTC).isoformat(),
        }
    )
    if rejected.workflow:
        headers["x-flux-error-workflow"] = rejected.workflow
    return headers


#: Headers a dead letter gained on its way to the DLQ; a replay removes them.
DEAD_LETTER_HEADERS = (
    "x-flux-error",
    "x-flux-original-",
    "x-flux-queue",
    "x-flux-dead-",
    "x-death",
)


def replay_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headers a dead letter is replayed with: the original ones."""
    return {k: v for k, v in (headers or {}).items() if not k.startswith(DEAD_LETTER_HEADERS)}


def is_transient(exc: BaseException) -> bool:
    """An outage worth waiting out (database, broker, network), not a bad message or a bug."""
    import sqlalchemy.exc as sa_exc

    transient: tuple[type[BaseException], ...] = (
        StorageError,
        DispatchError,
        OSError,
        KombuOperationalError,
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        sa_exc.DisconnectionError,
        sa_exc.TimeoutError,
    )
    psycopg = sys.modules.get("psycopg")  # only loaded with a PostgreSQL URL
    if psycopg is not None:
        transient += (psycopg.OperationalError,)
    return isinstance(exc, transient)


def raw_body(message: Any) -> bytes:
    """The body as the publisher sent it: py-amqp hands over a ``str`` when it could decode
    the body with its ``content_encoding``, so encode it back (lossless)."""
    body = message.body
    if isinstance(body, str):
        if not body:  # py-amqp hands an empty body over as "" whatever its encoding
            return b""
        try:
            return body.encode(message.content_encoding or "utf-8")
        except (LookupError, UnicodeError):
            return body.encode("utf-8", "surrogatepass")
    return bytes(body or b"")
