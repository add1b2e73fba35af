"""``fluxcelery.outline``: a run's flat rows as the tree ``show``, the Flower tab and the
viewer draw (SPEC section 11). Pure: step dicts in, lines out, no engine."""

from __future__ import annotations

from typing import Any

import pytest

from fluxcelery.outline import (
    ITEMS_ALL,
    ITEMS_HEAD,
    ITEMS_NOTABLE,
    Line,
    count_statuses,
    describe_counts,
    items_of,
    outline,
    own_traceback,
    step_label,
    summarize,
)


def row(name: str, index: int, kind: str = "step", status: str = "completed", **kw: Any) -> dict:
    return {"name": name, "index": index, "kind": kind, "status": status, "attempts": 1, **kw}


def trip_rows(n_items: int = 3, statuses: dict[int, str] | None = None) -> list[dict]:
    """The stored order: top-level rows, each parallel's branch rows right after it, the
    for_each's item rows at the end (index >= the defined steps)."""
    statuses = statuses or {}
    rows = [
        row("quote", 0),
        row("book", 1, "parallel"),
        row("reserve-flight", 2, "commit", branch="flight", parent=1),
        row("pick-hotel", 3, branch="hotel", parent=1),
        row("reserve-hotel", 4, "commit", branch="hotel", parent=1),
        row("notify", 5, "for_each"),
        row("confirm", 6),
    ]
    # Items are appended as they fan out: not necessarily in item order.
    for i in reversed(range(n_items)):
        rows.append(row("notify", 7 + i, status=statuses.get(i, "completed"), item=i, parent=5))
    return rows


def shape(lines: list[Line]) -> list[tuple[str, str, int, tuple[bool, ...]]]:
    return [(line.kind, line.label, line.depth, line.trail) for line in lines]


def test_branches_under_their_parallel_items_under_their_for_each() -> None:
    T, F = True, False
    assert shape(outline(trip_rows())) == [
        ("step", "quote", 0, ()),
        ("step", "book", 0, ()),
        ("branch", "flight", 1, (F,)),
        ("step", "reserve-flight", 2, (F, T)),
        ("branch", "hotel", 1, (T,)),
        ("step", "pick-hotel", 2, (T, F)),
        ("step", "reserve-hotel", 2, (T, T)),
        ("step", "notify", 0, ()),
        ("step", "notify[0]", 1, (F,)),
        ("step", "notify[1]", 1, (F,)),
        ("step", "notify[2]", 1, (T,)),
        ("step", "confirm", 0, ()),
    ]
    lines = outline(trip_rows())
    flight = next(line for line in lines if line.label == "reserve-flight")
    assert (flight.parent, flight.branch, flight.step["index"]) == (1, "flight", 2)  # type: ignore[index]
    item = next(line for line in lines if line.label == "notify[1]")
    assert (item.parent, item.step["item"], item.folded) == (5, 1, False)  # type: ignore[index]


def test_every_row_appears_once_even_with_a_parent_that_does_not_exist() -> None:
    rows = [row("a", 0), row("orphan", 1, parent=9, branch="x"), row("self", 2, parent=2)]
    lines = outline(rows)
    assert shape(lines) == [
        ("step", "a", 0, ()),
        ("step", "orphan", 0, ()),
        ("step", "self", 0, ()),
    ]
    assert outline([]) == []


def test_a_plain_workflow_is_a_flat_list() -> None:
    rows = [row("validate", 0), row("charge", 1, "commit"), row("ship", 2, status="pending")]
    assert [(line.label, line.depth) for line in outline(rows)] == [
        ("validate", 0),
        ("charge", 0),
        ("ship", 0),
    ]


@pytest.mark.parametrize(
    ("n", "statuses", "shown", "more"),
    [
        (ITEMS_ALL, {}, list(range(ITEMS_ALL)), None),
        (ITEMS_ALL + 1, {}, list(range(ITEMS_HEAD)), {"completed": ITEMS_ALL + 1 - ITEMS_HEAD}),
        (
            1000,
            {3: "failed", 537: "failed", 612: "running", 900: "compensated"},
            [*range(ITEMS_HEAD), 537, 612],
            {"completed": 987, "compensated": 1},
        ),
        (
            1000,
            dict.fromkeys(range(500, 520), "failed"),
            [*range(ITEMS_HEAD), *range(500, 500 + ITEMS_NOTABLE)],
            {"completed": 1000 - ITEMS_HEAD - 20, "failed": 20 - ITEMS_NOTABLE},
        ),
    ],
)
def test_many_items_show_the_first_and_the_notable_ones(
    n: int, statuses: dict[int, str], shown: list[int], more: dict[str, int] | None
) -> None:
    lines = outline(trip_rows(n, statuses))
    items = [line for line in lines if line.step is not None and line.step.get("item") is not None]
    assert [line.step["item"] for line in items] == list(range(n))  # type: ignore[index]
    assert [line.step["item"] for line in items if not line.folded] == shown  # type: ignore[index]
    folded = [line for line in lines if line.kind == "more"]
    if more is None:
        assert folded == []
        return
    (line,) = folded
    assert line.counts == more and line.hidden == n - len(shown)
    assert line.label == f"… {n - len(shown)} more items"
    assert (line.depth, line.parent, line.trail) == (1, 5, (True,))
    # The more line closes the group: right after the last item, before confirm.
    at = lines.index(line)
    assert lines[at - 1].label == f"notify[{n - 1}]" and lines[at + 1].label == "confirm"
    # The last shown item is not drawn as the last child: the more line is.
    assert [x.trail for x in items if not x.folded][-1] == (False,)


def test_fold_limits_are_parameters() -> None:
    lines = outline(trip_rows(6, {5: "failed"}), items_all=2, items_head=1, items_notable=0)
    shown = [x.label for x in lines if x.step and x.step.get("item") is not None and not x.folded]
    assert shown == ["notify[0]"]
    (more,) = [x for x in lines if x.kind == "more"]
    assert more.counts == {"completed": 4, "failed": 1}


def test_labels_counts_and_summaries() -> None:
    assert step_label({"name": "notify", "item": 7}) == "notify[7]"
    assert step_label({"name": "notify", "item": None}) == "notify"
    assert step_label({"name": "notify", "item": 0}) == "notify[0]"
    rows = [{"status": s} for s in ["failed", "completed", "pending", "completed", "oddity"]]
    assert list(count_statuses(rows).items()) == [
        ("completed", 2),
        ("pending", 1),
        ("failed", 1),
        ("oddity", 1),
    ]
    assert (
        describe_counts({"completed": 985, "failed": 5, "running": 0}) == "985 completed, 5 failed"
    )
    assert describe_counts({"compensation_failed": 1}) == "1 compensation failed"
    assert summarize([]) is None
    assert summarize([{"status": "completed"}] * 3) == "3 items completed"
    assert summarize([{"status": "completed"}]) == "1 item completed"
    assert summarize([{"status": "completed"}, {"status": "failed"}], "step") == (
        "2 steps: 1 completed, 1 failed"
    )
    rows = trip_rows(4)
    assert [s["item"] for s in items_of(rows, 5)] == [0, 1, 2, 3]
    assert items_of(rows, 1) == []  # a parallel's rows are branch steps, not items


def test_a_group_failure_keeps_its_traceback_with_the_item_that_raised() -> None:
    rows = trip_rows(3, {1: "failed"})
    text = "Traceback…\nValueError: bad address"
    rows[5]["traceback"] = text  # the for_each row: the item's failure
    next(r for r in rows if r.get("item") == 1)["traceback"] = text
    rows[0]["traceback"] = "an earlier attempt's"
    assert own_traceback(rows, rows[5]) is None
    assert own_traceback(rows, next(r for r in rows if r.get("item") == 1)) == text
    assert own_traceback(rows, rows[0]) == "an earlier attempt's"
    rows[5]["traceback"] = "the join's own error"
    assert own_traceback(rows, rows[5]) == "the join's own error"
    assert own_traceback(rows, rows[6]) is None
