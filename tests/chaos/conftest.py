"""Fixtures of the chaos suite: a fresh PostgreSQL schema, a RabbitMQ queue, real prefork
workers (``bench.chaos.Worker``) importing ``chaos_workflows``. Services that a test stops
are always started again (see DEVELOPERS.md)."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import AMQP_URL, PG_BASE, require_service

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench import chaos as chaos_bench  # noqa: E402
from fluxcelery import FluxEngine, RunState, SqlStorage  # noqa: E402
from fluxcelery.celery.app import build_app  # noqa: E402
from fluxcelery.settings import Settings  # noqa: E402


class OutageCluster:
    """Producer engine + workers on their own queue and schema."""

    def __init__(self, tmp: Path) -> None:
        import chaos_workflows

        self.tag = uuid.uuid4().hex[:8]
        self.schema = f"flux_outage_{self.tag}"
        self.app_name = f"flux_outage_{self.tag}"
        self.queue = self.schema
        self.tmp = tmp
        self.admin = sa.create_engine(PG_BASE, pool_pre_ping=True)
        with self.admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
        self.db_url = (
            f"{PG_BASE}?application_name={self.app_name}&options=-csearch_path%3D{self.schema}"
        )
        self.storage = SqlStorage(self.db_url)
        self.storage.init()
        chaos_workflows.METADATA.create_all(self.storage.engine)
        settings = Settings(
            broker_url=AMQP_URL,
            database_url=self.db_url,
            workflows=("chaos_workflows",),
            celery={"task_default_queue": self.queue},
        )
        self.engine = FluxEngine(storage=self.storage, app=build_app(settings))
        self.engine.register(chaos_workflows.outage, chaos_workflows.par_outage)
        self.env = {
            **os.environ,
            "FLUX_BROKER_URL": AMQP_URL,
            "FLUX_DATABASE_URL": self.db_url,
            "FLUX_WORKFLOWS": "chaos_workflows",
            "FLUX_QUEUE": self.queue,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        }
        self.env.pop("FLUX_TRACE_FILE", None)
        self.workers: list[chaos_bench.Worker] = []

    def worker(self, concurrency: int = 2) -> chaos_bench.Worker:
        n = len(self.workers)
        w = chaos_bench.Worker(
            self.env, f"outage{n}-{self.tag}", self.tmp / f"worker-{n}.log", concurrency
        )
        self.workers.append(w.start())
        return w

    def get(self, run_id: str) -> RunState | None:
        """``engine.get`` that waits out a database outage."""
        for _ in range(120):
            try:
                return self.engine.get(run_id)
            except Exception:
                time.sleep(0.5)
        raise AssertionError("the database did not come back")

    def wait(self, run_id: str, until: Callable[[RunState], bool], timeout: float) -> RunState:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.get(run_id)
            if state is not None and until(state):
                return state
            time.sleep(0.1)
        logs = "\n".join(w.log_path.read_text(errors="replace")[-2000:] for w in self.workers)
        raise AssertionError(f"run {run_id} never got there: {state}\n{logs}")

    def effects(self, run_id: str) -> int:
        with self.storage.engine.connect() as conn:
            q = sa.text("SELECT count(*) FROM outage_effects WHERE run_id = :r")
            return int(conn.execute(q, {"r": run_id}).scalar() or 0)

    def terminate_backends(self) -> int:
        """``pg_terminate_backend`` on every connection of this schema's workers."""
        with self.admin.begin() as conn:
            q = sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :a AND pid <> pg_backend_pid()"
            )
            return int(conn.execute(q, {"a": self.app_name}).scalar() or 0)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        chaos_bench.ensure_database()
        chaos_bench.ensure_broker()
        try:
            with self.engine.dispatcher().app.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.queue)
        except Exception:
            pass
        self.engine.close()
        with self.admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{self.schema}" CASCADE'))
        self.admin.dispose()


@pytest.fixture
def outage_cluster(tmp_path: Path) -> Iterator[OutageCluster]:
    require_service("postgres")
    require_service("rabbitmq")
    c = OutageCluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def step_starts(c: OutageCluster, run_id: str, step: str) -> list[Any]:
    return [e for e in c.engine.traces(run_id=run_id, type="step:start") if e.step == step]
