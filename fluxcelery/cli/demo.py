"""The bundled demo: an order workflow run embedded, so ``fluxcelery demo`` needs no services.

It is the first thing a new user runs, so it shows the features that matter in one screen:
a step skipped by its ``when`` condition, a payment retried after a simulated gateway
timeout, a card declined with ``NonRetryableError`` and the stock reservation compensated.
The workflow is importable (``fluxcelery.cli.demo``) so that ``fluxcelery retry`` can continue
a demo run later.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console
from rich.status import Status

from ..core.builder import workflow
from ..core.context import StepContext
from ..core.errors import NonRetryableError
from ..core.policy import Backoff
from ..core.records import FluxResult
from ..engine import FluxEngine
from ..storage.sql import SqlStorage
from ..trace.event import TraceEvent
from ..trace.sinks import JsonFileTraceSink
from .render import bullet_lines, run_view

WORKFLOW = "demo-order"
DEFAULT_DB = "sqlite:///.flux/flux.db"
DEFAULT_TRACE_FILE = ".flux/trace.ndjson"
#: The demo gateway declines cards ending in 0002 unless this is set (a "fixed" card), so a
#: user can watch ``fluxcelery retry`` complete the declined order.
APPROVE_ENV = "FLUX_DEMO_APPROVE"
DECLINED_SUFFIX = "0002"


class Item(BaseModel):
    sku: str
    qty: int = Field(gt=0)
    price: float = Field(ge=0)


class OrderIn(BaseModel):
    order_id: str
    customer: str
    items: list[Item] = Field(min_length=1)
    coupon: str | None = None
    card: str


class GatewayTimeout(Exception):
    """A transient payment gateway failure: worth retrying."""


def _work(seconds: float) -> None:
    """Simulated latency, so that durations and the live progress look like real work."""
    time.sleep(seconds)


def validate_order(ctx: StepContext) -> dict[str, Any]:
    _work(0.02)
    order: OrderIn = ctx.input
    total = round(sum(i.qty * i.price for i in order.items), 2)
    ctx.data["total"] = total
    return {"items": len(order.items), "total": total}


def apply_coupon(ctx: StepContext) -> dict[str, Any]:
    _work(0.02)
    discount = round(ctx.data["total"] * 0.10, 2)
    ctx.data["total"] = round(ctx.data["total"] - discount, 2)
    return {"coupon": ctx.input.coupon, "discount": discount}


def reserve_stock(ctx: StepContext) -> dict[str, Any]:
    _work(0.05)
    reservation = f"RSV-{ctx.input.order_id}"
    ctx.data["reservation"] = reservation
    return {"reservation": reservation, "idempotency_key": ctx.idempotency_key}


def release_stock(ctx: StepContext) -> dict[str, Any]:
    _work(0.03)
    return {"released": ctx.data.get("reservation")}


def charge_payment(ctx: StepContext) -> dict[str, Any]:
    _work(0.08)
    if ctx.input.card.endswith(DECLINED_SUFFIX) and not os.environ.get(APPROVE_ENV):
        raise NonRetryableError("card declined by the issuer (simulated)")
    if ctx.attempt == 1:
        raise GatewayTimeout("payment gateway did not answer within 5 s (simulated)")
    return {"charge_id": f"ch_{ctx.input.order_id}", "amount": ctx.data["total"]}


def notify(ctx: StepContext) -> dict[str, Any]:
    _work(0.03)
    return {"sent_to": ctx.input.customer}


def has_coupon(ctx: StepContext) -> bool:
    return bool(ctx.input.coupon)


# Importing ``fluxcelery.cli.demo`` registers the workflow by name.
order_workflow = (
    workflow(WORKFLOW, version="1")
    .input(OrderIn)
    .step("validate-order", validate_order)
    .step("apply-coupon", apply_coupon, when=has_coupon)
    .commit("reserve-stock", reserve_stock, compensate=release_stock)
    .step(
        "charge-payment",
        charge_payment,
        retries=2,
        backoff=Backoff(base=0.2, factor=2.0, max=1.0, jitter=False),
    )
    .commit("notify", notify)
)

ORDERS: tuple[dict[str, Any], ...] = (
    {
        "order_id": "A-1001",
        "customer": "ann@example.com",
        "items": [{"sku": "BOOK-42", "qty": 2, "price": 12.5}],
        "card": "4242 4242 4242 4242",
    },
    {
        "order_id": "B-2002",
        "customer": "bob@example.com",
        "items": [{"sku": "LAMP-7", "qty": 1, "price": 40.0}],
        "coupon": "SPRING10",
        "card": "4000 0000 0000 0002",
    },
)
EXPECTED = ("completed", "rolled_back")


class Progress:
    """Live progress of the demo runs, fed by the ``step_start`` hook and the trace sink.

    Events arrive after each state change lands, so the line printed for an event is what
    is stored. On a terminal a spinner names the step running now.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status: Status | None = None
        self._lock = threading.Lock()

    def start(self, label: str) -> None:
        self.console.print(f"[bold]{label}[/bold]")
        if self.console.is_terminal:
            self.status = self.console.status("starting…")
            self.status.start()

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def step_start(self, step: str, ctx: StepContext) -> None:
        if self.status is not None:
            self.status.update(f"{step}: running (attempt {ctx.attempt})")

    def emit_many(self, events: list[TraceEvent]) -> None:
        with self._lock:
            for e in events:
                line = progress_line(e)
                if line:
                    self.console.print(line, highlight=False)

    def emit(self, event: TraceEvent) -> None:
        self.emit_many([event])


def progress_line(e: TraceEvent) -> str | None:
    """One console line (rich markup) for an event worth showing live; None to skip it."""
    from rich.markup import escape

    step = escape(e.step or "")
    ms = f"{e.duration_ms} ms" if e.duration_ms is not None else ""
    err = escape(e.error or "")
    meta = e.meta or {}
    if e.type == "step:complete":
        return f"  [green]✓[/green] {step:<15} completed  attempt {e.attempt}  {ms}"
    if e.type == "step:skipped":
        return f"  [dim]↷ {step:<15} skipped (when condition is false)[/dim]"
    if e.type == "step:retry":
        delay = meta.get("delay_s")
        return (
            f"  [yellow]↻[/yellow] {step:<15} attempt {e.attempt} failed: {err}; retry in {delay} s"
        )
    if e.type == "step:error":
        return f"  [red]✗[/red] {step:<15} failed: {err}"
    if e.type == "workflow:rollback_start":
        return f"  [yellow]⟲[/yellow] rolling back: compensating {', '.join(meta.get('plan', []))}"
    if e.type == "step:compensate":
        return f"  [yellow]↺[/yellow] {step:<15} compensated  {ms}"
    if e.type == "step:compensate_error":
        return f"  [red]✗[/red] {step:<15} compensation failed: {err}"
    if e.type == "workflow:complete":
        return f"  [bold green]→ completed[/bold green] in {ms}"
    if e.type == "workflow:error":
        return f"  [bold red]→ {escape(e.status or 'failed')}[/bold red] in {ms}: {err}"
    return None


@dataclass
class DemoOutcome:
    db_url: str
    trace_file: str
    results: list[FluxResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return tuple(r.status.value for r in self.results) == EXPECTED


def run_demo(
    db_url: str = DEFAULT_DB,
    trace_file: str = DEFAULT_TRACE_FILE,
    console: Console | None = None,
) -> DemoOutcome:
    """Run both demo orders in-process on ``db_url``; print live progress to ``console``."""

    Path(trace_file).parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(console) if console is not None else None
    sinks: list[Any] = [JsonFileTraceSink(trace_file)]
    hooks: dict[str, Any] = {}
    if progress is not None:
        sinks.append(progress)
        hooks["step_start"] = progress.step_start
    engine = FluxEngine(storage=SqlStorage(db_url), trace=sinks, on=hooks, default_timeout=10.0)
    outcome = DemoOutcome(db_url=db_url, trace_file=trace_file)
    try:
        for order in ORDERS:
            if progress is not None:
                label = f"Order {order['order_id']}" + (
                    f" (coupon {order['coupon']})" if order.get("coupon") else " (no coupon)"
                )
                progress.start(label)
            try:
                outcome.results.append(engine.execute(order_workflow, order))
            finally:
                if progress is not None:
                    progress.stop()
    finally:
        engine.close()
        for sink in sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
    return outcome


def print_summary(
    console: Console,
    details: list[dict[str, Any]],
    db_shown: str,
    db_flag: str,
    failed_id: str | None,
) -> None:
    """Each run as ``fluxcelery show`` prints it, then where to look next."""

    for detail in details:
        console.print()
        console.print(run_view(detail))
    console.print()
    console.print("Open the trace viewer on these runs (then http://127.0.0.1:4280):")
    viewer = [f"fluxcelery dev --db {db_shown}", f"fluxcelery dev --trace {DEFAULT_TRACE_FILE}"]
    console.print(bullet_lines(viewer), highlight=False)
    if failed_id:
        console.print(
            f"Retry the declined order (the demo gateway approves it once {APPROVE_ENV}=1 "
            "is set; without it, it is declined again):"
        )
        console.print(
            bullet_lines([f"{APPROVE_ENV}=1 fluxcelery {db_flag}retry {failed_id}"]),
            highlight=False,
        )
    console.print("Look around:")
    console.print(
        bullet_lines(
            [f"fluxcelery {db_flag}runs", f"fluxcelery {db_flag}trace list --type step:retry"]
        ),
        highlight=False,
    )
