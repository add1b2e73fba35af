"""The viewer groups parallel branches and for_each items (SPEC section 11), in a real
headless Chromium (Debian's /usr/bin/chromium via Playwright), on runs made by
``FluxEngine.execute`` in a SQLite file: on the execution path each branch is a lane of the
parallel's box and the items are squares under their for_each; on the attempts chart each
branch is a row of its own under the parallel, so two branches running at once are two
overlapping bars, and the items are rows under their for_each.

Also writes docs/img/viewer-parallel.png (with FLUX_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from parallel_trip import EMAILS, many_emails, trip
from test_browser_viewer import DOCS_IMG, browser, page  # noqa: F401 (fixtures)

from fluxcelery import FluxEngine, FluxResult, JsonFileTraceSink, SqlStorage
from fluxcelery.web import create_server

pytestmark = pytest.mark.browser


@dataclass
class Site:
    url: str
    db_url: str
    ok: FluxResult
    bounced: FluxResult


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    url = f"sqlite:///{tmp_path_factory.mktemp('viewer-parallel') / 'flux.db'}"
    engine = FluxEngine(storage=SqlStorage(url))
    wf = trip()
    ok = engine.execute(wf, {"emails": EMAILS})
    bounced = engine.execute(wf, {"emails": many_emails(40, bounce=23)})
    engine.close()
    assert ok.status == "completed", ok.error
    assert bounced.status == "rolled_back", bounced.error
    server = create_server(db_url=url, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield Site(server.url, url, ok, bounced)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _box(locator: Any) -> dict[str, float]:
    box = locator.bounding_box()
    assert box is not None, locator
    return box


def test_branches_side_by_side_and_items_under_their_for_each(page: Any, site: Site) -> None:  # noqa: F811
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"{site.url}#run={site.ok.id}")
    page.wait_for_selector("#gantt .gantt-lane")

    # The execution path: quote, the parallel's box, the for_each's box, confirm.
    top = page.eval_on_selector_all(
        "#path > .path-item", "items => items.map(i => i.querySelector('.step-node').dataset.step)"
    )
    assert top == ["quote", "book", "notify", "confirm"]
    book = page.locator('#path .group-parallel[data-group="book"]')
    lanes = book.locator(".lane")
    assert lanes.evaluate_all("ls => ls.map(l => l.dataset.branch)") == ["flight", "hotel"]
    hotel_steps = book.locator('.lane[data-branch="hotel"] .step-node')
    assert hotel_steps.evaluate_all("ns => ns.map(n => n.dataset.step)") == [
        "pick-hotel",
        "reserve-hotel",
    ]
    flight, hotel = _box(lanes.nth(0)), _box(lanes.nth(1))
    assert hotel["y"] >= flight["y"] + flight["height"] - 1  # one lane above the other
    cells = page.locator('#path .group-for_each[data-group="notify"] .item-cell')
    assert cells.evaluate_all("cs => cs.map(c => c.dataset.item)") == ["0", "1", "2", "3"]
    assert cells.evaluate_all("cs => cs.map(c => c.dataset.status)") == ["completed"] * 4
    assert "4 completed" in page.locator("#path .group-for_each .items-head").inner_text()

    # The attempts chart: book, its two branch lanes, notify, its four items, confirm.
    rows = page.eval_on_selector_all(
        "#gantt .gantt-row:not(.gantt-axis)",
        "rs => rs.map(r => [r.className, r.querySelector('.gantt-label').textContent])",
    )
    assert [label for _, label in rows] == [
        "quote",
        "▾book",
        "flight",
        "hotel",
        "▾notify",
        "notify[0]",
        "notify[1]",
        "notify[2]",
        "notify[3]",
        "confirm",
    ]
    assert "gantt-lane" in rows[2][0] and "gantt-item" in rows[5][0]
    # Both branches run at once: their bars overlap in time, on two rows.
    flight_bar = _box(page.locator('#gantt .gantt-lane[data-branch="flight"] .bar').first)
    hotel_bars = page.locator('#gantt .gantt-lane[data-branch="hotel"] .bar')
    assert hotel_bars.count() == 2  # pick-hotel, then reserve-hotel on the same lane
    pick = _box(hotel_bars.nth(0))
    assert pick["x"] < flight_bar["x"] + flight_bar["width"]
    assert flight_bar["x"] < pick["x"] + pick["width"]
    assert pick["y"] > flight_bar["y"] + flight_bar["height"] - 1
    # The parallel's own bar spans both branches: from the fan-out to the join.
    group = _box(page.locator('#gantt .gantt-group[data-step="book"] .bar.phase-group'))
    last = _box(hotel_bars.nth(1))
    assert group["x"] <= min(flight_bar["x"], pick["x"]) + 2
    assert (
        group["x"] + group["width"]
        >= max(flight_bar["x"] + flight_bar["width"], last["x"] + last["width"]) - 2
    )
    # Two items at a time (max_concurrency=2): items 0 and 1 overlap, item 2 starts after one
    # of them ended.
    item = [_box(page.locator(f'#gantt .gantt-item[data-item="{i}"] .bar')) for i in range(4)]
    assert item[0]["x"] < item[1]["x"] + item[1]["width"]
    assert item[2]["x"] >= min(b["x"] + b["width"] for b in item[:2]) - 2
    # The events table names an item's events notify[i], a branch step's with its branch.
    steps = page.locator("#timeline .c-step").all_text_contents()
    assert "notify[3]" in steps and "reserve-flight flight" in steps

    # The screenshot: the execution path and the attempts chart, 1400x900.
    page.locator("#path").evaluate("n => n.closest('.panel').scrollIntoView()")
    page.wait_for_timeout(200)
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / "viewer-parallel.png"))

    # A for_each's rows fold away on a click on its label, and come back.
    page.locator('#gantt .gantt-group[data-step="notify"] .gantt-toggle').click()
    page.wait_for_function("() => !document.querySelector('#gantt .gantt-item')")
    assert page.locator("#gantt .gantt-lane").count() == 2  # the parallel stays open
    page.locator('#gantt .gantt-group[data-step="notify"] .gantt-toggle').click()
    page.wait_for_selector('#gantt .gantt-item[data-item="3"]')


def test_many_items_and_a_failed_one(page: Any, site: Site) -> None:  # noqa: F811
    run = site.bounced
    page.goto(f"{site.url}#run={run.id}")
    page.wait_for_selector("#path .group-for_each .item-cell")
    cells = page.locator("#path .group-for_each .item-cell")
    assert cells.count() == 40
    assert page.locator('#path .item-cell[data-item="23"]').get_attribute("data-status") == (
        "failed"
    )
    assert page.locator('#path .step-node[data-step="notify"]').get_attribute("data-status") == (
        "failed"
    )
    # The branches' commits were compensated; the rollback names them.
    chips = page.locator("#rollback .rollback-chip").all_text_contents()
    assert chips[-2:] == ["reserve-hotel", "reserve-flight"]
    # More than 20 items ran: packed into lanes, at most two at once (max_concurrency=2).
    packed = page.locator("#gantt .gantt-item.gantt-packed")
    assert packed.count() == 2
    titles = packed.evaluate_all("rs => rs.map(r => r.querySelector('.gantt-label').title)")
    assert all("notify[" in t for t in titles)
    # The failing item's traceback is listed once (not again for its for_each).
    page.wait_for_selector("#tracebacks-panel:not([hidden])")
    assert page.locator("#tracebacks .traceback-step").all_text_contents() == ["notify[23]"]
    assert (
        "mailbox bounce-23@example.com does not exist"
        in page.locator("#tracebacks .traceback-error").inner_text()
    )


def test_trace_file_source_groups_the_same_way(page: Any, site: Site, tmp_path: Path) -> None:  # noqa: F811
    """The same run from an NDJSON trace (its events copied from the database): the page
    derives branches, items and parents from the events alone."""
    storage = SqlStorage(site.db_url)
    path = tmp_path / "trace.ndjson"
    JsonFileTraceSink(path).emit_many(storage.list_traces(run_id=site.ok.id, limit=1000))
    storage.close()
    server = create_server(trace_file=path, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        page.goto(f"{server.url}#run={site.ok.id}")
        page.wait_for_selector("#gantt .gantt-lane")
        lanes = page.locator("#path .group-parallel .lane")
        assert lanes.evaluate_all("ls => ls.map(l => l.dataset.branch)") == ["flight", "hotel"]
        assert page.locator("#path .group-for_each .item-cell").count() == 4
        assert page.locator("#gantt .gantt-item").count() == 4
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
