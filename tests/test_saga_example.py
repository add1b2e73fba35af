"""The example workflows users copy from, run in this process on MemoryStorage and SQLite:
workflows/saga.py (flight, hotel and car booked in parallel, compensated on failure) and
the ``notify`` for_each of workflows/order.py (one notification per recipient)."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fluxcelery import FluxEngine, FluxResult, MemoryStorage, RunStatus, SqlStorage, StepStatus

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workflows import order as orders  # noqa: E402
from workflows import saga  # noqa: E402

R, S = RunStatus, StepStatus
TRIP = {"trip_id": "t-1", "traveler": "ann"}
ORDER = {
    "order_id": "o-1",
    "customer": "ann@example.com",
    "items": [{"sku": "MUG", "qty": 2}, {"sku": "TEA", "qty": 1}],
    "amount": "24.50",
}


@pytest.fixture(params=["memory", "sqlite"])
def engine(
    request: pytest.FixtureRequest, make_engine: Callable[..., FluxEngine], tmp_path: Path
) -> FluxEngine:
    if request.param == "memory":
        return make_engine(MemoryStorage())
    return make_engine(SqlStorage(f"sqlite:///{tmp_path / 'flux.db'}"))


class Together(saga.Supplier):
    """Lets no booking call through until all three branches are in one: a sold-out car
    then fails while the flight and the hotel are being booked (so they complete)."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier = threading.Barrier(len(saga.KINDS), timeout=10)

    def book(self, kind: str, item: str, key: str, *, sold_out: bool = False) -> str:
        self.barrier.wait()
        return super().book(kind, item, key, sold_out=sold_out)


@pytest.fixture
def supplier(monkeypatch: pytest.MonkeyPatch) -> Together:
    fresh = Together()
    monkeypatch.setattr(saga, "SUPPLIER", fresh)
    monkeypatch.setattr(saga, "LATENCY", 0.0)
    return fresh


def at_supplier(supplier: saga.Supplier, result: FluxResult) -> dict[str, str]:
    """kind -> the supplier's status of that booking, for the bookings this run made."""
    out = {}
    for kind in saga.KINDS:
        made = result.results.get(f"reserve-{kind}")
        if made:
            out[kind] = supplier.bookings[made["reference"]]["status"]
    return out


def outside_branches(engine: FluxEngine, run_id: str) -> list[tuple[str, str | None]]:
    """The run's events that are not a branch step's (their order between branches is
    the threads' to decide)."""
    return [
        (e.type, e.step) for e in engine.traces(run_id=run_id) if "branch" not in (e.meta or {})
    ]


def branch_events(engine: FluxEngine, run_id: str) -> Counter[tuple[str, str | None]]:
    return Counter(
        (e.type, e.step) for e in engine.traces(run_id=run_id) if "branch" in (e.meta or {})
    )


# -- the saga ----------------------------------------------------------------------------------
def test_all_three_are_booked_at_once_then_paid(engine: FluxEngine, supplier: Together) -> None:
    result = engine.execute(saga.trip, TRIP)

    # Completed means the three bookings met at the supplier's barrier: they ran at once.
    assert result.status == R.COMPLETED, result.error
    book = result.results["book"]
    assert set(book) == {"flight", "hotel", "car"}
    assert {kind: out["item"] for kind, out in book.items()} == {
        "flight": "LH400",
        "hotel": "Hotel Adlon",
        "car": "compact",
    }
    for kind in saga.KINDS:  # each branch step's output is also under its own name
        assert result.results[f"reserve-{kind}"] == book[kind]
        assert result.data[f"{kind}_booking"] == book[kind]["reference"]  # merged at the join
    assert result.results["pay"] == {
        "trip_id": "t-1",
        "itinerary": {kind: book[kind]["reference"] for kind in saga.KINDS},
    }
    assert at_supplier(supplier, result) == dict.fromkeys(saga.KINDS, "booked")
    rows = {s.name: (s.status, s.branch, s.parent) for s in result.steps}
    assert rows == {
        "book": (S.COMPLETED, None, None),
        "reserve-flight": (S.COMPLETED, "flight", 0),
        "reserve-hotel": (S.COMPLETED, "hotel", 0),
        "reserve-car": (S.COMPLETED, "car", 0),
        "pay": (S.COMPLETED, None, None),
    }
    assert outside_branches(engine, result.id) == [
        ("workflow:start", None),
        ("parallel:start", "book"),
        ("parallel:join", "book"),
        ("step:complete", "book"),
        ("step:start", "pay"),
        ("step:complete", "pay"),
        ("workflow:complete", None),
    ]
    assert branch_events(engine, result.id) == Counter(
        (t, f"reserve-{kind}") for kind in saga.KINDS for t in ("step:start", "step:complete")
    )


def test_a_sold_out_car_cancels_the_hotel_then_the_flight(
    engine: FluxEngine, supplier: Together
) -> None:
    result = engine.execute(saga.trip, {**TRIP, "fail_at": "car"})

    assert result.status == R.ROLLED_BACK
    assert result.error == "branch 'car' failed: SoldOut: no car available: compact is sold out"
    status = {s.name: s.status for s in result.steps}
    assert status == {
        "book": S.FAILED,
        "reserve-flight": S.COMPENSATED,
        "reserve-hotel": S.COMPENSATED,
        "reserve-car": S.FAILED,
        "pay": S.PENDING,
    }
    assert at_supplier(supplier, result) == {"flight": "cancelled", "hotel": "cancelled"}
    assert "book" not in result.results
    # The parallel step fails with the car; the running bookings finish; then the rollback,
    # latest branch first.
    assert outside_branches(engine, result.id) == [
        ("workflow:start", None),
        ("parallel:start", "book"),
        ("step:error", "book"),
        ("workflow:rollback_start", None),
        ("workflow:rollback_complete", None),
        ("workflow:error", None),
    ]
    assert [(e.type, e.step) for e in engine.traces(run_id=result.id)][-5:] == [
        ("workflow:rollback_start", None),
        ("step:compensate", "reserve-hotel"),
        ("step:compensate", "reserve-flight"),
        ("workflow:rollback_complete", None),
        ("workflow:error", None),
    ]
    start = next(e for e in engine.traces(run_id=result.id) if e.type == "workflow:rollback_start")
    assert (start.meta or {}).get("plan") == ["reserve-hotel", "reserve-flight"]


def test_a_declined_payment_cancels_car_hotel_flight(
    engine: FluxEngine, supplier: Together
) -> None:
    result = engine.execute(saga.trip, {**TRIP, "fail_at": "pay"})

    assert result.status == R.ROLLED_BACK
    assert result.error == "NonRetryableError: card of ann declined"
    assert at_supplier(supplier, result) == dict.fromkeys(saga.KINDS, "cancelled")
    compensated = [e.step for e in engine.traces(run_id=result.id, type="step:compensate")]
    assert compensated == ["reserve-car", "reserve-hotel", "reserve-flight"]


def test_no_car_skips_its_branch(engine: FluxEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(saga, "SUPPLIER", saga.Supplier())
    monkeypatch.setattr(saga, "LATENCY", 0.0)
    result = engine.execute(saga.trip, {**TRIP, "car": None})

    assert result.status == R.COMPLETED, result.error
    assert result.results["book"]["car"] is None
    assert set(result.results["pay"]["itinerary"]) == {"flight", "hotel"}
    assert result.steps[3].name == "reserve-car" and result.steps[3].status == S.SKIPPED


# -- the order's notifications -------------------------------------------------------------------
RECIPIENTS = [
    {"channel": "customer", "to": "ann@example.com"},
    {"channel": "warehouse", "to": orders.WAREHOUSE},
    {"channel": "accounting", "to": orders.ACCOUNTING},
]


def notify_items(result: FluxResult) -> list[Any]:
    return sorted(
        (s for s in result.steps if s.name == "notify" and s.item is not None),
        key=lambda s: s.item,
    )


def test_order_notifies_each_recipient_once(engine: FluxEngine) -> None:
    result = engine.execute(orders.order, ORDER)

    assert result.status == R.COMPLETED, result.error
    assert result.results["notify"] == RECIPIENTS  # item order
    items = notify_items(result)
    assert [(s.item, s.kind, s.status, s.attempts) for s in items] == [
        (i, "commit", S.COMPLETED, 1) for i in range(3)
    ]
    parallel = [e for e in engine.traces(run_id=result.id) if e.type == "parallel:start"]
    assert [(e.step, e.meta) for e in parallel] == [
        ("notify", {"items": 3, "max_concurrency": orders.NOTIFY_CONCURRENCY})
    ]
    storage = engine.storage
    if not isinstance(storage, SqlStorage):
        return
    # One outbox row per recipient, each under its item's own idempotency key.
    t = orders.notifications
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.c.idempotency_key, t.c.channel, t.c.recipient, t.c.message).where(
                t.c.run_id == result.id
            )
        ).all()
    assert sorted(row[:3] for row in rows) == [
        (f"{result.id}:notify:{i}", r["channel"], r["to"]) for i, r in enumerate(RECIPIENTS)
    ]
    messages = {row.channel: row.message for row in rows}
    assert messages["warehouse"] == "Order o-1: pick 2 x MUG, 1 x TEA."
    assert messages["accounting"] == f"Order o-1: charge {result.data['charge_id']}, 24.50 EUR."


def test_a_failing_notification_rolls_the_order_back_and_retry_sends_each_once(
    engine: FluxEngine,
) -> None:
    result = engine.execute(orders.order, {**ORDER, "force_fail": "notify"})

    assert result.status == R.ROLLED_BACK
    assert (result.error or "").startswith("item ")
    assert "ConnectionError: mail relay unavailable" in (result.error or "")
    compensated = [e.step for e in engine.traces(run_id=result.id, type="step:compensate")]
    assert compensated == ["charge-payment", "reserve-stock"]
    assert all(s.status != S.COMPLETED for s in notify_items(result))

    again = engine.retry(result.id).get(timeout=30)
    assert again.status == R.COMPLETED, again.error
    assert again.results["notify"] == RECIPIENTS
    assert again.data["pass"] == 2
    storage = engine.storage
    if isinstance(storage, SqlStorage):
        with storage.engine.connect() as conn:
            keys = conn.execute(
                sa.select(orders.notifications.c.idempotency_key).where(
                    orders.notifications.c.run_id == result.id
                )
            ).all()
        assert sorted(k for (k,) in keys) == [f"{result.id}:notify:{i}" for i in range(3)]
