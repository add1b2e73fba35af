"""The end-to-end check behind ``scripts/verify.py`` (stage ``e2e``).

Publishes orders and malformed messages to a running consumer, then checks what the workers
made of them, reading runs and traces from the database the deployment uses.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(HERE), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

TERMINAL = {"completed", "rolled_back", "failed", "cancelled"}


def delete_queues(broker_url: str, queues: list[str], exchanges: tuple[str, ...] = ()) -> None:
    from kombu import Connection

    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for name in queues:
            channel.queue_delete(name)
        for name in exchanges:
            channel.exchange_delete(name)


def drain_dead_letters(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """Take every message off the dead-letter queue: headers and message id of each."""
    from kombu import Connection

    out: list[dict[str, Any]] = []
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        while True:
            msg = channel.basic_get(queue, no_ack=True)
            if msg is None:
                return out
            out.append(
                {"message_id": msg.properties.get("message_id"), "headers": dict(msg.headers or {})}
            )


class EndToEnd:
    def __init__(
        self,
        *,
        broker_url: str,
        database_url: str,
        ingress_queue: str,
        step_queue: str,
        orders: int,
        fail_ratio: float,
        malformed: int,
        timeout: float,
    ) -> None:
        self.broker_url = broker_url
        self.database_url = database_url
        self.ingress_queue = ingress_queue
        self.step_queue = step_queue
        self.orders = orders
        self.fail_ratio = fail_ratio
        self.malformed = malformed
        self.timeout = timeout
        self.engine: Any = None

    def _engine(self) -> Any:
        from fluxcelery import FluxEngine, SqlStorage
        from fluxcelery.celery.app import build_app
        from fluxcelery.settings import Settings
        from workflows.order import order

        settings = Settings(
            broker_url=self.broker_url,
            database_url=self.database_url,
            workflows=("workflows.order",),
            celery={"task_default_queue": self.step_queue},
        )
        engine = FluxEngine(storage=SqlStorage(self.database_url), app=build_app(settings))
        engine.register(order)
        return engine

    def run(self, alive: Callable[[], bool]) -> str:
        import publish_order as po

        started = time.monotonic()
        prefix = f"v{uuid.uuid4().hex[:8]}"
        orders = po.build_orders(self.orders, prefix=prefix, fail_ratio=self.fail_ratio)
        bad = po.malformed_messages(self.malformed, prefix=prefix)
        # Two orders are sent twice: each must still become one run.
        po.publish_amqp(orders + bad + orders[:2], self.broker_url, self.ingress_queue, rate=0)
        self.engine = engine = self._engine()
        ids = [m.message_id for m in orders]
        states = self._wait(engine, ids, alive)

        forced = {m.message_id for m in orders if m.kind == "forced"}
        status = Counter(s.status.value for s in states.values())
        wrong = [
            f"{rid}: {s.status.value}"
            for rid, s in states.items()
            if s.status.value != ("rolled_back" if rid in forced else "completed")
        ]
        assert not wrong, f"unexpected run statuses: {wrong[:5]}"
        runs = [
            r
            for r in engine.list(workflow="order-fulfillment", limit=None)
            if str((r.input or {}).get("order_id", "")).startswith(prefix + "-")
        ]
        assert len(runs) == len(orders), f"{len(orders)} orders made {len(runs)} runs"
        retries = compensations = 0
        for rid in forced:
            events = engine.traces(run_id=rid)
            r = sum(1 for e in events if e.type == "step:retry" and e.step == "charge-payment")
            c = [e.step for e in events if e.type == "step:compensate"]
            assert r >= 1, f"{rid}: no step:retry for charge-payment in its trace"
            assert c == ["reserve-stock"], f"{rid}: compensations {c}, expected reserve-stock"
            assert events[-1].type == "workflow:error" and events[-1].status == "rolled_back"
            retries += r
            compensations += len(c)
        retried = ""
        if forced:
            rid = sorted(forced)[0]
            result = engine.retry(rid).get(timeout=self.timeout)
            assert result.status.value == "completed", f"retry of {rid} ended {result.status}"
            retried = f"; retry of {rid} → completed"
        dead = drain_dead_letters(self.broker_url, f"{self.ingress_queue}.dlq")
        codes = Counter(d["headers"].get("x-flux-error-code") for d in dead)
        expected = Counter(po.EXPECTED_CODES[m.kind] for m in bad)
        assert codes == expected, f"dead letters {dict(codes)}, expected {dict(expected)}"
        assert all(d["headers"].get("x-flux-error") for d in dead), "a dead letter has no reason"
        return (
            f"{len(orders)} orders → {len(runs)} runs ({status['completed']} completed, "
            f"{status['rolled_back']} rolled back; {retries} charge retries, {compensations} "
            f"compensations), {len(dead)} dead-lettered{retried}; "
            f"{time.monotonic() - started:.1f}s"
        )

    def _wait(self, engine: Any, ids: list[str], alive: Callable[[], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        states: dict[str, Any] = {}
        while True:
            for rid in ids:
                if rid not in states or states[rid].status.value not in TERMINAL:
                    state = engine.get(rid)
                    if state is not None:
                        states[rid] = state
            done = [rid for rid, s in states.items() if s.status.value in TERMINAL]
            if len(done) == len(ids):
                return states
            if not alive():
                raise AssertionError("the consumer exited early")
            if time.monotonic() > deadline:
                missing = [rid for rid in ids if rid not in states]
                pending = [f"{r}: {s.status.value}" for r, s in states.items() if r not in done]
                raise AssertionError(
                    f"after {self.timeout:.0f}s {len(done)}/{len(ids)} runs finished; "
                    f"no run for {missing[:5]}; unfinished {pending[:5]}"
                )
            time.sleep(0.5)

    def cleanup(self) -> None:
        q = self.ingress_queue
        try:
            delete_queues(self.broker_url, [q, f"{q}.dlq"], (q, f"{q}.dlx"))
        except Exception as exc:
            print(f"cleanup: could not delete queues of {q}: {exc}", file=sys.stderr)
        if self.engine is not None:
            self.engine.close()
