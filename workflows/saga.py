"""Travel booking as a saga with parallel branches: flight, hotel and car are booked at the
same time, then the traveler pays.

::

    book ─┬─ flight: reserve-flight ─┐
          ├─ hotel:  reserve-hotel  ─┼─▶ pay
          └─ car:    reserve-car    ─┘

What it shows:

- ``.parallel`` with three branches; each booking is a commit (it lands once) whose
  compensation cancels it. ``ctx.results["book"]`` is ``{"flight": ..., "hotel": ...,
  "car": ...}``, which ``pay`` reads.
- Each branch writes its own ``ctx.data`` key (``flight_booking``, ...). Two branches setting
  the same key would fail ``book`` with ``DataConflict``.
- Any failure compensates the bookings that were made. A sold-out car stops the branches
  not yet started; a booking still running finishes first; then the completed bookings are
  cancelled, latest branch first: the hotel, then the flight. A declined payment cancels
  all three (car, hotel, flight). The run ends ``rolled_back``.
- The supplier is simulated (``SUPPLIER``, in this process). Its calls pass
  ``ctx.idempotency_key``, so repeating one (after a crash, or when a retry of the run
  books again) books nothing twice. Replace it with your suppliers' clients.

Run it from the repository root, in this process (``--local``)::

    fluxcelery --workflows workflows.saga run trip-booking --local \\
        --input '{"trip_id": "t-1", "traveler": "ann"}'
    fluxcelery --workflows workflows.saga run trip-booking --local \\
        --input '{"trip_id": "t-2", "traveler": "bob", "fail_at": "car"}'
    fluxcelery show <run id>

``"fail_at"`` is ``"flight"``, ``"hotel"``, ``"car"`` (that supplier is sold out:
``SoldOut``, not retried) or ``"pay"`` (the card is declined). ``"car": null`` books no car:
that branch is skipped. Without ``--local`` the run goes to workers started with
``FLUX_WORKFLOWS=workflows.saga`` (there each worker process has its own ``SUPPLIER``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fluxcelery import NonRetryableError, StepContext, branch, workflow

WORKFLOW = "trip-booking"
KINDS = ("flight", "hotel", "car")
#: Simulated supplier latency per call (seconds): enough to see the branches overlap.
LATENCY = 0.05


class TripIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trip_id: str = Field(min_length=1, max_length=48)
    traveler: str = Field(min_length=1, max_length=200)
    flight: str = "LH400"
    hotel: str = "Hotel Adlon"
    car: str | None = "compact"
    fail_at: Literal["flight", "hotel", "car", "pay"] | None = None


class SoldOut(NonRetryableError):
    """The supplier has nothing left: retrying will not help, so the step fails at once."""


class Supplier:
    """A simulated booking API. A booking is keyed by the caller's idempotency key: booking
    again with a key sets that reservation ``booked`` again and returns its reference;
    cancelling twice is harmless. So a step that repeats a call (after a crash, or a retry of
    the run after a rollback) never books twice. Thread-safe: branches run on threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: reference -> {"kind", "item", "status"} ("booked" or "cancelled")
        self.bookings: dict[str, dict[str, Any]] = {}

    def book(self, kind: str, item: str, key: str, *, sold_out: bool = False) -> str:
        time.sleep(LATENCY)
        if sold_out:  # the simulation's knob (``fail_at``)
            raise SoldOut(f"no {kind} available: {item} is sold out")
        ref = f"{kind.upper()}-" + hashlib.sha256(key.encode()).hexdigest()[:10]
        with self._lock:
            self.bookings[ref] = {"kind": kind, "item": item, "status": "booked"}
        return ref

    def cancel(self, ref: str) -> None:
        time.sleep(LATENCY)
        with self._lock:
            if ref in self.bookings:
                self.bookings[ref]["status"] = "cancelled"


SUPPLIER = Supplier()


def _reserve(kind: str) -> Any:
    def reserve(ctx: StepContext) -> dict[str, Any]:
        trip: TripIn = ctx.input
        item = getattr(trip, kind)
        ref = SUPPLIER.book(kind, item, ctx.idempotency_key, sold_out=trip.fail_at == kind)
        ctx.data[f"{kind}_booking"] = ref  # this branch's own key
        return {"reference": ref, "item": item}

    reserve.__name__ = f"reserve_{kind}"
    return reserve


def _cancel(kind: str) -> Any:
    def cancel(ctx: StepContext) -> None:
        # A compensator sees its branch's ctx.data, so the reference is there.
        ref = ctx.data.get(f"{kind}_booking")
        if ref:
            SUPPLIER.cancel(ref)
        ctx.log.info("cancelled %s booking %s", kind, ref)

    cancel.__name__ = f"cancel_{kind}"
    return cancel


def pay(ctx: StepContext) -> dict[str, Any]:
    """Charge the traveler for the bookings and issue the itinerary."""
    trip: TripIn = ctx.input
    if trip.fail_at == "pay":
        raise NonRetryableError(f"card of {trip.traveler} declined")
    booked = {kind: out["reference"] for kind, out in ctx.results["book"].items() if out}
    return {"trip_id": trip.trip_id, "itinerary": booked}


trip = (
    workflow(WORKFLOW, version="2")
    .input(TripIn)
    .parallel(
        "book",
        branch("flight").commit("reserve-flight", _reserve("flight"), compensate=_cancel("flight")),
        branch("hotel").commit("reserve-hotel", _reserve("hotel"), compensate=_cancel("hotel")),
        branch("car").commit(
            "reserve-car",
            _reserve("car"),
            compensate=_cancel("car"),
            when=lambda ctx: ctx.input.car is not None,
        ),
    )
    .step("pay", pay)
)
