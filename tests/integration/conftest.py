"""Real `celery -A fluxcelery worker` subprocesses on RabbitMQ (or Redis) with PostgreSQL.

Each test session uses its own queue and PostgreSQL schema, and stops only the worker
processes it started (by PID / process group)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import AMQP_URL, PG_BASE, REDIS_URL, require_service

from fluxcelery import FluxEngine, SqlStorage
from fluxcelery.celery.app import build_app
from fluxcelery.settings import Settings

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))

BROKERS = {"rabbitmq": AMQP_URL, "redis": REDIS_URL}


class WorkerProcess:
    """One `celery worker` subprocess in its own process group."""

    def __init__(
        self,
        env: dict[str, str],
        name: str,
        log_path: Path,
        concurrency: int = 2,
        pool: str = "prefork",
    ) -> None:
        self.env = env
        self.name = name
        self.log_path = log_path
        self.concurrency = concurrency
        self.pool = pool
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 40.0) -> WorkerProcess:
        self.log_path.write_text("")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                CELERY,
                "-A",
                "fluxcelery",
                "worker",
                "-P",
                self.pool,
                "-c",
                str(self.concurrency),
                "-Q",
                self.env["FLUX_QUEUE"],
                "-n",
                f"{self.name}@%h",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "INFO",
            ],
            env=self.env,
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log_path.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"worker {self.name} did not start:\n{tail}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the worker and its pool children (a machine losing power)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

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
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def it_schema() -> Iterator[str]:
    """A PostgreSQL schema for this session's workers, with the side-effect table."""
    require_service("postgres")
    schema = f"flux_it_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(PG_BASE, pool_pre_ping=True)  # chaos tests kill connections
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(
            sa.text(
                f'CREATE TABLE "{schema}".it_effects (id serial primary key, run_id text, '
                "step text, what text)"
            )
        )
    yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


class Cluster:
    """Producer-side engine plus the worker processes of one broker."""

    def __init__(self, broker: str, db_url: str, tmp: Path) -> None:
        self.broker = broker
        self.db_url = db_url
        self.tmp = tmp
        self.queue = f"flux_it_{broker}_{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "FLUX_BROKER_URL": BROKERS[broker],
            "FLUX_DATABASE_URL": db_url,
            "FLUX_WORKFLOWS": "it_workflows",
            "FLUX_QUEUE": self.queue,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        }
        self.env.pop("FLUX_TRACE_FILE", None)
        settings = Settings(
            broker_url=BROKERS[broker],
            database_url=db_url,
            workflows=("it_workflows",),
            celery={"task_default_queue": self.queue},
        )
        self.app = build_app(settings)
        self.storage = SqlStorage(db_url)
        self.engine = FluxEngine(storage=self.storage, app=self.app)
        self.workers: list[WorkerProcess] = []

    def worker(
        self,
        name: str,
        concurrency: int = 2,
        pool: str = "prefork",
        queue: str | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """Start a worker on this cluster's queue (or ``queue``), with ``env`` added."""
        env = {**self.env, **(env or {})}
        if queue:
            env["FLUX_QUEUE"] = queue
        w = WorkerProcess(
            env,
            f"{name}-{uuid.uuid4().hex[:4]}",
            self.tmp / f"{name}-{len(self.workers)}.log",
            concurrency,
            pool,
        )
        self.workers.append(w)
        return w.start()

    def effects(self, run_id: str, step: str | None = None) -> int:
        q = "SELECT count(*) FROM it_effects WHERE run_id = :r"
        params: dict[str, Any] = {"r": run_id}
        if step:
            q += " AND step = :s"
            params["s"] = step
        with self.storage.engine.connect() as conn:
            return int(conn.execute(sa.text(q), params).scalar() or 0)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        try:
            with self.app.connection_for_write() as conn:
                ch = conn.default_channel
                for q in {self.queue, *(w.env["FLUX_QUEUE"] for w in self.workers)}:
                    try:
                        ch.queue_delete(q)
                    except Exception:
                        pass
        except Exception:
            pass
        self.engine.close()


@pytest.fixture(scope="module", params=["rabbitmq", "redis"])
def cluster(
    request: pytest.FixtureRequest, it_schema: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A producer engine and one prefork worker (-c 2) on the given broker."""
    require_service(request.param)
    c = Cluster(request.param, it_schema, tmp_path_factory.mktemp(request.param))
    import it_workflows  # noqa: F401  (the producer knows the definitions too)

    c.engine.register(*[wf for wf in _it_workflows()])
    try:
        c.worker("main", concurrency=2)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def rabbit_cluster(it_schema: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A producer engine on RabbitMQ with no worker started (tests start their own)."""
    require_service("rabbitmq")
    c = Cluster("rabbitmq", it_schema, tmp_path_factory.mktemp("crash"))
    c.engine.register(*_it_workflows())
    try:
        yield c
    finally:
        c.close()


def _it_workflows() -> list[Any]:
    import it_workflows as w

    return [
        w.four,
        w.retrying,
        w.approval,
        w.fix_then_retry,
        w.saga,
        w.crash,
        w.timeouts,
        w.long_wait,
        w.slow_retry,
        w.declined,
        w.missing,
        w.long_step,
        w.progressing,
        w.cancellable,
        w.par_race,
        w.par_nap,
        w.par_each,
        w.par_pair,
        w.par_each_all,
        w.par_cancel,
        w.par_each_nap,
        w.signed,
    ]
