"""A workflow on pytest-celery's Docker containers (marker ``docker``; SPEC sections 5, 18):
a RabbitMQ broker container from pytest-celery, a PostgreSQL container for the state, and a
worker container built from the repository's Dockerfile running ``celery -A fluxcelery
worker -P prefork`` with this suite's workflows on a volume. The test process is the
producer: it starts runs on the broker's published port and reads their state from the
PostgreSQL container's.

Where no Docker engine answers (none runs on this project's machines) the suite skips and
says why; on a machine with Docker: ``pytest -m docker tests/docker`` (docs/testing.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pytest_celery", reason="pip install 'fluxcelery[testing]' (pytest-celery)")

import docker  # a dependency of pytest-celery
import docker_workflows  # this folder is on sys.path while its tests import
import sqlalchemy as sa
from pytest_celery import (
    DEFAULT_WORKER_CONTAINER_TIMEOUT,
    CeleryBackendCluster,
    CeleryBrokerCluster,
    CeleryTestSetup,
    CeleryTestWorker,
    CeleryWorkerCluster,
    CeleryWorkerContainer,
    RabbitMQTestBroker,
)
from pytest_docker_tools import build, container, fetch, fxtr, volume

from fluxcelery import FluxEngine, RunStatus, SqlStorage, StepStatus
from fluxcelery.celery.app import build_app
from fluxcelery.settings import Settings

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
QUEUE = "flux_docker"
POSTGRES_IMAGE = "postgres:16-alpine"


def _docker_unavailable() -> str | None:
    """Why no Docker engine can be used here (None: one answers)."""
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


_WHY = _docker_unavailable()

pytestmark = [
    pytest.mark.docker,
    pytest.mark.timeout(900),  # the first run builds the worker image
    pytest.mark.skipif(
        _WHY is not None,
        reason=f"no Docker engine answers ({_WHY}); pytest-celery's broker and worker "
        "containers need one: run `pytest -m docker tests/docker` where Docker runs "
        "(docs/testing.md)",
    ),
]


class FluxWorkerContainer(CeleryWorkerContainer):
    """The repository's image (Dockerfile) running a prefork ``celery -A fluxcelery worker``
    on this suite's queue."""

    @classmethod
    def command(cls, *args: str, **kwargs: Any) -> list[str]:
        return [
            "celery",
            "-A",
            "fluxcelery",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-l",
            "INFO",
            "-n",
            f"{cls.worker_name()}@%h",
            "-Q",
            cls.worker_queue(),
            *args,
        ]

    @classmethod
    def worker_name(cls) -> str:
        return "flux_docker_worker"

    @classmethod
    def worker_queue(cls) -> str:
        return QUEUE


flux_worker_image = build(path=str(ROOT), dockerfile="Dockerfile", tag="fluxcelery/docker-suite")

flux_postgres_image = fetch(repository=POSTGRES_IMAGE)

flux_postgres = container(
    image="{flux_postgres_image.id}",
    environment={"POSTGRES_HOST_AUTH_METHOD": "trust"},
    ports={"5432/tcp": None},
    network="{default_pytest_celery_network.name}",
    timeout=120,
)

flux_workflows_volume = volume(
    initial_content={"docker_workflows.py": (HERE / "docker_workflows.py").read_bytes()},
)

flux_worker_container = container(
    image="{flux_worker_image.id}",
    environment=fxtr("flux_worker_env"),
    network="{default_pytest_celery_network.name}",
    volumes={"{flux_workflows_volume.name}": {"bind": "/flux_tests", "mode": "ro"}},
    wrapper_class=FluxWorkerContainer,
    timeout=DEFAULT_WORKER_CONTAINER_TIMEOUT,
    command=FluxWorkerContainer.command(),
)


@pytest.fixture
def flux_worker_env(celery_rabbitmq_broker: RabbitMQTestBroker, flux_postgres: Any) -> dict:
    """The worker container's settings: the broker and PostgreSQL containers by their
    address on the suite's network, and the workflows on the volume."""
    return {
        "FLUX_BROKER_URL": celery_rabbitmq_broker.config()["url"],
        "FLUX_DATABASE_URL": f"postgresql+psycopg://postgres@{flux_postgres.ips.primary}:5432/postgres",
        "FLUX_WORKFLOWS": "docker_workflows",
        "FLUX_QUEUE": QUEUE,
        "PYTHONPATH": "/app:/flux_tests",
    }


@pytest.fixture
def celery_broker_cluster(celery_rabbitmq_broker: RabbitMQTestBroker) -> Iterator[Any]:
    """RabbitMQ only (pytest-celery would also run every test on Redis)."""
    cluster = CeleryBrokerCluster(celery_rabbitmq_broker)
    yield cluster
    cluster.teardown()


@pytest.fixture
def celery_backend_cluster() -> CeleryBackendCluster | None:
    """No result backend: ``RunHandle.get`` reads the state from PostgreSQL."""
    return None


@pytest.fixture
def flux_docker_worker(
    flux_worker_container: FluxWorkerContainer, celery_setup_app: Any
) -> Iterator[Any]:
    """pytest-celery's node for the worker container."""
    worker = CeleryTestWorker(flux_worker_container, app=celery_setup_app)
    yield worker
    worker.teardown()


@pytest.fixture
def celery_worker_cluster(flux_docker_worker: CeleryTestWorker) -> Iterator[Any]:
    """The fluxcelery worker container only (not pytest-celery's default worker)."""
    cluster = CeleryWorkerCluster(flux_docker_worker)
    yield cluster
    cluster.teardown()


@pytest.fixture
def producer(celery_setup: CeleryTestSetup, flux_postgres: Any) -> Iterator[FluxEngine]:
    """This process's engine: runs go to the broker container's published port, state is
    read from the PostgreSQL container's."""
    host, port = flux_postgres.get_addr("5432/tcp")
    url = f"postgresql+psycopg://postgres@{host}:{port}/postgres"
    _wait_for_postgres(url)
    app = build_app(
        Settings(
            broker_url=celery_setup.broker.config()["host_url"],
            database_url=url,
            celery={"task_default_queue": QUEUE},
        )
    )
    engine = FluxEngine(storage=SqlStorage(url), app=app)
    engine.register(docker_workflows.retrying, docker_workflows.saga)
    yield engine
    engine.close()


def _wait_for_postgres(url: str, timeout: float = 60.0) -> None:
    """PostgreSQL's image restarts once after its first start: wait until it answers."""
    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        engine.dispose()


def test_a_retried_step_completes_on_the_worker_container(producer: FluxEngine) -> None:
    result = producer.start(docker_workflows.retrying, {"n": 20}).get(timeout=120)
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.results == {"double": 40, "flaky": 41, "done": 41}
    assert result.step("flaky").attempts == 2
    workers = {e.worker for e in producer.traces(run_id=result.id, type="step:start")}
    assert workers and all(w and w.startswith("flux_docker_worker@") for w in workers)


def test_a_failed_step_compensates_on_the_worker_container(producer: FluxEngine) -> None:
    run_id = f"docker-{uuid.uuid4().hex[:8]}"
    result = producer.start(docker_workflows.saga, {}, run_id=run_id).get(timeout=120)
    assert result.status == RunStatus.ROLLED_BACK
    assert result.error == "RuntimeError: no courier"
    assert result.step("ship").attempts == 2
    assert result.step("charge").status == StepStatus.COMPENSATED
