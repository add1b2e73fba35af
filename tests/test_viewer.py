"""The ``fluxcelery dev`` viewer's HTTP API, against real traces (NDJSON file and SQLite)."""

from __future__ import annotations

import inspect
import json
import re
import threading
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import ZERO_BACKOFF, no_sleep

from fluxcelery import (
    FluxEngine,
    JsonFileTraceSink,
    MemoryStorage,
    NonRetryableError,
    SqlStorage,
    TraceEvent,
    wait_for,
    workflow,
)
from fluxcelery.core.errors import StorageError
from fluxcelery.web import ViewerServer, create_server, serve
from fluxcelery.web.sources import DbSource
from fluxcelery.web.viewer import derive_run_status

XSS = "<script>alert(1)</script>"
CARD = "4242-4242-4242-4242"


def _name(kind: str) -> str:
    return f"viewer-{kind}-{uuid.uuid4().hex[:8]}"


def saga_workflow() -> Any:
    """validate ok; charge fails once then succeeds; gift skipped; reserve (commit) ok;
    ship fails for good -> reserve and charge are compensated (rolled_back)."""
    calls = {"charge": 0}

    def charge(ctx: Any) -> dict[str, str]:
        calls["charge"] += 1
        if calls["charge"] == 1:
            raise ConnectionError("gateway timeout")
        return {"token": "tok_live_123"}

    def ship(ctx: Any) -> None:
        raise NonRetryableError("no courier")

    return (
        workflow(_name("saga"))
        .step("validate", lambda ctx: {"ok": True})
        .step("charge", charge, retries=2, compensate=lambda ctx: None)
        .step("gift", lambda ctx: 1, when=lambda ctx: False)
        .commit("reserve", lambda ctx: 1, compensate=lambda ctx: None)
        .step("ship", ship)
    )


def _engine(storage: Any, trace: Any = None) -> FluxEngine:
    return FluxEngine(storage=storage, trace=trace, backoff=ZERO_BACKOFF, sleep=no_sleep)


def raised_traceback(exc: BaseException) -> str:
    """The text of a real traceback (two frames) of ``exc`` raised inside a function."""

    def fail() -> None:
        raise exc

    try:
        fail()
    except BaseException as raised:
        return "".join(traceback.format_exception(raised))
    raise AssertionError("fail() returned")


def store_traceback(storage: Any, run_id: str, step: str, text: str) -> None:
    """Store ``text`` as the traceback of ``step``, as the runner does for a failed step.

    A storage that does not keep the field yet (SQL, until its column lands) gets
    ``load_run`` wrapped on this instance to add it back, so that pages still read it
    through the engine and ``ops`` like any stored value."""
    state = storage.load_run(run_id)
    assert state is not None
    target = state.step(step)
    target.traceback = text
    assert storage.save_run(state, state.version, [target.index], [])
    if storage.load_run(run_id).step(step).traceback == text:
        return
    load = storage.load_run

    def load_run(wanted: str) -> Any:
        got = load(wanted)
        if got is not None and wanted == run_id:
            got.step(step).traceback = text
        return got

    storage.load_run = load_run


@contextmanager
def running(server: ViewerServer) -> Iterator[str]:
    """Serve in a thread; yields the base URL (ending in ``/``)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, res.headers, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def get_json(url: str) -> Any:
    status, headers, body = fetch(url)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


# -- fixtures: real traces ---------------------------------------------------------------


@pytest.fixture(scope="module")
def file_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trace file with a saga run, a completed run and a run with a script step name."""
    path = tmp_path_factory.mktemp("viewer") / "trace.ndjson"
    engine = _engine(MemoryStorage(), [JsonFileTraceSink(path)])
    saga = saga_workflow()
    simple = workflow(_name("simple")).step("a", lambda ctx: 1).step("b", lambda ctx: 2)
    xss = workflow(_name("xss")).step(XSS, lambda ctx: 1)
    runs = {
        "saga": engine.execute(saga, {"password": "hunter2"}),
        "simple": engine.execute(simple),
        "xss": engine.execute(xss),
    }
    engine.close()
    return {"path": path, "runs": runs, "workflows": {"saga": saga.name, "simple": simple.name}}


@pytest.fixture
def file_server(file_runs: dict[str, Any]) -> Iterator[str]:
    with running(create_server(trace_file=file_runs["path"], port=0)) as url:
        yield url


@pytest.fixture(scope="module")
def db_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A SQLite database with a rolled-back saga and a run suspended on a signal."""
    url = f"sqlite:///{tmp_path_factory.mktemp('viewerdb')}/flux.db"
    engine = _engine(SqlStorage(url))
    waiting = (
        workflow(_name("wait"))
        .step("ask", lambda ctx: 1)
        .step("approval", lambda ctx: wait_for("approved"))
        .step("apply", lambda ctx: 2)
    )
    runs = {
        "saga": engine.execute(saga_workflow(), {"password": "hunter2", "card": CARD}),
        "wait": engine.execute(waiting),
    }
    engine.close()
    return {"url": url, "runs": runs}


@pytest.fixture
def db_server(db_runs: dict[str, Any]) -> Iterator[str]:
    with running(create_server(db_url=db_runs["url"], port=0)) as url:
        yield url


# -- runs and run detail -----------------------------------------------------------------


def test_runs_from_trace_file(file_server: str, file_runs: dict[str, Any]) -> None:
    runs = file_runs["runs"]
    body = get_json(file_server + "api/runs")
    by_id = {r["id"]: r for r in body["runs"]}
    assert set(by_id) == {r.id for r in runs.values()}
    saga = by_id[runs["saga"].id]
    assert (saga["workflow"], saga["status"]) == (file_runs["workflows"]["saga"], "rolled_back")
    assert saga["error"] == "NonRetryableError: no courier"
    assert saga["created_at"] <= saga["finished_at"]
    assert isinstance(saga["duration_ms"], int)
    assert by_id[runs["simple"].id]["status"] == "completed"
    assert body["counts"]["completed"] == 2 and body["counts"]["rolled_back"] == 1
    assert body["source"]["kind"] == "file"
    assert file_runs["workflows"]["saga"] in body["workflows"]

    only = get_json(file_server + f"api/runs?workflow={file_runs['workflows']['simple']}")
    assert [r["id"] for r in only["runs"]] == [runs["simple"].id]
    assert sum(only["counts"].values()) == 1
    done = get_json(file_server + "api/runs?status=completed")
    assert {r["status"] for r in done["runs"]} == {"completed"}
    assert len(get_json(file_server + "api/runs?status=failed,rolled_back")["runs"]) == 1


def test_run_detail_from_trace_file(file_server: str, file_runs: dict[str, Any]) -> None:
    run = file_runs["runs"]["saga"]
    d = get_json(file_server + f"api/runs/{run.id}")
    steps = [(s["name"], s["status"], s["attempts"]) for s in d["steps"]]
    assert steps == [
        ("validate", "completed", 1),
        ("charge", "compensated", 2),
        ("gift", "skipped", 0),
        ("reserve", "compensated", 1),
        ("ship", "failed", 1),
    ]
    charge = d["steps"][1]
    assert charge["max_attempts"] == 3
    assert [(b["phase"], b["outcome"]) for b in charge["attempt_log"]] == [
        ("run", "retry"),
        ("run", "completed"),
        ("compensate", "compensated"),
    ]
    assert charge["attempt_log"][0]["error"] == "ConnectionError: gateway timeout"
    assert all(isinstance(b["duration_ms"], int) for b in charge["attempt_log"])
    assert d["steps"][4]["error"] == "NonRetryableError: no courier"
    assert d["compensations"] == ["reserve", "charge"]
    assert d["run"]["status"] == "rolled_back"
    assert d["run"]["input"] == {"password": "***"}  # traces are redacted at the source
    assert [e["type"] for e in d["events"]][:2] == ["workflow:start", "step:start"]
    assert d["events"][-1]["type"] == "workflow:error"
    assert {e["run_id"] for e in d["events"]} == {run.id}


def test_run_detail_from_database_is_redacted(db_server: str, db_runs: dict[str, Any]) -> None:
    saga, waiting = db_runs["runs"]["saga"], db_runs["runs"]["wait"]
    status, _, raw = fetch(db_server + f"api/runs/{saga.id}")
    assert status == 200
    for secret in (b"hunter2", CARD.encode(), b"tok_live_123"):
        assert secret not in raw
    d = json.loads(raw)
    assert d["run"]["input"] == {"password": "***", "card": "***"}
    assert d["steps"][1]["output"] == {"token": "***"}
    assert [s["status"] for s in d["steps"]] == [
        "completed",
        "compensated",
        "skipped",
        "compensated",
        "failed",
    ]
    assert d["steps"][1]["max_attempts"] == 3
    assert d["definition"]["name"] == saga.workflow
    assert d["compensations"] == ["reserve", "charge"]

    w = get_json(db_server + f"api/runs/{waiting.id}")
    assert w["run"]["status"] == "suspended"
    assert [s["status"] for s in w["steps"]] == ["completed", "suspended", "pending"]
    assert w["steps"][1]["waiting_for"] == "approved"

    body = get_json(db_server + "api/runs")
    assert body["source"] == {"kind": "db", "label": db_runs["url"]}
    assert body["counts"]["suspended"] == 1 and body["counts"]["rolled_back"] == 1
    assert sorted(body["workflows"]) == sorted([saga.workflow, waiting.workflow])
    assert [r["id"] for r in get_json(db_server + "api/runs?status=suspended")["runs"]] == [
        waiting.id
    ]


def test_step_traceback_in_run_detail(tmp_path: Path, file_server: str, file_runs: Any) -> None:
    """A failed step's traceback comes with the database source's run (as plain JSON text);
    trace files carry none, and their steps say so."""
    url = f"sqlite:///{tmp_path}/flux.db"
    engine = _engine(SqlStorage(url))

    def boom(ctx: Any) -> None:
        raise NonRetryableError(XSS)

    run = engine.execute(workflow(_name("tb")).step("ok", lambda ctx: 1).step("boom", boom))
    engine.close()
    text = raised_traceback(ValueError(XSS))
    server = create_server(db_url=url, port=0)
    assert isinstance(server.source, DbSource)
    store_traceback(server.source.storage, run.id, "boom", text)
    with running(server) as base:
        status, _, raw = fetch(base + f"api/runs/{run.id}")
        assert status == 200 and b"<script>" not in raw  # JSON escapes it, same value
        steps = {s["name"]: s for s in json.loads(raw)["steps"]}
    assert steps["boom"]["traceback"] == text and "<script>alert(1)</script>" in text
    assert steps["ok"]["traceback"] is None

    saga = get_json(file_server + f"api/runs/{file_runs['runs']['saga'].id}")
    assert {s["traceback"] for s in saga["steps"]} == {None}


@pytest.mark.parametrize("source", ["file", "db"])
def test_events_filters(source: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(f"{source}_server")
    runs = request.getfixturevalue(f"{source}_runs")["runs"]
    saga = runs["saga"]
    everything = get_json(url + "api/events")["events"]
    assert {e["run_id"] for e in everything} == {r.id for r in runs.values()}
    assert [e["ts"] for e in everything] == sorted(e["ts"] for e in everything)

    mine = get_json(url + f"api/events?run={saga.id}")["events"]
    assert {e["run_id"] for e in mine} == {saga.id}
    by_wf = get_json(url + f"api/events?workflow={saga.workflow}")["events"]
    assert [e["id"] for e in by_wf] == [e["id"] for e in mine]
    errors = get_json(url + f"api/events?run={saga.id}&type=step:error,step:retry")["events"]
    assert [e["type"] for e in errors] == ["step:retry", "step:error"]

    cut = mine[len(mine) // 2]["ts"]
    later = get_json(url + f"api/events?run={saga.id}&since={cut}")["events"]
    assert later and all(e["ts"] > cut for e in later)
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert get_json(url + f"api/events?since={future}")["events"] == []

    last_two = get_json(url + f"api/events?run={saga.id}&limit=2")
    assert [e["id"] for e in last_two["events"]] == [e["id"] for e in mine[-2:]]
    assert last_two["truncated"] is True


# -- errors and security -----------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "api/runs?status=done",
        "api/runs?status=completed,nope",
        "api/runs?limit=0",
        "api/runs?limit=ten",
        "api/runs?offset=-1",
        "api/runs?colour=red",
        "api/runs?workflow=a&workflow=b",
        "api/events?type=step:explode",
        "api/events?since=yesterday",
        "api/events?limit=100000",
        "api/events?run=" + "x" * 65,
        "api/events?workflow=%00",
        "api/runs/some-id?x=1",
    ],
)
def test_bad_query_values_are_400(file_server: str, query: str) -> None:
    status, headers, body = fetch(file_server + query)
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]


def test_unknown_run_and_path_are_404_json(file_server: str) -> None:
    for path in ("api/runs/no-such-run", "api/runs/" + "r" * 80, "api/nothing", "favicon.ico"):
        status, headers, body = fetch(file_server + path)
        assert status == 404, path
        assert headers["Content-Type"] == "application/json"
        assert "error" in json.loads(body)
    status, headers, _ = fetch(file_server + "api/runs", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_database_outage_is_503_without_secrets(
    file_runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = create_server(trace_file=file_runs["path"], port=0)

    def down(*args: Any) -> Any:
        raise StorageError("database error (postgresql://flux:***@db/flux): connection refused")

    monkeypatch.setattr(server.source, "runs", down)
    with running(server) as url:
        status, headers, body = fetch(url + "api/runs")
    assert status == 503 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"].endswith("connection refused")


def test_headers_content_types_and_csp(file_server: str) -> None:
    expected = {
        "": "text/html; charset=utf-8",
        "static/viewer.js": "text/javascript; charset=utf-8",
        "static/viewer.css": "text/css; charset=utf-8",
        "api/runs": "application/json",
        "api/nope": "application/json",
    }
    for path, content_type in expected.items():
        _, headers, _ = fetch(file_server + path)
        assert headers["Content-Type"] == content_type, path
        assert headers["Cache-Control"] == "no-store"
        assert headers["X-Content-Type-Options"] == "nosniff"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
    status, headers, body = fetch(file_server, method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0

    page = fetch(file_server)[2].decode()
    assert re.findall(r"<script\b[^>]*>", page) == ['<script src="/static/viewer.js" defer>']
    assert not re.search(r"\son\w+=|\sstyle=|javascript:", page)
    js = fetch(file_server + "static/viewer.js")[2].decode()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", js)


def test_script_in_names_is_plain_json(file_server: str, file_runs: dict[str, Any]) -> None:
    run = file_runs["runs"]["xss"]
    for path in (f"api/runs/{run.id}", f"api/events?run={run.id}"):
        status, headers, raw = fetch(file_server + path)
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert b"<script>" not in raw and b"&lt;" not in raw  # \u003c, not HTML entities
        assert XSS in raw.decode("unicode_escape")
    d = json.loads(fetch(file_server + f"api/runs/{run.id}")[2])
    assert d["steps"][0]["name"] == XSS
    assert {e["step"] for e in d["events"] if e["step"]} == {XSS}


def test_binds_loopback_by_default(file_runs: dict[str, Any]) -> None:
    assert inspect.signature(create_server).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(create_server).parameters["port"].default == 4280
    server = create_server(trace_file=file_runs["path"], port=0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1" and port > 0
        assert server.url == f"http://127.0.0.1:{port}/"
    finally:
        server.server_close()


def test_other_host_names_are_refused(file_server: str) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 cannot read traces."""
    status, _, body = fetch(file_server + "api/runs", headers={"Host": "evil.example:4280"})
    assert status == 403 and b"host" in body
    port = file_server.rsplit(":", 1)[1].strip("/")
    assert fetch(file_server + "api/runs", headers={"Host": f"localhost:{port}"})[0] == 200


def test_create_server_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        create_server()
    with pytest.raises(ValueError, match="exactly one"):
        create_server(trace_file=tmp_path / "t.ndjson", db_url="sqlite:///x.db")
    with pytest.raises(ValueError, match="port"):
        create_server(trace_file=tmp_path / "t.ndjson", port=70000)
    with pytest.raises(FileNotFoundError, match="no SQLite database"):
        create_server(db_url=f"sqlite:///{tmp_path}/missing.db", port=0)
    assert not (tmp_path / "missing.db").exists()


def test_serve_prints_url_and_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    closed: list[bool] = []

    def interrupted(self: ViewerServer, poll_interval: float = 0.5) -> None:
        raise KeyboardInterrupt

    original_close = ViewerServer.server_close
    monkeypatch.setattr(ViewerServer, "serve_forever", interrupted)
    monkeypatch.setattr(
        ViewerServer, "server_close", lambda self: (closed.append(True), original_close(self))
    )
    serve(trace_file=tmp_path / "t.ndjson", port=0)
    out = capsys.readouterr().out
    assert re.search(r"http://127\.0\.0\.1:\d+/", out) and "stopped" in out
    assert closed == [True]


# -- the trace file is followed as it changes ---------------------------------------------


def test_trace_file_is_reread_and_bad_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "live.ndjson"
    with running(create_server(trace_file=path, port=0)) as url:
        assert get_json(url + "api/runs")["runs"] == []  # no file yet

        sink = JsonFileTraceSink(path)
        engine = _engine(MemoryStorage(), [sink])
        first = engine.execute(workflow(_name("live")).step("a", lambda ctx: 1))
        assert [r["id"] for r in get_json(url + "api/runs")["runs"]] == [first.id]

        line = json.dumps(TraceEvent(type="workflow:start", run_id="late", workflow="w").to_dict())
        with path.open("a") as f:
            f.write('{broken\n[1, 2]\n"text"\nnull\n')
            f.write('{"ts": 5, "run_id": "r", "workflow": "w", "type": "step:start"}\n')
            f.write('{"ts": "2024-01-01T00:00:00Z", "run_id": 7, "workflow": "w", "type": "x"}\n')
            f.write('{"ts": "2024-01-01T00:00:00Z", "run_id": "r", "workflow": "w", ')
            f.write('"type": "step:start", "attempt": "one"}\n')
            f.write(line[:25])  # a line still being written
        assert [r["id"] for r in get_json(url + "api/runs")["runs"]] == [first.id]
        with path.open("a") as f:
            f.write(line[25:])  # complete but no newline yet: shown
        assert {r["id"] for r in get_json(url + "api/runs")["runs"]} == {first.id, "late"}
        with path.open("a") as f:
            f.write("\n")
        second = engine.execute(workflow(_name("live")).step("b", lambda ctx: 2))
        ids = {r["id"] for r in get_json(url + "api/runs")["runs"]}
        assert ids == {first.id, "late", second.id}

        JsonFileTraceSink(path, reset=True)  # truncated: read from the start again
        assert get_json(url + "api/runs")["runs"] == []
        third = engine.execute(workflow(_name("live")).step("c", lambda ctx: 3))
        assert [r["id"] for r in get_json(url + "api/runs")["runs"]] == [third.id]
        engine.close()


@pytest.mark.parametrize(
    ("types", "status"),
    [
        ([], "pending"),
        (["workflow:start", "step:start"], "running"),
        (["workflow:start", "step:start", "step:suspend"], "suspended"),
        (["step:suspend", "signal:received", "step:start"], "running"),
        (["step:start", "step:complete", "workflow:complete"], "completed"),
        (["step:error", "workflow:rollback_start", "step:compensate"], "rolling_back"),
        (["workflow:rollback_start", "workflow:rollback_complete"], "rolled_back"),
        (["step:error", "workflow:error"], "failed"),
        (["workflow:start", "workflow:cancel"], "cancelled"),
        (["step:error", "workflow:error", "workflow:start"], "running"),  # retried
        (["workflow:complete", "hook:error"], "completed"),
    ],
)
def test_run_status_from_events(types: list[str], status: str) -> None:
    events = [TraceEvent(type=t, run_id="r", workflow="w") for t in types]
    assert derive_run_status(events) == status
