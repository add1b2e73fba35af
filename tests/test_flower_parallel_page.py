"""The Flower run page's steps table for parallel branches and for_each items (SPEC section
11), read as HTML: rows in tree order with their branch, item and parent, names from user
code escaped (a branch or a group named like markup), many items folded behind a
``<details>`` that opens them, and the JSON API unchanged (the flat stored rows)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flower")

from parallel_trip import EMAILS, many_emails, trip
from test_flower_tab import NO_BROKER, Client, serve

from fluxcelery import FluxEngine, SqlStorage, branch, workflow
from fluxcelery.celery.app import build_app
from fluxcelery.settings import Settings

GROUP = "<b>grp</b>"
BRANCH = "<img src=x onerror=alert(7)>"
STEP = "<script>alert(8)</script>"
EACH = "<i>each</i>"
ITEM_ROW = re.compile(r'<tr data-step="([^"]+)"([^>]*)>')


@dataclass
class Seeded:
    engine: FluxEngine
    capp: Any
    ok: str
    many: str
    xss: str


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    db: Path = tmp_path_factory.mktemp("flower-parallel-page") / "flux.db"
    capp = build_app(Settings(broker_url=NO_BROKER, celery={"task_always_eager": True}))
    engine = FluxEngine(storage=SqlStorage(f"sqlite:///{db}"), app=capp)
    ok = engine.execute(trip(), {"emails": EMAILS}).id
    many = engine.execute(trip(), {"emails": many_emails(25)}).id
    xss = (
        workflow(f"flower-parallel-xss-{uuid.uuid4().hex[:6]}")
        .parallel(
            GROUP, branch(BRANCH).step(STEP, lambda ctx: 1), branch("b").step("s", lambda ctx: 2)
        )
        .for_each(EACH, lambda ctx: ctx.item, items=lambda ctx: ["<u>a</u>"])
    )
    xss_id = engine.execute(xss).id
    yield Seeded(engine, capp, ok, many, xss_id)
    engine.close()


@pytest.fixture(scope="module")
def client(seeded: Seeded) -> Iterator[Client]:
    with serve(seeded.engine, seeded.capp) as c:
        yield c


def attrs(tail: str) -> dict[str, str]:
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', tail))


def test_rows_in_tree_order_with_their_group(
    client: Client, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, body = client.get(f"/workflows/run/{seeded.ok}")
    assert status == 200
    steps = [(name, attrs(tail)) for name, tail in ITEM_ROW.findall(body)]
    assert [name for name, _ in steps] == [
        "quote",
        "book",
        "reserve-flight",
        "pick-hotel",
        "reserve-hotel",
        "notify",
        "notify[0]",
        "notify[1]",
        "notify[2]",
        "notify[3]",
        "confirm",
    ]
    a = dict(steps)
    assert (a["book"]["kind"], a["book"]["depth"]) == ("parallel", "0")
    assert (a["pick-hotel"]["branch"], a["pick-hotel"]["parent"]) == ("hotel", a["book"]["index"])
    assert a["pick-hotel"]["depth"] == "2"
    assert (a["notify[2]"]["item"], a["notify[2]"]["parent"]) == ("2", a["notify"]["index"])
    assert "folded" not in a["notify[3]"]
    branches = re.findall(r'<tr class="flux-branch-row" data-branch="([^"]+)"', body)
    assert branches == ["flight", "hotel"]
    # One <tbody> per top-level step: its branches and items are inside it.
    assert body.count('<tbody class="flux-block">') == 4
    assert "7 steps &middot; 4 items" in body
    # The API keeps the stored rows: flat, items at the end.
    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")
    detail = client.json(f"/api/flux/runs/{seeded.ok}")
    assert [s["item"] for s in detail["steps"]][-4:] == [0, 1, 2, 3]


def test_many_items_are_folded_behind_details(client: Client, seeded: Seeded) -> None:
    _, _, body = client.get(f"/workflows/run/{seeded.many}")
    items = [(name, attrs(tail)) for name, tail in ITEM_ROW.findall(body) if "[" in name]
    assert [name for name, _ in items] == [f"notify[{i}]" for i in range(25)]
    assert [name for name, a in items if "folded" not in a] == [f"notify[{i}]" for i in range(10)]
    notify = re.search(r'<tr data-step="notify" [^>]*data-index="(\d+)"', body)
    assert notify is not None
    assert f'<details class="flux-more" id="flux-items-{notify.group(1)}">' in body
    assert "… 15 more items: 15 completed &middot; show all" in body


def test_names_from_user_code_are_escaped(client: Client, seeded: Seeded) -> None:
    _, _, body = client.get(f"/workflows/run/{seeded.xss}")
    for raw in (GROUP, BRANCH, STEP, EACH):
        assert raw not in body
    assert '<tr class="flux-branch-row" data-branch="&lt;img src=x onerror=alert(7)&gt;"' in body
    assert '<span class="flux-branch-name">&lt;img src=x onerror=alert(7)&gt;</span>' in body
    assert '<tr data-step="&lt;script&gt;alert(8)&lt;/script&gt;"' in body
    assert '<tr data-step="&lt;i&gt;each&lt;/i&gt;[0]"' in body
    assert "<u>a</u>" not in body
