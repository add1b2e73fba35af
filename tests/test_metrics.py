"""Prometheus metrics (``fluxcelery.metrics``, ``fluxcelery metrics``, ``/api/flux/metrics``).

The rules (which event counts where, buckets, the rollup cursor) are tested by table; the
values of a scrape against a store whose runs and events are known, on memory, SQLite and
PostgreSQL, with a fixed clock; then the SQL rollup (pruning, bounded scrapes, concurrent
scrapes, the upgrade), the command and the Flower route over HTTP.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from fluxcelery import MemoryStorage, RunState, RunStatus, SqlStorage, StepState
from fluxcelery.cli.main import cli
from fluxcelery.metrics import BUCKETS_MS, Limits, exposition, read_snapshot, registry_for
from fluxcelery.metrics import sql as metrics_sql
from fluxcelery.metrics.model import (
    FINISHED,
    INF,
    NO_DURATION,
    STARTED,
    STEP,
    Histogram,
    bucket_of,
    classify,
)
from fluxcelery.metrics.sql import Cursor, Look, plan
from fluxcelery.storage.migrate import upgrade
from fluxcelery.trace.event import TraceEvent

#: The fixed clock of every scrape here.
T = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ODD = 'we"ird\\wf\nname ü'
BASE_ENV = {"FLUX_BROKER_URL": "memory://", "FLUX_WORKFLOWS": "", "NO_COLOR": "1"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def ago(seconds: float) -> datetime:
    return T - timedelta(seconds=seconds)


def clock() -> datetime:
    return T


def samples(body: bytes) -> Samples:
    """Every sample of a text exposition, by name and sorted labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def scrape(storage: Any, limits: Limits | None = None) -> Samples:
    body, _ = exposition(storage, clock=clock, limits=limits)
    return samples(body)


# -- the rules, by table ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("type", "status", "expected"),
    [
        ("workflow:start", "running", (STARTED, "")),
        ("workflow:complete", "completed", (FINISHED, "completed")),
        ("workflow:error", "failed", (FINISHED, "failed")),
        ("workflow:error", "rolled_back", (FINISHED, "rolled_back")),
        ("workflow:error", None, (FINISHED, "failed")),
        ("workflow:cancel", "cancelled", (FINISHED, "cancelled")),
        ("workflow:cancel", "rolling_back", None),  # a cancel that compensates: not yet
        ("workflow:rollback_complete", "cancelled", (FINISHED, "cancelled")),
        ("workflow:rollback_complete", "rolled_back", None),  # its workflow:error counts
        ("workflow:rollback_start", "rolling_back", None),
        ("step:complete", "completed", (STEP, "completed")),
        ("step:error", "failed", (STEP, "failed")),
        ("step:retry", "pending", (STEP, "retried")),
        ("step:start", "running", None),
        ("step:progress", None, None),
        ("signal:received", None, None),
    ],
)
def test_which_event_counts_where(type: str, status: str | None, expected: Any) -> None:
    assert classify(type, status) == expected


@pytest.mark.parametrize(
    ("ms", "le"),
    [
        (None, NO_DURATION),
        (0, 5),
        (5, 5),
        (6, 10),
        (999, 1_000),
        (1_000, 1_000),
        (3_600_000, 3_600_000),
        (3_600_001, INF),
    ],
)
def test_bucket_of_a_duration(ms: int | None, le: int) -> None:
    assert bucket_of(ms) == le


LIMITS = Limits(roll=100, live=100, stale_after=600.0)


@pytest.mark.parametrize(
    ("case", "cursor", "look", "expected"),
    [
        (
            "sqlite: what is visible is settled, counted up to it",
            Cursor(10, 10, 10),
            Look(50),
            Cursor(50, 50, 50),
        ),
        (
            "sqlite: at most `roll` events at a time",
            Cursor(10, 10, 10),
            Look(500),
            Cursor(110, 500, 500),
        ),
        (
            "postgres: a first look is noted, nothing counted yet",
            Cursor(10, 10, 10),
            Look(50, at=T),
            Cursor(10, 10, 50, T),
        ),
        (
            "postgres: no writer now: the look settles, a new one is noted",
            Cursor(10, 10, 50, ago(5)),
            Look(80, at=T),
            Cursor(50, 50, 80, T),
        ),
        (
            "postgres: every writer began after the look: it settles",
            Cursor(10, 10, 50, ago(5)),
            Look(80, at=T, oldest_writer=ago(4)),
            Cursor(50, 50, 80, T),
        ),
        (
            "postgres: a writer older than the look: nothing settles",
            Cursor(10, 10, 50, ago(5)),
            Look(80, at=T, oldest_writer=ago(6)),
            Cursor(10, 10, 50, ago(5)),
        ),
        (
            "postgres: a writer open for too long does not stop the counters",
            Cursor(10, 10, 50, ago(601)),
            Look(80, at=T, oldest_writer=ago(3600)),
            Cursor(50, 50, 80, T),
        ),
        (
            "postgres: nothing new, nothing to note",
            Cursor(50, 50, 50, ago(60)),
            Look(50, at=T),
            Cursor(50, 50, 50, ago(60)),
        ),
        (
            "postgres: settled beyond `roll`: counted catches up over scrapes",
            Cursor(10, 400, 400, ago(60)),
            Look(400, at=T),
            Cursor(110, 400, 400, ago(60)),
        ),
        (
            "the sequence went back (a restore): count from there",
            Cursor(90, 90, 95, ago(5)),
            Look(40, at=T),
            Cursor(40, 40, 40),
        ),
    ],
)
def test_the_rollup_cursor(case: str, cursor: Cursor, look: Look, expected: Cursor) -> None:
    assert plan(cursor, look, LIMITS) == expected, case


def test_a_bucket_bound_no_longer_listed_counts_in_the_next_one() -> None:
    h = Histogram()
    h.add(5, 1, 4)
    h.add(7, 2, 14)  # a bound an older release had
    h.add(INF, 1, 9_000_000)
    cumulative = dict(h.cumulative())
    assert [cumulative[b] for b in (5, 10, 3_600_000)] == [1, 3, 3]
    assert h.count == 4 and h.sum_ms == 9_000_018


# -- a known store -----------------------------------------------------------------------------
def fresh(storage: Any) -> Any:
    """The store, counting from now: a PostgreSQL schema is shared by the session's tests
    (its tables are emptied, the rollup's are not)."""
    if isinstance(storage, SqlStorage):
        metrics_sql.reset(storage, T)
    return storage


@pytest.fixture
def store(any_storage: Any) -> Any:
    return fresh(any_storage)


@pytest.fixture
def sql_store(sql_storage: SqlStorage) -> SqlStorage:
    return fresh(sql_storage)


def add_run(
    storage: Any,
    run_id: str,
    workflow: str,
    status: str,
    changed: datetime,
    not_before: datetime | None = None,
) -> None:
    state = RunState(
        id=run_id,
        workflow=workflow,
        status=RunStatus(status),
        input={},
        data={},
        steps=[StepState(name="a", index=0)],
        created_at=changed,
        updated_at=changed,
    )
    state.not_before = not_before
    assert storage.create_run(state, [])
    if isinstance(storage, SqlStorage):  # SQL stamps the time of the write
        with storage.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE flux_runs SET created_at = :t, updated_at = :t WHERE id = :id"),
                {"t": changed, "id": run_id},
            )


def event(type: str, workflow: str, status: str | None = None, **fields: Any) -> TraceEvent:
    return TraceEvent.make(type, f"run-{workflow}", workflow, status=status, **fields)


def step(type: str, name: str, ms: int | None, workflow: str = "orders") -> TraceEvent:
    status = {"step:complete": "completed", "step:error": "failed"}.get(type, "pending")
    return event(type, workflow, status, step=name, step_index=0, kind="step", duration_ms=ms)


def seed(storage: Any) -> None:
    """Runs of ``orders`` in every status and one rolled-back run of ``ODD``; the events
    of a few runs' lives, step durations among them."""
    runs = [
        ("o-done-1", "completed", ago(900)),
        ("o-done-2", "completed", ago(800)),
        ("o-failed", "failed", ago(50)),
        ("o-pending", "pending", ago(30)),
        ("o-cancelled", "cancelled", ago(700)),
        ("o-suspended-1", "suspended", ago(100)),
        ("o-suspended-2", "suspended", ago(40)),
        ("o-running", "running", ago(5)),
    ]
    for run_id, status, changed in runs:
        add_run(storage, run_id, "orders", status, changed)
    # Started with a countdown that is not over: not waiting yet, so not the oldest.
    add_run(storage, "o-later", "orders", "pending", ago(500), not_before=T + timedelta(seconds=60))
    add_run(storage, "odd", ODD, "rolled_back", ago(20))
    events = [
        *[event("workflow:start", "orders", "running") for _ in range(5)],  # 4 runs, a retry
        event("workflow:complete", "orders", "completed", duration_ms=900),
        event("workflow:complete", "orders", "completed"),
        event("workflow:error", "orders", "failed"),
        event("workflow:cancel", "orders", "cancelled"),
        event("workflow:cancel", "orders", "rolling_back"),  # compensating first
        event("workflow:rollback_start", "orders", "rolling_back"),
        event("workflow:rollback_complete", "orders", "cancelled"),
        event("workflow:start", ODD, "running"),
        event("workflow:rollback_complete", ODD, "rolled_back"),
        event("workflow:error", ODD, "rolled_back"),
        step("step:start", "charge", None),
        *[step("step:complete", "charge", ms) for ms in (3, 40, 40, 7_000)],
        step("step:retry", "charge", 120),
        step("step:error", "charge", 30_000),
        step("step:complete", "ship", 7_200_000),  # two hours: above the last bound
        step("step:complete", "ship", None),  # no duration: in no bucket
        step("step:complete", "check", 12, workflow=ODD),
    ]
    storage.append_traces(events)


def buckets(found: Samples, workflow: str, step_name: str, status: str) -> dict[str, float]:
    name = "fluxcelery_step_duration_seconds_bucket"
    out = {}
    for (sample, labels), v in found.items():
        given = dict(labels)
        if sample == name and (given["workflow"], given["step"], given["status"]) == (
            workflow,
            step_name,
            status,
        ):
            out[given["le"]] = v
    return out


def test_a_scrape_of_a_known_store(store: Any) -> None:
    seed(store)
    found = scrape(store)

    started = "fluxcelery_runs_started_total"
    assert value(found, started, workflow="orders") == 5
    assert value(found, started, workflow=ODD) == 1
    finished = {
        (dict(labels)["workflow"], dict(labels)["status"]): v
        for (name, labels), v in found.items()
        if name == "fluxcelery_runs_finished_total"
    }
    assert finished == {
        ("orders", "completed"): 2,
        ("orders", "failed"): 1,
        ("orders", "cancelled"): 2,
        (ODD, "rolled_back"): 1,
    }

    charge = buckets(found, "orders", "charge", "completed")
    assert len(charge) == len(BUCKETS_MS) + 1
    assert [charge[le] for le in ("0.005", "0.025", "0.05", "5.0", "10.0", "+Inf")] == [
        1,
        1,
        3,
        3,
        4,
        4,
    ]
    duration = "fluxcelery_step_duration_seconds"
    labels = {"workflow": "orders", "step": "charge"}
    assert value(found, f"{duration}_count", **labels, status="completed") == 4
    assert value(found, f"{duration}_sum", **labels, status="completed") == pytest.approx(7.083)
    assert buckets(found, "orders", "charge", "retried")["0.1"] == 0
    assert buckets(found, "orders", "charge", "retried")["0.25"] == 1
    assert value(found, f"{duration}_sum", **labels, status="retried") == pytest.approx(0.12)
    failed = buckets(found, "orders", "charge", "failed")
    assert (failed["10.0"], failed["30.0"]) == (0, 1)  # 30 s is on the bound: le="30.0"
    ship = buckets(found, "orders", "ship", "completed")
    assert ship["3600.0"] == 0 and ship["+Inf"] == 1
    assert value(found, f"{duration}_sum", workflow="orders", step="ship", status="completed") == (
        7200
    )
    assert value(found, f"{duration}_count", workflow=ODD, step="check", status="completed") == 1

    runs = {
        (dict(labels)["workflow"], dict(labels)["status"]): v
        for (name, labels), v in found.items()
        if name == "fluxcelery_runs"
    }
    assert runs == {
        ("orders", "pending"): 2,
        ("orders", "running"): 1,
        ("orders", "suspended"): 2,
        ("orders", "rolling_back"): 0,
        ("orders", "failed"): 1,
        ("orders", "rolled_back"): 0,
        (ODD, "pending"): 0,
        (ODD, "running"): 0,
        (ODD, "suspended"): 0,
        (ODD, "rolling_back"): 0,
        (ODD, "failed"): 0,
        (ODD, "rolled_back"): 1,
    }  # completed and cancelled: in fluxcelery_runs_finished_total only
    ages = {
        (dict(labels)["workflow"], dict(labels)["status"]): v
        for (name, labels), v in found.items()
        if name == "fluxcelery_oldest_run_age_seconds"
    }
    assert ages == {
        ("orders", "pending"): 30,  # o-later is not due: not waiting
        ("orders", "running"): 5,
        ("orders", "suspended"): 100,
    }
    assert value(found, "fluxcelery_metrics_backlog_events") == 0

    assert scrape(store) == found  # a second scrape: the same values


def test_odd_names_are_escaped_in_the_exposition(store: Any) -> None:
    seed(store)
    body, content_type = exposition(store, clock=clock)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b'workflow="we\\"ird\\\\wf\\nname \xc3\xbc"' in body  # quote, backslash, newline
    assert value(samples(body), "fluxcelery_runs_started_total", workflow=ODD) == 1
    open_body, open_type = exposition(store, "application/openmetrics-text", clock=clock)
    assert open_type.startswith("application/openmetrics-text")
    assert open_body.endswith(b"# EOF\n")


def test_an_empty_store() -> None:
    found = scrape(MemoryStorage())
    assert found == {("fluxcelery_metrics_backlog_events", ()): 0}


def test_registering_reads_nothing() -> None:
    class Unreachable(MemoryStorage):
        def list_traces(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("read at registration")

    registry_for(Unreachable())  # describe() gives the names; collect() is per scrape


# -- the SQL rollup ---------------------------------------------------------------------------


def cursor_row(storage: SqlStorage) -> tuple[int, int]:
    with storage.engine.connect() as conn:
        counted = conn.execute(sa.text("SELECT counted FROM flux_metric_cursor")).scalar_one()
        newest = conn.execute(sa.text("SELECT coalesce(max(seq), 0) FROM flux_traces")).scalar()
    return int(counted), int(newest or 0)


def settle(storage: SqlStorage) -> None:
    """Scrape until every event is in the totals (PostgreSQL: a look, then its settling)."""
    for _ in range(5):
        read_snapshot(storage, T)
        counted, newest = cursor_row(storage)
        if counted == newest:
            return
    raise AssertionError(f"the rollup did not settle: counted {counted} of {newest}")


def test_the_rollup_settles_without_changing_a_value(sql_store: SqlStorage) -> None:
    seed(sql_store)
    before = scrape(sql_store)  # the events above the cursor, read live
    settle(sql_store)
    with sql_store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM flux_metric_totals")).scalar()
    assert rows and rows > 0
    assert scrape(sql_store) == before


def test_counters_outlive_pruned_runs(sql_store: SqlStorage) -> None:
    seed(sql_store)
    settle(sql_store)
    before = scrape(sql_store)
    # Prune the finished runs with their events (the seeded events carry other run ids:
    # delete those too, as a prune of their runs would).
    assert sql_store.prune_runs(T, ["completed", "failed", "rolled_back", "cancelled"]) == 5
    with sql_store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM flux_traces"))
    after = scrape(sql_store)
    for name in ("fluxcelery_runs_started_total", "fluxcelery_runs_finished_total"):
        assert {k: v for k, v in after.items() if k[0] == name} == {
            k: v for k, v in before.items() if k[0] == name
        }
    assert value(after, "fluxcelery_runs", workflow="orders", status="failed") == 0
    assert value(after, "fluxcelery_runs", workflow="orders", status="suspended") == 2


def test_a_bounded_scrape_reports_its_backlog_and_catches_up(sql_store: SqlStorage) -> None:
    sql_store.append_traces([event("workflow:start", "orders", "running") for _ in range(20)])
    small = Limits(roll=3, live=4)
    seen = []
    for _ in range(12):
        found = scrape(sql_store, small)
        seen.append(
            (
                value(found, "fluxcelery_runs_started_total", workflow="orders") or 0,
                value(found, "fluxcelery_metrics_backlog_events"),
            )
        )
    started = [s for s, _ in seen]
    assert started == sorted(started)  # a counter never goes back
    assert seen[0][1] and seen[0][1] > 0  # behind at first, and says so
    assert seen[-1] == (20, 0)  # caught up


def test_concurrent_scrapes_count_each_event_once(sql_store: SqlStorage) -> None:
    sql_store.append_traces([event("workflow:start", "orders", "running") for _ in range(60)])
    no_live = Limits(roll=7, live=0)  # report the totals only
    errors: list[BaseException] = []

    def scraper() -> None:
        try:
            for _ in range(15):
                read_snapshot(sql_store, T, no_live)
        except BaseException as exc:  # pragma: no cover - shown by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=scraper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for _ in range(20):
        found = scrape(sql_store, no_live)
        if value(found, "fluxcelery_metrics_backlog_events") == 0:
            break
    assert value(found, "fluxcelery_runs_started_total", workflow="orders") == 60


def test_an_upgraded_store_counts_from_the_upgrade_on(tmp_path: Path) -> None:
    storage = SqlStorage(f"sqlite:///{tmp_path}/old.db", auto_migrate=False)
    try:
        assert upgrade(storage, "0008") == (None, "0008")
        storage.append_traces([event("workflow:start", "orders", "running") for _ in range(3)])
        assert upgrade(storage, "0009") == ("0008", "0009")
        assert cursor_row(storage) == (3, 3)
        assert value(scrape(storage), "fluxcelery_runs_started_total", workflow="orders") is None
        storage.append_traces([event("workflow:start", "orders", "running")])
        assert value(scrape(storage), "fluxcelery_runs_started_total", workflow="orders") == 1
    finally:
        storage.close()


# -- the command --------------------------------------------------------------------------------
@pytest.fixture
def seeded_db(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path}/flux.db"
    storage = SqlStorage(url)
    seed(storage)
    storage.close()
    yield url


def test_metrics_once_prints_one_scrape(seeded_db: str) -> None:
    result = CliRunner().invoke(cli, ["--db", seeded_db, "metrics", "--once"], env=BASE_ENV)
    assert result.exit_code == 0, result.output
    found = samples(result.stdout.encode())
    assert value(found, "fluxcelery_runs_started_total", workflow="orders") == 5
    assert value(found, "fluxcelery_runs", workflow="orders", status="suspended") == 2
    assert "# TYPE fluxcelery_step_duration_seconds histogram" in result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_serves_http_on_loopback(seeded_db: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **BASE_ENV, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluxcelery", "--db", seeded_db, "metrics", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body, content_type = r.read(), r.headers["Content-Type"]
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "fluxcelery metrics did not answer"
                time.sleep(0.2)
        assert content_type.startswith("text/plain")
        assert value(samples(body), "fluxcelery_runs_started_total", workflow="orders") == 5
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert f"serving metrics on http://127.0.0.1:{port}/metrics" in err


def test_metrics_refuses_a_port_in_use(seeded_db: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["--db", seeded_db, "metrics", "--port", str(port)], env=BASE_ENV
        )
    assert result.exit_code == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.output


# -- Flower ------------------------------------------------------------------------------------
def test_flower_metrics_route_behind_flower_auth(
    seeded_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("flower")
    from test_flower_tab import NO_BROKER, serve

    from fluxcelery import FluxEngine
    from fluxcelery.celery.app import build_app
    from fluxcelery.settings import Settings

    monkeypatch.delenv("FLOWER_UNAUTHENTICATED_API", raising=False)
    capp = build_app(Settings(broker_url=NO_BROKER, celery={"task_always_eager": True}))
    engine = FluxEngine(storage=SqlStorage(seeded_db), app=capp)
    try:
        with serve(engine, capp, basic_auth=["prom:secret"]) as c:
            assert c.get("/api/flux/metrics")[0] == 401
            assert c.get("/api/flux/metrics", auth="prom:wrong")[0] == 401
            status, headers, body = c.get("/api/flux/metrics", auth="prom:secret")
            assert status == 200, body
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            assert headers["cache-control"] == "no-store"
            found = samples(body.encode())
            assert value(found, "fluxcelery_runs_started_total", workflow="orders") == 5
            status, headers, body = c.get(
                "/api/flux/metrics",
                auth="prom:secret",
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            )
            assert status == 200 and body.endswith("# EOF\n")
            assert headers["content-type"].startswith("application/openmetrics-text")
        with serve(engine, capp) as c:  # no auth configured: Flower's API rule
            status, _, body = c.get("/api/flux/metrics")
            assert status == 401 and "FLOWER_UNAUTHENTICATED_API" in body
            monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")
            assert c.get("/api/flux/metrics")[0] == 200
    finally:
        engine.close()


def test_importing_fluxcelery_leaves_prometheus_client_out() -> None:
    code = "import sys, fluxcelery; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
