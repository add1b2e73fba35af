"""The Flower run page groups parallel branches and for_each items (SPEC section 11), in a
real headless Chromium (Debian's /usr/bin/chromium via Playwright), on runs made by
``FluxEngine.execute`` in a SQLite file: each branch's steps under a branch row, under
their parallel row, indented; the items under their for_each, the first ones and the
failed one shown and the others behind a "show all".

Also writes docs/img/flower-run-parallel.png (with FLUX_UPDATE_SCREENSHOTS=1), 1400x900.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flower")

from parallel_trip import EMAILS, many_emails, trip
from test_browser_flower import DOCS_IMG, VIEWPORT, _need_browser, browser, page  # noqa: F401
from test_flower_tab import NO_BROKER, Client, serve

from fluxcelery import FluxEngine, FluxResult, SqlStorage
from fluxcelery.celery.app import build_app
from fluxcelery.settings import Settings

pytestmark = pytest.mark.browser


@dataclass
class Trips:
    engine: FluxEngine
    capp: Any
    ok: FluxResult
    bounced: FluxResult


@pytest.fixture(scope="module")
def trips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trips]:
    _need_browser()
    db: Path = tmp_path_factory.mktemp("flower-parallel") / "flux.db"
    capp = build_app(Settings(broker_url=NO_BROKER, celery={"task_always_eager": True}))
    engine = FluxEngine(storage=SqlStorage(f"sqlite:///{db}"), app=capp)
    wf = trip()
    ok = engine.execute(wf, {"emails": EMAILS})
    bounced = engine.execute(wf, {"emails": many_emails(40, bounce=23)})
    assert ok.status == "completed", ok.error
    assert bounced.status == "rolled_back", bounced.error
    yield Trips(engine, capp, ok, bounced)
    engine.close()


@pytest.fixture(scope="module")
def site(trips: Trips) -> Iterator[Client]:
    with serve(trips.engine, trips.capp) as client:
        yield client


def rows(tab: Any) -> list[dict[str, str]]:
    """The steps table's rows in page order: their data attributes and first name cell."""
    return tab.eval_on_selector_all(
        "#flux-steps-table tbody tr:not(.flux-traceback-row)",
        """rs => rs.map(r => ({...r.dataset, cls: r.className,
            name: (r.cells[1] || r.cells[0]).innerText.trim().split('\\n')[0]}))""",
    )


def name_x(tab: Any, selector: str) -> float:
    """Where the text of a row's name cell starts (its indentation)."""
    return tab.locator(selector).evaluate(
        """r => { const c = r.cells[1]; const range = document.createRange();
            range.selectNodeContents(c); return range.getBoundingClientRect().x; }"""
    )


def test_branches_and_items_are_grouped_under_their_step(
    page: Any,  # noqa: F811
    site: Client,
    trips: Trips,
) -> None:
    state = trips.engine.get(trips.ok.id)
    assert state is not None
    book, notify = state.step("book").index, state.step("notify").index
    page.goto(f"{site.base}/workflows/run/{trips.ok.id}")
    shown = rows(page)
    assert [r.get("step") or r.get("branch") for r in shown] == [
        "quote",
        "book",
        "flight",  # the branch rows, each followed by its steps
        "reserve-flight",
        "hotel",
        "pick-hotel",
        "reserve-hotel",
        "notify",
        "notify[0]",  # the items, in item order, right under their for_each
        "notify[1]",
        "notify[2]",
        "notify[3]",
        "confirm",
    ]
    by_name = {r.get("step") or f"branch {r['branch']}": r for r in shown}
    for name in ("reserve-flight", "pick-hotel", "reserve-hotel"):
        assert by_name[name]["parent"] == str(book) and by_name[name]["depth"] == "2"
    assert by_name["reserve-flight"]["branch"] == "flight"
    assert by_name["branch hotel"]["cls"] == "flux-branch-row"
    for i in range(4):
        item = by_name[f"notify[{i}]"]
        assert (item["parent"], item["item"], item["depth"]) == (str(notify), str(i), "1")
    assert "4 items completed" in page.locator('tr[data-step="notify"]').inner_text()
    assert "2 steps completed" in page.locator('tr[data-branch="hotel"]').first.inner_text()
    # Indented: the branch under its parallel, the branch's steps further in; items under
    # their for_each.
    top = name_x(page, 'tr[data-step="book"]')
    branch = name_x(page, 'tr.flux-branch-row[data-branch="hotel"]')
    step = name_x(page, 'tr[data-step="pick-hotel"]')
    assert top < branch < step
    assert name_x(page, 'tr[data-step="notify"]') < name_x(page, 'tr[data-step="notify[2]"]')
    assert name_x(page, 'tr[data-step="confirm"]') == top
    # The trace names an item's events like the table does.
    steps = page.locator("#flux-trace-table tbody td:nth-child(3)").all_text_contents()
    assert "notify[3]" in steps and "pick-hotel" in steps
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / "flower-run-parallel.png"))


def test_many_items_fold_behind_show_all(
    page: Any,  # noqa: F811
    site: Client,
    trips: Trips,
) -> None:
    state = trips.engine.get(trips.bounced.id)
    assert state is not None
    items = state.items_of(state.step("notify").index)
    assert len(items) == 40
    page.goto(f"{site.base}/workflows/run/{trips.bounced.id}")
    visible = page.locator("#flux-steps-table tr[data-item]:visible")
    # The first ten items and the failed one; the others are folded and counted.
    assert visible.evaluate_all("rs => rs.map(r => r.dataset.item)") == [
        *(str(i) for i in range(10)),
        "23",
    ]
    failed = page.locator('tr[data-step="notify[23]"]')
    assert failed.locator(".badge").inner_text() == "failed"
    assert "mailbox bounce-23@example.com does not exist" in failed.inner_text()
    more = page.locator("tr.flux-more-row details.flux-more")
    hidden = [s for s in items if s.item is not None and s.item >= 10 and s.item != 23]
    counts: dict[str, int] = {}
    for s in hidden:
        counts[s.status.value] = counts.get(s.status.value, 0) + 1
    summary = more.locator("summary").inner_text()
    assert summary.startswith(f"… {len(hidden)} more items: ")
    for status, n in counts.items():
        assert f"{n} {status}" in summary
    assert page.locator('tr[data-step="notify[30]"]').is_hidden()
    # "show all" opens the folded items in place, in item order; the failed item's
    # traceback stays under it, folded items' traceback rows stay hidden until then.
    more.locator("summary").click()
    assert page.locator('tr[data-step="notify[30]"]').is_visible()
    assert visible.count() == 40
    assert visible.evaluate_all("rs => rs.map(r => Number(r.dataset.item))") == list(range(40))
    assert page.locator('tr[data-traceback-for="notify[23]"]').is_visible()
    more.locator("summary").click()
    assert page.locator('tr[data-step="notify[30]"]').is_hidden()
    # The failed for_each's traceback is its item's: shown once, under the item.
    tracebacks = page.locator("tr.flux-traceback-row")
    assert tracebacks.evaluate_all("rs => rs.map(r => r.dataset.tracebackFor)") == ["notify[23]"]
