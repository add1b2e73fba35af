"""The viewer's data for parallel branches and for_each items (SPEC section 11): rows
derived from trace events alone (an NDJSON trace) carry the same ``branch``/``item``/
``parent`` as the stored rows, each item has its own attempt bars (two items running at
once never share one), a parallel's or for_each's row has a bar from its fan-out to its
join, and both sources answer ``/api/runs/<id>`` alike. Runs are made by
``FluxEngine.execute`` on SQLite; the trace file holds the database's events."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from parallel_trip import EMAILS, many_emails, trip

from fluxcelery import FluxEngine, JsonFileTraceSink, SqlStorage, TraceEvent
from fluxcelery.web import create_server
from fluxcelery.web.sources import (
    DbSource,
    FileSource,
    attempt_log,
    derive_steps,
    step_counts,
    summarize_run,
)

KEYS = ("name", "index", "kind", "status", "attempts", "branch", "item", "parent")


@dataclass
class Runs:
    url: str
    ok: str
    bounced: str
    events: dict[str, list[TraceEvent]]
    rows: dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    url = f"sqlite:///{tmp_path_factory.mktemp('viewer-parallel-api') / 'flux.db'}"
    engine = FluxEngine(storage=SqlStorage(url))
    ok = engine.execute(trip(), {"emails": EMAILS})
    bounced = engine.execute(trip(), {"emails": many_emails(30, bounce=7)})
    assert (ok.status, bounced.status) == ("completed", "rolled_back")
    events = {r.id: engine.traces(run_id=r.id, limit=5000) for r in (ok, bounced)}
    rows = {r.id: [s.to_dict() for s in engine.get(r.id).steps] for r in (ok, bounced)}  # type: ignore[union-attr]
    engine.close()
    yield Runs(url, ok.id, bounced.id, events, rows)


def pick(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(r[k] for k in KEYS) for r in rows)


@pytest.mark.parametrize("which", ["ok", "bounced"])
def test_rows_derived_from_events_match_the_stored_rows(runs: Runs, which: str) -> None:
    run_id = getattr(runs, which)
    stored = [r for r in runs.rows[run_id] if r["attempts"]]  # (pending rows have no event)
    assert pick(derive_steps(runs.events[run_id])) == pick(stored)


def test_each_item_and_each_group_has_its_own_bars(runs: Runs) -> None:
    bars = attempt_log(runs.events[runs.ok])
    assert set(bars) == {
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
    }
    for name in ("book", "notify"):
        (group,) = bars[name]
        assert (group["phase"], group["outcome"]) == ("group", "completed")
    book, flight, pick = bars["book"][0], bars["reserve-flight"][0], bars["pick-hotel"][0]
    end = lambda b: b["start_ms"] + b["duration_ms"]  # noqa: E731
    # The branches overlap in time, inside the parallel's bar.
    assert flight["start_ms"] < end(pick) and pick["start_ms"] < end(flight)
    assert book["start_ms"] <= min(flight["start_ms"], pick["start_ms"])
    assert end(book) >= max(end(flight), end(bars["reserve-hotel"][0]))
    items = [bars[f"notify[{i}]"] for i in range(4)]
    assert all(len(b) == 1 and b[0]["outcome"] == "completed" for b in items)
    assert items[0][0]["start_ms"] < end(items[1][0])  # two at once (max_concurrency=2)


def test_a_failed_for_each_and_its_rollback(runs: Runs) -> None:
    events = runs.events[runs.bounced]
    bars = attempt_log(events)
    (group,) = bars["notify"]
    assert group["outcome"] == "failed"
    assert bars["notify[7]"][0]["outcome"] == "failed"
    assert "mailbox bounce-7@example.com does not exist" in bars["notify[7]"][0]["error"]
    compensated = [b for b in bars["reserve-flight"] if b["phase"] == "compensate"]
    assert [b["outcome"] for b in compensated] == ["compensated"]
    counts = step_counts(derive_steps(events), known=7)
    assert counts["steps_total"] == 7 and counts["items_total"] <= 30
    row = summarize_run(events, 7)
    assert (row["steps_total"], row["status"]) == (7, "rolled_back")


def test_both_sources_answer_the_same_groups(runs: Runs, tmp_path: Path) -> None:
    path = tmp_path / "trace.ndjson"
    JsonFileTraceSink(path).emit_many(runs.events[runs.ok])
    from_file, from_db = FileSource(path).run(runs.ok), DbSource(runs.url).run(runs.ok)
    assert from_file is not None and from_db is not None
    assert pick(from_file["steps"]) == pick(from_db["steps"])
    for doc in (from_file, from_db):
        bars = {(s["name"], s["item"]): s["attempt_log"] for s in doc["steps"]}
        assert bars[("book", None)][0]["phase"] == "group"
        assert len(bars[("notify", 2)]) == 1
        assert (doc["run"]["steps_total"], doc["run"]["items_total"]) == (7, 4)
        assert (doc["run"]["steps_done"], doc["run"]["items_done"]) == (7, 4)
    bounced = DbSource(runs.url).run(runs.bounced)
    assert bounced is not None
    assert bounced["compensations"][-2:] == ["reserve-hotel", "reserve-flight"]


def test_a_trace_cut_short_shows_the_rest_pending_in_its_branch(runs: Runs, tmp_path: Path) -> None:
    """Only the events up to the quote (a run that has just started): the registered
    definition gives the branch steps not reached yet, with their branch and parent."""
    events = runs.events[runs.ok]
    upto = next(i for i, e in enumerate(events) if e.type == "step:complete") + 1
    path = tmp_path / "trace.ndjson"
    JsonFileTraceSink(path).emit_many(events[:upto])
    server = create_server(trace_file=path, port=0)
    try:
        status, doc = server.api(f"/api/runs/{runs.ok}", "")
    finally:
        server.server_close()
    assert status == 200
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["quote"]["status"] == "completed"
    assert (steps["pick-hotel"]["branch"], steps["pick-hotel"]["parent"]) == ("hotel", 1)
    assert (steps["book"]["kind"], steps["book"]["status"]) == ("parallel", "pending")
    assert [s["name"] for s in doc["steps"]][:3] == ["quote", "book", "reserve-flight"]
