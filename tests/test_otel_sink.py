"""OpenTelemetrySink: a run's events become spans of one trace (whatever process sends them),
each span whole from one event: step attempts from their outcome, the run from its end."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fluxcelery import FluxEngine, NonRetryableError, OpenTelemetrySink, wait_for, workflow
from fluxcelery.cli.doctor import check_otel
from fluxcelery.settings import Settings
from fluxcelery.trace.configured import sinks_from_settings
from fluxcelery.trace.otel import run_trace_ids


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def otel_sink(exporter: InMemorySpanExporter) -> OpenTelemetrySink:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OpenTelemetrySink(tracer_provider=provider)


def spans_of(exporter: InMemorySpanExporter, run_id: str) -> list[ReadableSpan]:
    spans = [
        s
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get("flux.run_id") == run_id
    ]
    # In the order the events were made (equal end times happen: the run's last step and its
    # end can share a microsecond).
    return sorted(spans, key=lambda s: str((s.attributes or {})["flux.event_id"]))


def test_a_run_is_one_trace_of_attempt_spans_and_a_run_span(
    make_engine: Any, otel_sink: OpenTelemetrySink, exporter: InMemorySpanExporter
) -> None:
    calls = {"n": 0}

    def flaky(ctx: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("first try fails")
        return "ok"

    engine: FluxEngine = make_engine(trace=[otel_sink])
    wf = workflow("otel-ok").step("flaky", flaky, retries=1).step("after", lambda c: 1)
    result = engine.execute(wf, {"n": 1})
    assert result.ok
    spans = spans_of(exporter, result.id)
    assert [s.name for s in spans] == [
        "flux.otel-ok.flaky",
        "flux.otel-ok.flaky",
        "flux.otel-ok.after",
        "flux.otel-ok",
    ]
    trace_id, parent_id = run_trace_ids(result.id)
    for span in spans:
        assert span.context is not None and span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == parent_id
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= span.end_time
    retry, success, _after, run = spans
    assert retry.status.status_code == StatusCode.ERROR
    assert retry.status.description == "RuntimeError: first try fails"
    assert retry.attributes is not None and retry.attributes["flux.event"] == "step:retry"
    assert retry.attributes["flux.attempt"] == 1 and retry.attributes["flux.max_attempts"] == 2
    assert success.attributes is not None and success.attributes["flux.attempt"] == 2
    assert success.status.status_code == StatusCode.UNSET
    assert run.attributes is not None and run.attributes["flux.status"] == "completed"
    # The run span covers the run: from its creation to its last event (durations are whole
    # milliseconds, so starts are as exact as that).
    assert run.start_time is not None and run.end_time is not None
    assert run.end_time - run.start_time == result.duration_ms * 1_000_000
    assert retry.start_time is not None and run.start_time <= retry.start_time + 1_000_000


def test_failures_compensation_signals_and_separate_traces(
    make_engine: Any, otel_sink: OpenTelemetrySink, exporter: InMemorySpanExporter
) -> None:
    engine: FluxEngine = make_engine(trace=[otel_sink])

    def boom(ctx: Any) -> None:
        raise NonRetryableError("card declined")

    saga = (
        workflow("otel-saga")
        .step("reserve", lambda c: "r-1", compensate=lambda c: None)
        .step("charge", boom)
    )
    failed = engine.execute(saga, {})
    assert failed.status.value == "rolled_back"
    names = [(s.name, (s.attributes or {})["flux.event"]) for s in spans_of(exporter, failed.id)]
    assert ("flux.otel-saga.charge", "step:error") in names
    assert ("flux.otel-saga.reserve.compensate", "step:compensate") in names
    assert ("flux.otel-saga workflow:rollback_start", "workflow:rollback_start") in names
    assert names[-1] == ("flux.otel-saga", "workflow:error")
    error = next(s for s in spans_of(exporter, failed.id) if s.name == "flux.otel-saga.charge")
    assert error.status.status_code == StatusCode.ERROR

    approval = workflow("otel-wait").step("ask", lambda c: wait_for("approve"))
    waiting = engine.execute(approval, {})
    engine.signal(waiting.id, "approve", {"by": "ann", "api_token": "tok-123456"}).get()
    spans = spans_of(exporter, waiting.id)
    received = next(s for s in spans if s.name == "flux.otel-wait signal:received")
    assert received.start_time == received.end_time  # a moment, not a duration
    meta = json.loads(str((received.attributes or {})["flux.meta"]))
    assert meta["payload"] == {"by": "ann", "api_token": "***"}  # redacted like every trace
    assert "flux.otel-wait.ask" in [s.name for s in spans]  # the suspend ended an attempt
    assert spans[0].context is not None and spans[0].context.trace_id != run_trace_ids(failed.id)[0]


def test_events_sent_by_another_process_join_the_same_trace(
    make_engine: Any, exporter: InMemorySpanExporter
) -> None:
    """A worker and the producer each have their own sink: nothing is shared but the run id."""
    engine: FluxEngine = make_engine()
    result = engine.execute(workflow("otel-replay").step("a", lambda c: 1), {})
    events = engine.traces(run_id=result.id)
    halves = [events[: len(events) // 2], events[len(events) // 2 :]]
    for half in halves:  # two sinks, as in two processes
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        sink = OpenTelemetrySink(tracer_provider=provider)
        for event in half:
            sink.emit(event)
    spans = spans_of(exporter, result.id)
    assert [s.name for s in spans] == ["flux.otel-replay.a", "flux.otel-replay"]
    assert len({s.context.trace_id for s in spans if s.context is not None}) == 1


def test_settings_turn_it_on_for_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [type(s).__name__ for s in sinks_from_settings(Settings(trace_otel=True))] == [
        "OpenTelemetrySink"
    ]
    assert sinks_from_settings(Settings()) == []
    from fluxcelery.settings import load_settings

    monkeypatch.setenv("FLUX_TRACE_OTEL", "1")
    assert load_settings("no_such_module_here").trace_otel is True
    monkeypatch.setenv("FLUX_TRACE_OTEL", "0")
    assert load_settings("no_such_module_here").trace_otel is False


def test_without_opentelemetry_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r'pip install "fluxcelery\[otel\]"'):
        OpenTelemetrySink()


def test_a_missing_opentelemetry_never_fails_runs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """FLUX_TRACE_OTEL=1 without the package: the error is logged and the engine works."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with caplog.at_level("ERROR", logger="fluxcelery.trace"):
        assert sinks_from_settings(Settings(trace_otel=True)) == []
    assert "FLUX_TRACE_OTEL=1 ignored: OpenTelemetrySink needs OpenTelemetry" in caplog.text


def test_doctor_reports_the_otel_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_otel(Settings()) is None  # not asked for: no line
    ok = check_otel(Settings(trace_otel=True))
    assert ok is not None and ok.status == "ok"
    real_find_spec = importlib.util.find_spec

    def without(*missing: str) -> Any:
        return lambda name, *a: None if name in missing else real_find_spec(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", without("opentelemetry.sdk"))
    no_sdk = check_otel(Settings(trace_otel=True))
    assert no_sdk is not None and no_sdk.status == "warn" and "opentelemetry-sdk" in str(no_sdk.fix)
    monkeypatch.setattr(importlib.util, "find_spec", without("opentelemetry"))
    missing = check_otel(Settings(trace_otel=True))
    assert missing is not None and missing.status == "fail"
    assert missing.fix == 'pip install "fluxcelery[otel]"'
