"""Two real ``celery -A fluxcelery beat`` processes serve the same ``every=2`` schedule
with one real prefork worker, on RabbitMQ and on Redis, for about 9 seconds: each tick is
published by both beats, and still starts exactly one run (SPEC section 14).

The beats run with the environment a user gives them and no extra configuration
(``FluxScheduler`` comes from ``build_app``); each runs in its own directory, where no
``celerybeat-schedule`` file may appear. Only the processes started here are stopped, by
process group."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import CELERY, Cluster
from helpers import require_service, wait_until

from fluxcelery.schedules import run_id_prefix, run_time

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

#: How long both beats serve the schedule.
SERVE_SECONDS = 9.0
PUBLISHED = re.compile(r"schedule (\S+): published tick (\S+) \(run id (\S+)\)")


class BeatProcess:
    """One ``celery -A fluxcelery beat`` subprocess in its own process group and directory."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / "beat.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BeatProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [CELERY, "-A", "fluxcelery", "beat", "-l", "INFO"],
                env=self.env,
                cwd=str(self.workdir),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_serving(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "serving 1 schedule(s)" in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"beat did not start:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def published(self, name: str) -> list[datetime]:
        return [
            datetime.fromisoformat(tick)
            for schedule, tick, _ in PUBLISHED.findall(self.log())
            if schedule == name
        ]


@pytest.fixture(scope="module", params=["rabbitmq", "redis"])
def beat_cluster(
    request: pytest.FixtureRequest, it_schema: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A cluster (conftest's) whose one prefork worker also imports it_schedules, with a
    schedule name of its own."""
    require_service(request.param)
    c = Cluster(request.param, it_schema, tmp_path_factory.mktemp(f"beat-{request.param}"))
    c.env["FLUX_WORKFLOWS"] = "it_workflows,it_schedules"
    c.env["FLUX_IT_SCHEDULE"] = f"it-every2-{request.param}-{uuid.uuid4().hex[:6]}"
    try:
        c.worker("main", concurrency=2)
        yield c
    finally:
        c.close()


def test_two_beats_start_one_run_per_tick(beat_cluster: Cluster) -> None:
    c = beat_cluster
    name = c.env["FLUX_IT_SCHEDULE"]
    beats = [BeatProcess(dict(c.env), c.tmp / f"beat-{i}") for i in (1, 2)]
    try:
        for beat in beats:
            beat.start()
        for beat in beats:
            beat.wait_serving()
        time.sleep(SERVE_SECONDS)
    finally:
        for beat in beats:
            beat.stop()
    published = [beat.published(name) for beat in beats]
    logs = "\n\n".join(beat.log()[-2000:] for beat in beats)
    # Both beats really published, mostly the same ticks: dedup was exercised.
    assert all(len(p) >= 3 for p in published), logs
    assert len(set(published[0]) & set(published[1])) >= 2, published
    assert all(len(p) == len(set(p)) for p in published), "a beat published a tick twice"
    ticks = sorted(set(published[0]) | set(published[1]))

    def runs_by_tick() -> Counter[datetime]:
        runs = c.engine.list(workflow=name, limit=None)
        return Counter(datetime.fromisoformat(r.input["tick"]) for r in runs)

    wait_until(lambda: set(runs_by_tick()) >= set(ticks), 30, "a run for every published tick")
    wait_until(
        lambda: all(
            r.status.value == "completed" for r in c.engine.list(workflow=name, limit=None)
        ),
        30,
        "the tick runs to complete",
    )
    counts = runs_by_tick()
    # Exactly one run per tick, no gap between the first and the last tick.
    assert set(counts) == set(ticks)
    assert all(n == 1 for n in counts.values()), counts
    assert ticks == [ticks[0] + timedelta(seconds=2 * i) for i in range(len(ticks))], ticks
    # Each run's id derives from the schedule and its tick.
    ids = c.storage.run_ids_with_prefix(run_id_prefix(name), 1000)
    assert sorted(run_time(name, i)[0] for i in ids) == ticks  # type: ignore[index]
    # No celerybeat-schedule file, and both beats said what they serve.
    for beat in beats:
        assert not list(beat.workdir.glob("celerybeat-schedule*")), beat.workdir
        assert f"schedule {name}: workflow {name}, every 2s (UTC)" in beat.log()
    worker_log = c.workers[0].log()
    assert "dropped" not in worker_log
    print(
        f"\n[{c.broker}] ticks={len(ticks)} runs={sum(counts.values())} "
        f"published: beat1={len(published[0])} beat2={len(published[1])} "
        f"both={len(set(published[0]) & set(published[1]))}"
    )
