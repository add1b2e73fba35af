#!/usr/bin/env python3
"""Publish demo orders to the ingress queue (``orders.workflow``) and print their message ids.

    python scripts/publish_order.py --count 20 --fail-ratio 0.1 --malformed 5
    python scripts/publish_order.py --count 1 --force-fail charge
    python scripts/publish_order.py --count 5 --http http://127.0.0.1:8000

Each order's message id is ``order-<order_id>``, which the consumer uses as the run id:
``fluxcelery show order-<order_id>``. ``--fail-ratio`` marks that share of the orders with
``"force_fail": <--force-fail step>`` (default ``charge``): their charge retries, then the
stock reservation is released and the run ends ``rolled_back``. ``--malformed N`` adds N
messages the consumer must dead-letter (bad JSON, pickle, missing field, wrong type, oversize,
not an object, text/plain).

Prints one line per message, ``<message_id> <kind>``, on stdout (``--json`` for one JSON
document); a summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
MALFORMED_KINDS = (
    "bad-json",
    "pickle",
    "missing-field",
    "wrong-type",
    "oversize",
    "not-object",
    "text-plain",
)
#: The ``x-flux-error-code`` the consumer gives each malformed kind.
EXPECTED_CODES = {
    "bad-json": "invalid_json",
    "pickle": "unsupported_content_type",
    "missing-field": "invalid_input",
    "wrong-type": "invalid_input",
    "oversize": "payload_too_large",
    "not-object": "not_an_object",
    "text-plain": "unsupported_content_type",
}
SKUS = ("SKU-RED-S", "SKU-RED-M", "SKU-BLUE-L", "SKU-MUG", "SKU-CAP")


@dataclass(frozen=True)
class Message:
    """One message to publish: ``kind`` is ``order``, ``forced`` or a malformed kind."""

    message_id: str
    kind: str
    body: bytes
    content_type: str
    order: dict[str, Any] | None = None


def make_order(order_id: str, i: int, force_fail: str | None = None) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {"sku": SKUS[(i + k) % len(SKUS)], "qty": 1 + (i + k) % 3} for k in range(1 + i % 3)
    ]
    order: dict[str, Any] = {
        "order_id": order_id,
        "customer": f"customer-{i % 17}@example.com",
        "items": items,
        "amount": round(9.5 + 3.25 * sum(item["qty"] for item in items), 2),
        "currency": "EUR",
    }
    if force_fail:
        order["force_fail"] = force_fail
    return order


def forced_indexes(count: int, ratio: float) -> set[int]:
    """Which of ``count`` orders get a forced failure: ``round(count * ratio)`` of them,
    spread evenly (order ``i`` when the running share crosses an integer)."""
    if ratio <= 0:
        return set()
    return {i for i in range(count) if int((i + 1) * ratio + 1e-9) > int(i * ratio + 1e-9)}


def build_orders(
    count: int, *, prefix: str, fail_ratio: float = 0.0, force_fail: str = "charge"
) -> list[Message]:
    forced = forced_indexes(count, fail_ratio)
    out = []
    for i in range(count):
        order_id = f"{prefix}-{i + 1:05d}"
        order = make_order(order_id, i, force_fail if i in forced else None)
        out.append(
            Message(
                message_id=f"order-{order_id}",
                kind="forced" if i in forced else "order",
                body=json.dumps(order).encode(),
                content_type="application/json",
                order=order,
            )
        )
    return out


def malformed_messages(n: int, *, prefix: str, max_bytes: int = 1024 * 1024) -> list[Message]:
    """``n`` messages the consumer must dead-letter, cycling through ``MALFORMED_KINDS``."""
    out = []
    for i in range(n):
        kind = MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
        good = make_order(f"{prefix}-bad-{i + 1:03d}", i)
        content_type = "application/json"
        if kind == "bad-json":
            body = b'{"order_id": "' + good["order_id"].encode() + b'", "items": [,]'
        elif kind == "pickle":
            body = pickle.dumps(good)
            content_type = "application/x-python-serialize"
        elif kind == "missing-field":
            body = json.dumps({k: v for k, v in good.items() if k != "customer"}).encode()
        elif kind == "wrong-type":
            good["items"][0]["qty"] = "many"
            body = json.dumps(good).encode()
        elif kind == "oversize":
            body = json.dumps({**good, "note": "x" * (max_bytes + 1)}).encode()
        elif kind == "not-object":
            body = json.dumps([good]).encode()
        else:  # text-plain
            body = json.dumps(good).encode()
            content_type = "text/plain"
        out.append(Message(f"bad-{prefix}-{i + 1:03d}-{kind}", kind, body, content_type))
    return out


def publish_amqp(messages: list[Message], broker_url: str, queue: str, rate: float) -> None:
    from fluxcelery.ingress import Publisher

    with Publisher(broker_url, queue) as publisher:
        for i, msg in enumerate(messages):
            publisher.publish_raw(
                msg.body,
                content_type=msg.content_type,
                content_encoding="utf-8" if msg.content_type.endswith("json") else "binary",
                message_id=msg.message_id,
            )
            _pace(i, rate)


def publish_http(messages: list[Message], base_url: str, rate: float) -> list[int]:
    """POST each message to ``<base_url>/orders`` (with ``FLUX_PRODUCER_TOKEN`` as the bearer
    token when it is set); returns the HTTP statuses."""
    statuses = []
    token = os.environ.get("FLUX_PRODUCER_TOKEN")
    for i, msg in enumerate(messages):
        headers = {"Content-Type": msg.content_type, "Idempotency-Key": msg.message_id}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            base_url.rstrip("/") + "/orders", data=msg.body, method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                statuses.append(resp.status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
            print(f"{msg.message_id}: HTTP {exc.code} {exc.read().decode()[:300]}", file=sys.stderr)
        _pace(i, rate)
    return statuses


_t0 = time.monotonic()


def _pace(i: int, rate: float) -> None:
    if rate > 0:
        delay = _t0 + (i + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=10, help="orders to publish (default 10)")
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (0 = no limit)")
    p.add_argument("--fail-ratio", type=float, default=0.0, help="share of forced failures")
    p.add_argument(
        "--force-fail",
        default=None,
        metavar="STEP",
        help="step the forced failures hit (charge, notify, validate, reserve); "
        "alone, it forces every order",
    )
    p.add_argument("--malformed", type=int, default=0, help="malformed messages to add")
    p.add_argument(
        "--broker",
        default=os.environ.get("FLUX_INGRESS_URL")
        or os.environ.get("FLUX_BROKER_URL")
        or DEFAULT_BROKER,
    )
    p.add_argument("--queue", default=os.environ.get("FLUX_INGRESS_QUEUE", "orders.workflow"))
    p.add_argument("--http", default=None, metavar="URL", help="POST to URL/orders instead")
    p.add_argument("--prefix", default=None, help="order id prefix (default: random)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    if args.count < 0 or args.malformed < 0 or not 0 <= args.fail_ratio <= 1:
        p.error("--count and --malformed must be >= 0 and --fail-ratio within 0..1")
    ratio = args.fail_ratio or (1.0 if args.force_fail else 0.0)
    prefix = args.prefix or f"o{uuid.uuid4().hex[:6]}"
    messages = build_orders(
        args.count, prefix=prefix, fail_ratio=ratio, force_fail=args.force_fail or "charge"
    )
    messages += malformed_messages(args.malformed, prefix=prefix)
    started = time.monotonic()
    try:
        if args.http:
            statuses = publish_http(messages, args.http, args.rate)
        else:
            publish_amqp(messages, args.broker, args.queue, args.rate)
            statuses = []
    except Exception as exc:
        print(f"publish failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        doc = {
            "queue": args.queue,
            "messages": [{"message_id": m.message_id, "kind": m.kind} for m in messages],
        }
        print(json.dumps(doc, indent=2))
    else:
        for m in messages:
            print(f"{m.message_id} {m.kind}")
    forced = sum(1 for m in messages if m.kind == "forced")
    target = args.http or f"queue {args.queue}"
    print(
        f"published {len(messages)} messages to {target} in {time.monotonic() - started:.2f}s: "
        f"{args.count} orders ({forced} forced to fail), {args.malformed} malformed",
        file=sys.stderr,
    )
    return 1 if any(s >= 500 for s in statuses) else 0


if __name__ == "__main__":
    raise SystemExit(main())
