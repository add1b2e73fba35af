"""Helpers shared by the test suite (importable as ``helpers``; tests/ is on the path)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from fluxcelery import Backoff, FluxEngine

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

PG_BASE = os.environ.get("FLUX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("FLUX_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("FLUX_TEST_REDIS", "redis://127.0.0.1:6379/0")

SERVICES = {
    "postgres": ("127.0.0.1", 5432),
    "rabbitmq": ("127.0.0.1", 5672),
    "redis": ("127.0.0.1", 6379),
}

_probe_cache: dict[str, bool] = {}


def service_up(name: str) -> bool:
    if name not in _probe_cache:
        host, port = SERVICES[name]
        try:
            with socket.create_connection((host, port), timeout=1.0):
                _probe_cache[name] = True
        except OSError:
            _probe_cache[name] = False
    return _probe_cache[name]


def require_service(name: str) -> None:
    """Skip (laptop) or fail (CI) when a service is not reachable on loopback."""
    if service_up(name):
        return
    host, port = SERVICES[name]
    msg = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(f"{msg}; start it to run this test")


def no_sleep(_seconds: float) -> None:
    return None


ZERO_BACKOFF = Backoff(base=0.0, factor=1.0, max=0.0, jitter=False)


def event_types(engine: FluxEngine, run_id: str) -> list[str]:
    return [e.type for e in engine.traces(run_id=run_id)]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``predicate`` every 50 ms until it returns something true (returned), or fail
    after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or 'the condition'}")


class RecordingDispatcher:
    """Takes what the engine sends to workers (no worker needed to count starts)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def register(self, wf: Any, default_timeout: float | None) -> None:
        pass

    def dispatch(self, state: Any, wf: Any, nxt: Any, countdown: float | None = None) -> None:
        self.sent.append(state.id)

    def schedule_wait_timeout(self, run_id: str, index: int, seconds: float) -> None:
        pass

    def live_task_ids(self) -> set[str] | None:
        return set()
