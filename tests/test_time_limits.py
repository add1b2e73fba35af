"""Step tasks' Celery time limits resolved from the step's timeout, else the engine's
``default_timeout`` (settings ``FLUX_DEFAULT_TIMEOUT`` for the default engine)."""

from __future__ import annotations

import pytest

from fluxcelery import workflow
from fluxcelery.celery.app import build_app
from fluxcelery.celery.tasks import HARD_LIMIT_MARGIN, register_workflow
from fluxcelery.settings import Settings, load_settings

NO_BROKER = Settings(broker_url="memory://")


def noop(ctx):
    return None


def limits(app, name: str) -> tuple[float | None, float | None]:
    task = app.tasks[name]
    return task.soft_time_limit, task.time_limit


@pytest.mark.parametrize(
    ("step_timeout", "default", "expected"),
    [
        ("unset", 90.0, (90.0, 90.0 + HARD_LIMIT_MARGIN)),
        ("unset", None, (None, None)),
        (5.0, 90.0, (5.0, 5.0 + HARD_LIMIT_MARGIN)),
        (None, 90.0, (None, None)),
    ],
)
def test_limits_come_from_the_resolved_timeout(step_timeout, default, expected) -> None:
    app = build_app(NO_BROKER)
    options = {} if step_timeout == "unset" else {"timeout": step_timeout}
    wf = workflow(f"limits-{default}-{step_timeout}").step("s", noop, **options).freeze()
    [name] = register_workflow(app, wf, default)
    assert limits(app, name) == expected


def test_a_later_registration_sets_the_limits_of_its_engine() -> None:
    app = build_app(NO_BROKER)
    wf = workflow("limits-again").step("s", noop, compensate=noop).freeze()
    register_workflow(app, wf, 30.0)
    names = register_workflow(app, wf, 300.0)
    assert [limits(app, n) for n in names] == [(300.0, 300.0 + HARD_LIMIT_MARGIN)] * 2


@pytest.mark.parametrize(
    ("env", "timeout", "retries"),
    [
        ({}, 30.0, 3),
        ({"FLUX_DEFAULT_TIMEOUT": "90", "FLUX_DEFAULT_RETRIES": "0"}, 90.0, 0),
        ({"FLUX_DEFAULT_TIMEOUT": "none"}, None, 3),
    ],
)
def test_default_engine_settings(monkeypatch, env, timeout, retries) -> None:
    for key in ("FLUX_DEFAULT_TIMEOUT", "FLUX_DEFAULT_RETRIES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings("no_such_config_module")
    assert (settings.default_timeout, settings.default_retries) == (timeout, retries)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("FLUX_DEFAULT_TIMEOUT", "-1"),
        ("FLUX_DEFAULT_TIMEOUT", "soon"),
        ("FLUX_DEFAULT_RETRIES", "x"),
    ],
)
def test_bad_default_settings_name_the_variable(monkeypatch, key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=key):
        load_settings("no_such_config_module")


def test_messages_carry_no_time_limits_of_the_producer() -> None:
    """A worker applies a message's limits over its own: the producer's engine must not
    decide a step's limits (the worker's engine does). Published to a throwaway queue on
    the real RabbitMQ."""
    import uuid

    from celery import signals
    from helpers import AMQP_URL, require_service

    from fluxcelery import FluxEngine, MemoryStorage
    from fluxcelery.celery.dispatch import CeleryDispatcher

    require_service("rabbitmq")
    queue = f"flux_limits_{uuid.uuid4().hex[:8]}"
    app = build_app(Settings(broker_url=AMQP_URL, celery={"task_default_queue": queue}))
    sent: list[tuple[str, object]] = []

    def capture(sender=None, headers=None, **_) -> None:
        sent.append((sender, (headers or {}).get("timelimit")))

    signals.before_task_publish.connect(capture, weak=False)
    try:
        engine = FluxEngine(
            storage=MemoryStorage(), default_timeout=5.0, dispatcher=CeleryDispatcher(app)
        )
        engine.start(workflow("limits-message").step("a", noop).step("b", noop), {})
    finally:
        signals.before_task_publish.disconnect(capture)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
    assert [name for name, _ in sent] == ["flux.limits-message.a"]
    assert list(sent[0][1]) == [None, None]  # type: ignore[call-overload]
    # The tasks this process registered have its engine's limits (used by its workers).
    assert limits(app, "flux.limits-message.a") == (5.0, 5.0 + HARD_LIMIT_MARGIN)
