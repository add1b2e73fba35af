"""The enterprise order flow: ``validate-order`` → ``reserve-stock`` → ``charge-payment`` →
``notify`` (one notification per recipient, a ``for_each``).

Orders usually arrive as AMQP messages (``fluxcelery consume``, see docs/enterprise.md); each
message becomes exactly one run.

- ``reserve-stock`` is a commit: its rows in ``orders_stock_reservations`` are written through
  ``ctx.session``, so they land in the same transaction as the step's ``completed`` record.
  When a later step fails for good, ``release-stock`` (its compensation) marks them released.
- ``charge-payment`` is retried with exponential backoff and has a per-attempt timeout; its
  compensation refunds the charge.
- ``notify`` is a ``for_each`` over the order's recipients (``recipients``: the customer, the
  warehouse, accounting), at most ``NOTIFY_CONCURRENCY`` at a time. Each item is a commit with
  its own idempotency key (``<run_id>:notify:<index>``) writing one row to
  ``orders_outbox`` through ``ctx.session``: one row per recipient, exactly once.

Demo knobs (in the order, or the environment of the workers):

- ``"force_fail": "charge"`` (or ``"notify"``: every item) makes every attempt of that step
  fail with a transient error during the first ``force_fail_passes`` passes (default 1) through the
  workflow: the retries show in the trace, then the stock reservation is released and the run
  ends ``rolled_back``. ``fluxcelery retry RUN_ID`` starts the next pass, which succeeds:
  the "outage" is over. ``"force_fail": "validate"`` or ``"reserve"`` are business rejections
  (non-retryable): the run ends ``failed``.
- ``fail_rate`` (0..1, or ``ORDERS_CHARGE_FAILURE_RATE``): the chance that one charge attempt
  fails transiently; the retries usually absorb it.
- ``ORDERS_CHARGE_RETRIES`` (3), ``ORDERS_CHARGE_TIMEOUT`` (10 s), ``ORDERS_BACKOFF_BASE``
  (1 s), ``ORDERS_BACKOFF_MAX`` (30 s): the charge step's policy. Tests set short backoffs.

With ``MemoryStorage`` there is no ``ctx.session``: the steps keep their records in
``ctx.data`` only.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.engine import Engine

from fluxcelery import Backoff, NonRetryableError, StepContext, workflow

WORKFLOW = "order-fulfillment"
STEPS = ("validate-order", "reserve-stock", "charge-payment", "notify")
_SHORT = {"validate": "validate-order", "reserve": "reserve-stock", "charge": "charge-payment"}


def _env_number(name: str, default: float, *, low: float = 0.0, high: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


# -- input --------------------------------------------------------------------------------
class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=64)
    qty: int = Field(gt=0, le=10_000)


class OrderIn(BaseModel):
    """An order as producers send it. Unknown keys are refused so that a typo
    (``"forcefail"``) is reported instead of ignored."""

    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    customer: str = Field(min_length=1, max_length=200)
    items: list[Item] = Field(min_length=1, max_length=100)
    amount: Decimal = Field(gt=0, le=Decimal("1000000"), max_digits=12, decimal_places=2)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    force_fail: Literal["validate-order", "reserve-stock", "charge-payment", "notify"] | None = None
    force_fail_passes: int = Field(default=1, ge=1, le=100)
    fail_rate: float | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator("force_fail", mode="before")
    @classmethod
    def _step_alias(cls, value: Any) -> Any:
        # "charge" is what people type; the step is "charge-payment".
        return _SHORT.get(value, value) if isinstance(value, str) else value


class PaymentGatewayError(ConnectionError):
    """A transient payment failure: retried with backoff."""


# -- side-effect tables (created on first use, dialect-neutral) ---------------------------
METADATA = sa.MetaData()

reservations = sa.Table(
    "orders_stock_reservations",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("pass_no", sa.Integer, nullable=False),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("released_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("run_id", "pass_no", "sku", name="uq_orders_reservation_line"),
)

#: One row per notification: a relay would send them (this example stops at the row). The
#: idempotency key is unique, so an item's row exists at most once.
notifications = sa.Table(
    "orders_outbox",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("idempotency_key", sa.String(100), nullable=False, unique=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("recipient", sa.String(200), nullable=False),
    sa.Column("message", sa.String(500), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

_ready: set[str] = set()
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def db_fingerprint(engine: Engine) -> str:
    """Names a database without its password, so that a compensation can find it again."""
    url = engine.url.render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def ensure_tables(engine: Engine) -> str:
    """Create the side-effect tables once per database and process; returns its fingerprint.

    Runs on its own connection, not the step's transaction: two workers racing to create a
    table must not fail a step, so a lost race is retried and then finds the table.
    """
    key = db_fingerprint(engine)
    if key in _ready:
        return key
    with _lock:
        for attempt in range(5):
            try:
                with engine.begin() as conn:
                    METADATA.create_all(conn, checkfirst=True)
                break
            except sa.exc.DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        _ready.add(key)
        _engines[key] = engine
    return key


def _session_engine(ctx: StepContext) -> Engine | None:
    if ctx.session is None:
        return None
    bind = ctx.session.get_bind()
    return bind.engine if isinstance(bind, sa.engine.Connection) else bind


def _database_for(fingerprint: str) -> Engine:
    """The database a reservation was written to. Compensators get no ``ctx.session``, so
    look it up: this process saw it, or it is the database the worker runs steps on."""
    engine = _engines.get(fingerprint)
    if engine is not None:
        return engine
    from fluxcelery import SqlStorage
    from fluxcelery.defaults import default_engine

    storage = default_engine().storage
    if isinstance(storage, SqlStorage) and db_fingerprint(storage.engine) == fingerprint:
        return storage.engine
    raise RuntimeError(
        f"the database of this reservation ({fingerprint}) is not the one this worker uses; "
        "run the compensation on a worker of that database (FLUX_DATABASE_URL)"
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _forced(ctx: StepContext, order: OrderIn) -> bool:
    """Whether the forced failure fires on this pass (a retry of the run is a new pass)."""
    return order.force_fail == ctx.step and ctx.data.get("pass", 1) <= order.force_fail_passes


# -- steps --------------------------------------------------------------------------------
def validate_order(ctx: StepContext) -> dict[str, Any]:
    """Business checks the schema cannot express; a rejection is final (non-retryable)."""
    order: OrderIn = ctx.input
    if order.force_fail == "validate-order":
        raise NonRetryableError(f"order {order.order_id} rejected by validation (forced)")
    skus = [item.sku for item in order.items]
    if len(set(skus)) != len(skus):
        raise NonRetryableError(f"order {order.order_id} lists a SKU twice: {sorted(skus)}")
    units = sum(item.qty for item in order.items)
    ctx.data["units"] = units
    return {"order_id": order.order_id, "lines": len(skus), "units": units}


def reserve_stock(ctx: StepContext) -> dict[str, Any]:
    """Reserve every line. Each pass through the workflow reserves anew (a retry after a
    rollback re-runs this commit because its effect was released)."""
    order: OrderIn = ctx.input
    if order.force_fail == "reserve-stock":
        raise NonRetryableError(f"out of stock for order {order.order_id} (forced)")
    pass_no = int(ctx.data.get("reservation", {}).get("pass", 0)) + 1
    ctx.data["pass"] = pass_no
    reservation: dict[str, Any] = {"id": ctx.idempotency_key, "pass": pass_no, "sql": False}
    engine = _session_engine(ctx)
    if engine is not None:
        reservation.update(sql=True, db=ensure_tables(engine))
        now = _now()
        ctx.session.execute(
            reservations.insert(),
            [
                {
                    "run_id": ctx.run_id,
                    "order_id": order.order_id,
                    "pass_no": pass_no,
                    "sku": item.sku,
                    "qty": item.qty,
                    "status": "reserved",
                    "reserved_at": now,
                }
                for item in order.items
            ],
        )
    ctx.data["reservation"] = reservation
    return {"reserved": len(order.items), "pass": pass_no}


def release_stock(ctx: StepContext) -> None:
    """Compensation of ``reserve-stock``: idempotent, so a retried compensation is safe."""
    reservation = ctx.data.get("reservation") or {}
    if not reservation.get("sql"):
        ctx.log.info("released reservation %s (kept in ctx.data only)", reservation.get("id"))
        return
    engine = _database_for(str(reservation["db"]))
    with engine.begin() as conn:
        released = conn.execute(
            reservations.update()
            .where(
                reservations.c.run_id == ctx.run_id,
                reservations.c.pass_no == int(reservation["pass"]),
                reservations.c.status == "reserved",
            )
            .values(status="released", released_at=_now())
        ).rowcount
    ctx.log.info("released %s reservation line(s) of pass %s", released, reservation["pass"])


def charge_payment(ctx: StepContext) -> dict[str, Any]:
    """Charge the customer; failures here are transient and retried with backoff."""
    order: OrderIn = ctx.input
    if _forced(ctx, order):
        raise PaymentGatewayError(
            f"payment gateway unavailable (forced failure, attempt {ctx.attempt})"
        )
    rate = (
        order.fail_rate
        if order.fail_rate is not None
        else _env_number("ORDERS_CHARGE_FAILURE_RATE", 0.0, high=1.0)
    )
    # Seeded per run, pass and attempt: a demo run fails the same way when replayed.
    draw = random.Random(f"{ctx.idempotency_key}:{ctx.data.get('pass', 1)}:{ctx.attempt}")
    if rate and draw.random() < rate:
        raise PaymentGatewayError(f"payment gateway timed out (attempt {ctx.attempt})")
    # One charge per pass: a retry after a refund must not reuse the refunded charge's key.
    key = f"{ctx.idempotency_key}:pass-{ctx.data.get('pass', 1)}"
    charge_id = "ch_" + hashlib.sha256(key.encode()).hexdigest()[:20]
    ctx.data["charge_id"] = charge_id
    return {"charge_id": charge_id, "amount": str(order.amount), "currency": order.currency}


def refund_payment(ctx: StepContext) -> None:
    """Compensation of ``charge-payment``: the charge id is the payment API's idempotency
    key, so refunding twice is harmless."""
    ctx.log.info("refunded %s", ctx.data.get("charge_id"))


#: Who else hears about every order, besides the customer.
WAREHOUSE = "warehouse@shop.example"
ACCOUNTING = "accounting@shop.example"
#: Notifications of one order in flight at once (the mail relay's limit per order).
NOTIFY_CONCURRENCY = 2


def recipients(ctx: StepContext) -> list[dict[str, str]]:
    """The items of ``notify``, evaluated once when it fans out: the customer gets a
    confirmation, the warehouse a pick list, accounting the charge."""
    order: OrderIn = ctx.input
    return [
        {"channel": "customer", "to": order.customer},
        {"channel": "warehouse", "to": WAREHOUSE},
        {"channel": "accounting", "to": ACCOUNTING},
    ]


def _message(ctx: StepContext, order: OrderIn, channel: str) -> str:
    if channel == "warehouse":
        lines = ", ".join(f"{item.qty} x {item.sku}" for item in order.items)
        return f"Order {order.order_id}: pick {lines}."
    if channel == "accounting":
        charge = ctx.data.get("charge_id")
        return f"Order {order.order_id}: charge {charge}, {order.amount} {order.currency}."
    return f"Order {order.order_id}: {order.amount} {order.currency} charged, shipping soon."


def notify(ctx: StepContext) -> dict[str, Any]:
    """Notify one recipient (``ctx.item``); the outbox row commits with the item
    (exactly once), keyed by the item's own ``ctx.idempotency_key``."""
    order: OrderIn = ctx.input
    if _forced(ctx, order):
        raise ConnectionError(f"mail relay unavailable (forced failure, attempt {ctx.attempt})")
    channel, to = ctx.item["channel"], ctx.item["to"]
    message = _message(ctx, order, channel)
    engine = _session_engine(ctx)
    if engine is not None:
        ensure_tables(engine)
        ctx.session.execute(
            notifications.insert().values(
                idempotency_key=ctx.idempotency_key,
                run_id=ctx.run_id,
                order_id=order.order_id,
                channel=channel,
                recipient=to,
                message=message,
                created_at=_now(),
            )
        )
    # No ctx.data write: items setting the same key would conflict at the join. The
    # outputs are ctx.results["notify"], in recipient order.
    return {"channel": channel, "to": to}


CHARGE_BACKOFF = Backoff(
    base=_env_number("ORDERS_BACKOFF_BASE", 1.0),
    factor=2.0,
    max=_env_number("ORDERS_BACKOFF_MAX", 30.0),
    jitter=True,
)

order = (
    workflow(WORKFLOW, version="2")
    .input(OrderIn)
    .step("validate-order", validate_order, retries=0)
    .commit("reserve-stock", reserve_stock, compensate=release_stock, timeout=15)
    .step(
        "charge-payment",
        charge_payment,
        retries=int(_env_number("ORDERS_CHARGE_RETRIES", 3, high=20)),
        timeout=_env_number("ORDERS_CHARGE_TIMEOUT", 10.0, low=0.1),
        backoff=CHARGE_BACKOFF,
        compensate=refund_payment,
    )
    .for_each(
        "notify",
        notify,
        items=recipients,
        max_concurrency=NOTIFY_CONCURRENCY,
        commit=True,
        timeout=15,
        backoff=CHARGE_BACKOFF,
    )
)
