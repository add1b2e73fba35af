"""Settings from ``celeryconfig.py`` (when importable) or the environment."""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

from .core.errors import MissingExtra

EMBEDDED_BROKER = "memory://"
#: The longest a delayed message (a wait timeout, a retry's backoff) is held by a worker.
#: RabbitMQ closes the channel of a consumer that holds a delivery unacknowledged longer than
#: its ``consumer_timeout`` (30 minutes by default, 15 in 3.8.15), and the worker exits;
#: Redis delivers it again after its ``visibility_timeout`` (1 hour). Longer delays hop.
DEFAULT_MAX_COUNTDOWN = 600.0


#: URL schemes that need an optional package: (module imported, extra that installs it).
_SCHEME_EXTRAS = {
    "postgresql": ("psycopg", "postgres"),
    "postgres": ("psycopg", "postgres"),
    "redis": ("redis", "redis"),
    "rediss": ("redis", "redis"),
    "sentinel": ("redis", "redis"),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules (tests do that)
        return False


def require_extra(url: str | None, what: str) -> None:
    """Raise ``MissingExtra`` naming the extra to install when ``url`` needs a package that
    is missing: the core install has neither psycopg nor redis, and the error from deep in
    SQLAlchemy or kombu (``No module named 'packaging'`` for Redis) does not say why."""
    if not url:
        return
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    need = _SCHEME_EXTRAS.get(scheme)
    if need is not None and not _importable(need[0]):
        raise MissingExtra(
            f"{what} {scheme}:// needs the {need[0]!r} package, which is not installed: "
            f"pip install 'fluxcelery[{need[1]}]'"
        )


@dataclass(frozen=True)
class Settings:
    broker_url: str = EMBEDDED_BROKER
    database_url: str = "sqlite:///.flux/flux.db"
    workflows: tuple[str, ...] = ()
    trace_file: str | None = None
    #: Send trace events to OpenTelemetry as spans too (``FLUX_TRACE_OTEL=1``).
    trace_otel: bool = False
    result_backend: str | None = None
    max_countdown: float = DEFAULT_MAX_COUNTDOWN
    #: The default engine's ``default_timeout`` (``FLUX_DEFAULT_TIMEOUT``; ``none``: no
    #: limit): step attempts and, on prefork workers, Celery's time limits of steps without
    #: a timeout of their own.
    default_timeout: float | None = 30.0
    #: The default engine's ``default_retries`` (``FLUX_DEFAULT_RETRIES``).
    default_retries: int = 3
    celery: dict[str, Any] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.broker_url.startswith("memory://")


def _split(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(v.strip() for v in value if v and v.strip())


def env_flag(value: str | None, default: Any) -> bool:
    """An on/off variable: unset or empty is ``default``; 0/false/no/off is off."""
    if value is None or not value.strip():
        return bool(default)
    return value.strip().lower() not in ("0", "false", "no", "off")


def _seconds(name: str, value: Any, default: float) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return seconds


def _timeout(value: Any, default: float | None) -> float | None:
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return None
    if value is None:
        return default
    return _seconds("FLUX_DEFAULT_TIMEOUT", value, default or 30.0)


def _retries(value: Any, default: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        retries = int(value)
    except (TypeError, ValueError):
        retries = -1
    if retries < 0:
        raise ValueError(f"FLUX_DEFAULT_RETRIES must be an integer >= 0, got {value!r}")
    return retries


def load_settings(module: str | None = None) -> Settings:
    """``FLUX_*`` variables win; then ``celeryconfig`` (or ``FLUX_CONFIG_MODULE``); then
    the defaults (embedded broker, SQLite in ``.flux/``)."""
    module = module or os.environ.get("FLUX_CONFIG_MODULE", "celeryconfig")
    conf: dict[str, Any] = {}
    try:
        mod = importlib.import_module(module)
        conf = {k: getattr(mod, k) for k in dir(mod) if not k.startswith("_")}
    except ImportError:
        conf = {}
    env = os.environ
    # broker_url/result_backend are Settings fields (where FLUX_* wins), not pass-through.
    owned = {"broker_url", "result_backend"}
    celery_conf = {
        k: v
        for k, v in conf.items()
        if k.islower()
        and not k.startswith("flux_")
        and k not in owned
        and not callable(v)
        and not hasattr(v, "__file__")
    }
    return Settings(
        broker_url=env.get("FLUX_BROKER_URL") or conf.get("broker_url") or EMBEDDED_BROKER,
        database_url=env.get("FLUX_DATABASE_URL")
        or conf.get("flux_database_url")
        or "sqlite:///.flux/flux.db",
        workflows=_split(env.get("FLUX_WORKFLOWS") or conf.get("flux_workflows")),
        trace_file=env.get("FLUX_TRACE_FILE") or conf.get("flux_trace_file"),
        trace_otel=env_flag(env.get("FLUX_TRACE_OTEL"), conf.get("flux_trace_otel", False)),
        result_backend=env.get("FLUX_RESULT_BACKEND") or conf.get("result_backend"),
        max_countdown=_seconds(
            "FLUX_MAX_COUNTDOWN",
            env.get("FLUX_MAX_COUNTDOWN") or conf.get("flux_max_countdown"),
            DEFAULT_MAX_COUNTDOWN,
        ),
        default_timeout=_timeout(
            env.get("FLUX_DEFAULT_TIMEOUT") or conf.get("flux_default_timeout"), 30.0
        ),
        default_retries=_retries(
            env.get("FLUX_DEFAULT_RETRIES") or conf.get("flux_default_retries"), 3
        ),
        celery=celery_conf,
    )


def is_loopback(host: str) -> bool:
    """Whether an address a server binds (or a broker URL names) is reachable from this
    machine only: ``localhost`` or a loopback IP. An empty host means every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
