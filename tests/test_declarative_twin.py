"""``workflows/order.yaml`` is ``workflows/order.py`` written as a workflow file: the same
definition (hash and description) and, run in this process, the same outcome: step
statuses, outputs, data and trace events, on the success path and on the failure paths
(a charge that keeps failing releases the stock: compensation; a rejected order)."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fluxcelery import FluxEngine, FluxResult, MemoryStorage, RunStatus, Workflow, load_workflow
from fluxcelery.core import builder

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workflows import order as orders  # noqa: E402

TWIN = ROOT / "workflows" / "order.yaml"
ORDER = {
    "order_id": "o-1",
    "customer": "ann@example.com",
    "items": [{"sku": "MUG", "qty": 2}, {"sku": "TEA", "qty": 1}],
    "amount": "24.50",
}


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    saved = dict(builder._REGISTRY)
    yield
    builder._REGISTRY.clear()
    builder._REGISTRY.update(saved)


@pytest.fixture
def python_order(monkeypatch: pytest.MonkeyPatch) -> Workflow:
    """workflows/order.py as built with no ``ORDERS_*`` variable (the twin keeps the
    defaults): imported afresh, since the process may have imported it under other values
    (bench/chaos.py, which the chaos tests import, sets short backoffs)."""
    for var in [v for v in os.environ if v.startswith("ORDERS_")]:
        monkeypatch.delenv(var)
    if orders.order.describe() == _fresh_order().describe():
        return orders.order
    return _fresh_order()


def _fresh_order() -> Workflow:
    spec = importlib.util.spec_from_file_location("_order_defaults", ROOT / "workflows/order.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the input model's annotations there
    spec.loader.exec_module(module)
    wf: Workflow = module.order
    return wf


@pytest.fixture
def twin(python_order: Workflow) -> Workflow:
    return load_workflow(TWIN)


def test_same_definition_hash_and_description(twin: Workflow, python_order: Workflow) -> None:
    assert twin.definition_hash == python_order.definition_hash
    assert twin.describe() == python_order.describe()
    # The twin names workflows/order.py's handlers by import path.
    assert [s.handler for s in twin.steps] == [s.handler for s in orders.order.steps]


def outcome(engine: FluxEngine, result: FluxResult) -> dict[str, Any]:
    """What a run did, in a form that does not depend on thread timing: the events of
    for_each items are kept in order per item, the others in order overall."""
    per_item: dict[int, list[tuple[str, str | None, str | None]]] = defaultdict(list)
    others = []
    for e in engine.traces(run_id=result.id):
        key = (e.type, e.step, e.status)
        item = (e.meta or {}).get("item")
        if item is None:
            others.append(key)
        else:
            per_item[item].append(key)
    return {
        "status": result.status,
        "error": result.error,
        "steps": [(s.name, s.kind, s.status, s.attempts, s.item, s.parent) for s in result.steps],
        "results": result.results,
        "data": result.data,
        "events": others,
        "item_events": dict(per_item),
    }


@pytest.mark.parametrize(
    ("given", "status", "compensated"),
    [
        (ORDER, RunStatus.COMPLETED, []),
        ({**ORDER, "force_fail": "charge"}, RunStatus.ROLLED_BACK, ["reserve-stock"]),
        ({**ORDER, "force_fail": "validate"}, RunStatus.FAILED, []),
    ],
    ids=["completed", "charge-fails-stock-released", "rejected"],
)
def test_both_run_the_same(
    twin: Workflow,
    python_order: Workflow,
    make_engine: Callable[..., FluxEngine],
    given: dict[str, Any],
    status: RunStatus,
    compensated: list[str],
) -> None:
    run_id = str(uuid.uuid4())  # the same id: charge ids and idempotency keys derive from it
    python_engine, yaml_engine = make_engine(MemoryStorage()), make_engine(MemoryStorage())
    from_python = python_engine.execute(python_order, given, run_id=run_id)
    from_yaml = yaml_engine.execute(twin, given, run_id=run_id)

    assert from_python.status == status, from_python.error
    mine, theirs = outcome(yaml_engine, from_yaml), outcome(python_engine, from_python)
    assert mine == theirs
    steps = [e[1] for e in mine["events"] if e[0] == "step:compensate"]
    assert steps == compensated
    if status == RunStatus.COMPLETED:
        assert len(mine["item_events"]) == 3  # one notification per recipient
