"""Travel booking as a saga: ``book-flight`` → ``book-hotel`` → ``book-car`` → ``confirm``.

Each booking is a commit against a (simulated) supplier with its own cancellation. When a
later booking fails for good, the earlier ones are cancelled in reverse order and the run ends
``rolled_back``. Send ``"fail_at": "car"`` (or ``"hotel"``) to watch it happen::

    fluxcelery run trip-booking --input '{"trip_id": "t-1", "traveler": "ann", "fail_at": "car"}'
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fluxcelery import NonRetryableError, StepContext, workflow

WORKFLOW = "trip-booking"


class TripIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trip_id: str = Field(min_length=1, max_length=48)
    traveler: str = Field(min_length=1, max_length=200)
    flight: str = "LH400"
    hotel: str = "Hotel Adlon"
    car: str | None = "compact"
    fail_at: Literal["flight", "hotel", "car"] | None = None


def _reference(ctx: StepContext, kind: str) -> str:
    # The idempotency key makes the supplier call safe to repeat after a crash.
    return f"{kind.upper()}-" + hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:10]


def _book(kind: str) -> Any:
    def book(ctx: StepContext) -> dict[str, Any]:
        trip: TripIn = ctx.input
        if trip.fail_at == kind:
            raise NonRetryableError(f"no {kind} available for trip {trip.trip_id}")
        ref = _reference(ctx, kind)
        ctx.data.setdefault("bookings", {})[kind] = ref
        return {"reference": ref, "item": getattr(trip, kind)}

    book.__name__ = f"book_{kind}"
    return book


def _cancel(kind: str) -> Any:
    def cancel(ctx: StepContext) -> None:
        ref = ctx.data.get("bookings", {}).get(kind)
        ctx.log.info("cancelled %s booking %s", kind, ref)

    cancel.__name__ = f"cancel_{kind}"
    return cancel


def confirm(ctx: StepContext) -> dict[str, Any]:
    return {"itinerary": ctx.data.get("bookings", {})}


trip = (
    workflow(WORKFLOW, version="1")
    .input(TripIn)
    .commit("book-flight", _book("flight"), compensate=_cancel("flight"))
    .commit("book-hotel", _book("hotel"), compensate=_cancel("hotel"))
    .commit(
        "book-car",
        _book("car"),
        compensate=_cancel("car"),
        when=lambda ctx: ctx.input.car is not None,
    )
    .step("confirm", confirm)
)
