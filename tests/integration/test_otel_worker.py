"""FLUX_TRACE_OTEL=1 on real prefork workers: the spans of a run made in different pool
processes all land in the run's one trace."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fluxcelery import RunStatus
from fluxcelery.trace.otel import run_trace_ids

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_worker_spans_join_the_runs_trace(rabbit_cluster, tmp_path: Path) -> None:
    import it_workflows as w

    c = rabbit_cluster
    spans_file = tmp_path / "spans.jsonl"
    c.worker(
        "otel",
        concurrency=2,
        env={
            "FLUX_WORKFLOWS": "it_workflows,otel_setup",
            "FLUX_TRACE_OTEL": "1",
            "OTEL_TEST_SPANS": str(spans_file),
        },
    )
    handles = [c.engine.start(w.four, {"add": i}) for i in range(4)]
    for handle in handles:
        assert handle.get(timeout=60).status == RunStatus.COMPLETED

    expected = ["flux.it-four.a", "flux.it-four.b", "flux.it-four.c", "flux.it-four.d"]
    pids: set[int] = set()
    for handle in handles:
        trace_id, parent_id = run_trace_ids(handle.id)
        deadline = time.monotonic() + 10
        while True:  # the run span may be written just after the run is stored
            lines = spans_file.read_text().splitlines() if spans_file.exists() else []
            spans = [json.loads(line) for line in lines]
            mine = [s for s in spans if s["attributes"].get("flux.run_id") == handle.id]
            if len(mine) >= 5 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sorted(s["name"] for s in mine) == sorted([*expected, "flux.it-four"])
        assert {s["trace_id"] for s in mine} == {trace_id}
        assert {s["parent_span_id"] for s in mine} == {parent_id}
        pids |= {s["pid"] for s in mine}
    # Step tasks ran in both pool processes, and their spans still met in each run's trace.
    assert len(pids) == 2
