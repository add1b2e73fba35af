"""Trace sinks: NDJSON appends safely from several processes; redaction; failing sinks."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from fluxcelery import ConsoleLogger, FluxEngine, JsonFileTraceSink, TraceEvent, workflow
from fluxcelery.trace.sinks import read_ndjson


def _writer(path: str, worker: int, n: int) -> None:
    sink = JsonFileTraceSink(path)
    for i in range(n):
        sink.emit(
            TraceEvent(
                type="step:start", run_id=f"r{worker}", workflow="w", step="s" * 200, attempt=i
            )
        )


def test_several_processes_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "trace.ndjson"
    path.write_text('{"type": "workflow:start", "run_id": "old", "workflow": "w"}\n')
    JsonFileTraceSink(path)  # opening never truncates
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 300)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 4 * 300
    parsed = [json.loads(line) for line in lines]  # every line is whole JSON
    for w in range(4):
        attempts = [e["attempt"] for e in parsed if e["run_id"] == f"r{w}"]
        assert attempts == list(range(300))


def test_reset_truncates_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    path.write_text("x\n")
    JsonFileTraceSink(path, reset=True)
    assert path.read_text() == ""


def test_read_ndjson_skips_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    good = TraceEvent(type="step:start", run_id="r", workflow="w").to_dict()
    path.write_text(
        json.dumps(good)
        + "\n\n{broken\n[1,2]\n"
        + '{"ts":5,"run_id":"r","workflow":"w","type":"step:start"}\n'
        + '{"run_id":"r","workflow":"w","type":"step:start","attempt":"one"}\n'
    )
    events = read_ndjson(path)
    assert [e.type for e in events] == ["step:start"]
    assert read_ndjson(tmp_path / "missing.ndjson") == []


def test_event_fields_match_spec(engine: FluxEngine) -> None:
    run = engine.execute(workflow("sink-fields").step("a", lambda c: 1))
    event = engine.traces(run_id=run.id, type="step:complete")[0].to_dict()
    assert list(event) == [
        "id",
        "ts",
        "run_id",
        "workflow",
        "type",
        "status",
        "step",
        "step_index",
        "kind",
        "attempt",
        "max_attempts",
        "duration_ms",
        "error",
        "task_id",
        "worker",
        "meta",
    ]
    assert event["ts"].endswith("Z")
    from fluxcelery.storage.schema import TRACE_COLUMNS

    assert tuple(event) == TRACE_COLUMNS  # the flux_traces columns are the NDJSON keys


def test_secrets_are_redacted_in_traces(make_engine, tmp_path: Path) -> None:
    path = tmp_path / "trace.ndjson"
    eng = make_engine(trace=[JsonFileTraceSink(path)])
    wf = workflow("sink-secrets").step("a", lambda c: None)
    eng.execute(
        wf,
        {
            "user": "ann",
            "password": "hunter2",
            "card_number": "4111",
            "nested": {"api_token": "t0k"},
        },
    )
    text = path.read_text()
    assert "hunter2" not in text and "4111" not in text and "t0k" not in text
    start = next(e for e in read_ndjson(path) if e.type == "workflow:start")
    assert start.meta == {
        "input": {
            "user": "ann",
            "password": "***",
            "card_number": "***",
            "nested": {"api_token": "***"},
        }
    }


class Broken:
    def emit(self, event: TraceEvent) -> None:
        raise OSError("disk full")


class AsyncSink:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def emit(self, event: TraceEvent) -> None:
        self.seen.append(event.type)


def test_failing_and_async_sinks_never_fail_a_run(make_engine) -> None:
    asink = AsyncSink()
    eng = make_engine(trace=[Broken(), asink])
    result = eng.execute(workflow("sink-broken").step("a", lambda c: 1))
    assert result.ok
    assert eng.sinks.errors == 4  # one per event, counted and logged
    import time

    for _ in range(100):
        if len(asink.seen) == 4:
            break
        time.sleep(0.01)
    assert asink.seen == ["workflow:start", "step:start", "step:complete", "workflow:complete"]


def test_console_logger_lines(make_engine) -> None:
    import io

    out = io.StringIO()
    eng = make_engine(trace=[ConsoleLogger(stream=out)])
    eng.execute(workflow("sink-console").step("a", lambda c: 1))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert "sink-console/" in lines[1] and "step:start step=a attempt=1/4" in lines[1]


def test_ndjson_lines_are_the_events_to_dict(make_engine, tmp_path: Path) -> None:
    """The file sink's reused encoder writes exactly what ``json.dumps(to_dict())`` would."""
    path = tmp_path / "trace.ndjson"
    engine = make_engine(trace=[JsonFileTraceSink(path)])
    engine.execute(workflow("sink-lines").step("a", lambda c: {"é": [1.5, None]}), {"x": "ü"})
    lines = path.read_text(encoding="utf-8").splitlines()
    events = engine.traces()
    assert len(lines) == len(events) > 0
    by_id = {e.id: e for e in events}
    for line in lines:
        raw = json.loads(line)
        assert raw == by_id[raw["id"]].to_dict()
        assert line == json.dumps(raw, separators=(",", ":"), ensure_ascii=False)


def test_event_ids_are_unique_across_forked_processes() -> None:
    """Ids are a per-process random prefix and a counter: a child forked as a prefork pool
    forks draws its own prefix, so it never repeats its parent's ids."""
    from fluxcelery.trace.event import new_event_id

    parent = [new_event_id() for _ in range(3)]
    assert len(set(parent)) == 3 and all(len(i) == 32 for i in parent)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave without running pytest's teardown
        try:
            os.write(write_end, " ".join(new_event_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 4096).decode().split()
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    after = [new_event_id() for _ in range(3)]
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(child) == 3
    assert not set(child) & set(parent + after)
    assert {i[:16] for i in child} != {i[:16] for i in parent}


def test_a_trace_file_that_cannot_be_made_never_stops_runs(tmp_path: Path, caplog) -> None:
    """A bad FLUX_TRACE_FILE is logged and left out: the engine (a worker's) still runs."""
    from fluxcelery.settings import Settings
    from fluxcelery.trace.configured import sinks_from_settings

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with caplog.at_level("ERROR", logger="fluxcelery.trace"):
        sinks = sinks_from_settings(Settings(trace_file=str(blocker / "sub" / "trace.ndjson")))
    assert sinks == []
    assert "FLUX_TRACE_FILE=" in caplog.text and "ignored" in caplog.text
    good = sinks_from_settings(Settings(trace_file=str(tmp_path / "ok" / "trace.ndjson")))
    assert [type(s).__name__ for s in good] == ["JsonFileTraceSink"]
