"""Settings: FLUX_* variables win over celeryconfig, which wins over the defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fluxcelery.celery.app import build_app
from fluxcelery.settings import load_settings


@pytest.fixture
def config_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"flux_test_config_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        'broker_url = "memory://"\n'
        'flux_database_url = "sqlite:///from-config.db"\n'
        'flux_workflows = "a.b, c.d"\n'
        "worker_prefetch_multiplier = 4\n"
        'task_serializer = "pickle"\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in ("FLUX_BROKER_URL", "FLUX_DATABASE_URL", "FLUX_WORKFLOWS"):
        monkeypatch.delenv(key, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_config_module_values_are_used(config_module: str) -> None:
    s = load_settings(config_module)
    assert s.broker_url == "memory://" and s.embedded
    assert s.database_url == "sqlite:///from-config.db"
    assert s.workflows == ("a.b", "c.d")
    assert s.celery["worker_prefetch_multiplier"] == 4
    assert "broker_url" not in s.celery


def test_env_wins_over_config(config_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("FLUX_DATABASE_URL", "sqlite:///from-env.db")
    s = load_settings(config_module)
    app = build_app(s)
    assert app.conf.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert s.database_url == "sqlite:///from-env.db"


def test_json_is_forced_even_if_config_asks_for_pickle(config_module: str) -> None:
    app = build_app(load_settings(config_module))
    assert app.conf.task_serializer == "json"
    assert app.conf.accept_content == ["json"]
    assert app.conf.worker_prefetch_multiplier == 4


def test_defaults_without_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("FLUX_BROKER_URL", "FLUX_DATABASE_URL", "FLUX_WORKFLOWS"):
        monkeypatch.delenv(key, raising=False)
    s = load_settings("no_such_module_for_flux")
    assert s.broker_url == "memory://"
    assert s.database_url == "sqlite:///.flux/flux.db"
    assert s.workflows == ()


def test_max_countdown_reaches_the_app_and_bad_values_are_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLUX_MAX_COUNTDOWN", raising=False)
    assert load_settings("no_such_config_module").max_countdown == 600.0
    monkeypatch.setenv("FLUX_MAX_COUNTDOWN", "90")
    settings = load_settings("no_such_config_module")
    assert settings.max_countdown == 90.0
    assert build_app(settings).conf.flux_max_countdown == 90.0
    for bad in ("soon", "0", "-5", "inf", "nan"):
        monkeypatch.setenv("FLUX_MAX_COUNTDOWN", bad)
        with pytest.raises(ValueError, match="FLUX_MAX_COUNTDOWN must be a number of seconds"):
            load_settings("no_such_config_module")
