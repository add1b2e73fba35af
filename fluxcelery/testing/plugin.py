"""The pytest plugin of ``fluxcelery.testing`` (registered by the ``pytest11`` entry point
``fluxcelery``, so installing fluxcelery is enough): fixtures ``flux_clock``, ``flux_engine``
and ``flux_worker``, and the option ``--flux-broker``.

Every fixture is function-scoped: each test has its own clock, its own SQLite file and, with a
worker, its own queue.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from ..engine import FluxEngine
from ..storage.sql import SqlStorage
from .clock import FluxClock
from .worker import ClockDispatcher, FluxWorker, build_test_app

#: The broker of ``flux_worker`` when ``--flux-broker`` is not given: in this process.
DEFAULT_BROKER = "memory://"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fluxcelery", "fluxcelery workflow tests")
    group.addoption(
        "--flux-broker",
        dest="flux_broker",
        default=None,
        metavar="URL",
        help="broker of the flux_worker fixture, e.g. amqp://guest:guest@127.0.0.1:5672// "
        f"(default: the ini value flux_broker, else {DEFAULT_BROKER})",
    )
    parser.addini("flux_broker", "broker of the flux_worker fixture", default="")


def flux_broker_url(config: pytest.Config) -> str:
    """The broker ``flux_worker`` uses: ``--flux-broker``, the ``flux_broker`` ini value, or
    ``memory://``."""
    return str(config.getoption("flux_broker") or config.getini("flux_broker") or DEFAULT_BROKER)


@pytest.fixture
def flux_clock() -> FluxClock:
    """The test's clock (``FluxClock``): engines built by these fixtures stamp transitions
    with it, skip their backoff and countdowns on it, and ``flux_clock.advance(seconds)``
    fails the waits (``wait_for`` and approval timeouts) that fall due."""
    return FluxClock()


@pytest.fixture
def flux_engine_options() -> dict[str, Any]:
    """Keyword arguments ``flux_engine`` passes to ``FluxEngine`` (``default_retries``,
    ``backoff``, ``trace``, ``on``, ``storage``...): override this fixture to change them."""
    return {}


@pytest.fixture
def flux_celery_app(request: pytest.FixtureRequest, flux_clock: FluxClock) -> Celery:
    """The Celery app of ``flux_engine``'s runs started with ``start``: on the broker of
    ``--flux-broker`` (default ``memory://``), a queue of this test's own, countdowns passing
    at once on ``flux_clock``."""
    return build_test_app(flux_broker_url(request.config), flux_clock)


@pytest.fixture(scope="session")
def flux_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite database with fluxcelery's tables, made once per session: each
    ``flux_engine`` starts on a copy (a copy takes milliseconds, migrating a new file ~0.1 s)."""
    path = tmp_path_factory.mktemp("flux-template") / "flux.db"
    storage = SqlStorage(f"sqlite:///{path}")
    storage.init()
    storage.close()
    return path


@pytest.fixture
def flux_engine(
    tmp_path_factory: pytest.TempPathFactory,
    flux_sqlite_template: Path,
    flux_clock: FluxClock,
    flux_celery_app: Celery,
    flux_engine_options: dict[str, Any],
) -> Iterator[FluxEngine]:
    """A ``FluxEngine`` on a temporary SQLite file, on ``flux_clock``'s time: ``execute`` runs
    in this process with backoff skipped; ``start`` sends runs to ``flux_worker`` (request it
    too). Closed at the end of the test."""
    options = dict(flux_engine_options)
    if "storage" not in options:
        path = tmp_path_factory.mktemp("flux") / "flux.db"
        shutil.copyfile(flux_sqlite_template, path)
        options["storage"] = SqlStorage(f"sqlite:///{path}")
    options.setdefault("clock", flux_clock)
    options.setdefault("sleep", flux_clock.sleep)
    options.setdefault("timer", flux_clock.call_later)
    options.setdefault("app", flux_celery_app)
    options.setdefault("dispatcher", ClockDispatcher(flux_celery_app))
    engine = FluxEngine(**options)
    flux_clock.watch(engine)
    yield engine
    engine.close()


@pytest.fixture
def flux_worker(flux_engine: FluxEngine, flux_celery_app: Celery) -> Iterator[FluxWorker]:
    """A real Celery worker thread (``celery.contrib.testing``'s, on the threads pool) that
    runs ``flux_engine``'s runs started with ``flux_engine.start`` or ``flux_worker.run``, on
    ``memory://`` or the broker of ``--flux-broker``; stopped at the end of the test."""
    with FluxWorker(flux_engine, flux_celery_app).running() as worker:
        yield worker
