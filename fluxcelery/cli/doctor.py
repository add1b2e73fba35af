"""``fluxcelery doctor``: one check per thing a deployment needs, each with a fix.

Checks never raise: each returns a ``Check`` whose status is ``ok``, ``fail``, ``warn``,
``info`` or ``skip``. Only ``fail`` makes the command exit 1; a warning is advice (a guest
password on a remote broker), ``info`` a fact (the embedded broker has no workers to ask).
Workers are asked through Celery's inspect API (``active_queues``, ``registered``), the same
broadcast Flower uses. Nothing here writes to the database: migrations are reported, not
applied.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..celery.tasks import HARD_LIMIT_MARGIN, compensate_task_name, step_task_name
from ..settings import Settings, is_loopback
from ..storage.migrate import _config, current_revision, head_revision
from ..storage.sql import SqlStorage, redact_url

BROKER_TIMEOUT = 2.0
#: How long ``doctor`` waits for workers to answer a broadcast (Celery's inspect API).
INSPECT_TIMEOUT = 1.0


@dataclass
class Check:
    name: str
    status: str  # ok | fail | warn | info | skip
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "ok": self.status != "fail",
            "detail": self.detail,
            "fix": self.fix,
            **({"data": self.data} if self.data else {}),
        }


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def config_module() -> tuple[str, str | None]:
    """The settings module name and its file, when importable (``celeryconfig`` by default)."""
    name = os.environ.get("FLUX_CONFIG_MODULE", "celeryconfig")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    return name, (spec.origin if spec is not None else None)


def check_settings(settings: Settings, sources: Mapping[str, str]) -> Check:
    name, path = config_module()
    origin = f"{name} ({path})" if path else f"environment and defaults (no {name} module)"
    workflows = ", ".join(settings.workflows) or "none"
    detail = (
        f"config from {origin}; broker {redact_url(settings.broker_url)} "
        f"[{sources['broker']}]; database {redact_url(settings.database_url)} "
        f"[{sources['database']}]; workflows {workflows} [{sources['workflows']}]"
    )
    data = {
        "config_module": name,
        "config_file": path,
        "broker_url": redact_url(settings.broker_url),
        "database_url": redact_url(settings.database_url),
        "workflows": list(settings.workflows),
        "sources": dict(sources),
    }
    return Check("settings", "ok", detail, data=data)


def _sqlite_file(url: str) -> Path | None:
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except Exception:
        return None
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def check_database(url: str) -> tuple[Check, Check]:
    """Reachability and migration state, without creating or migrating anything."""

    shown = redact_url(url)
    sqlite_file = _sqlite_file(url)
    storage = SqlStorage(url, auto_migrate=False)
    head = head_revision(storage)
    if sqlite_file is not None and not sqlite_file.exists():
        return (
            Check("database", "ok", f"{shown} (file not created yet; created on first use)"),
            Check(
                "migrations",
                "warn",
                f"none applied yet (head {head}); applied on first use",
                fix="fluxcelery db upgrade",
                data={"current": None, "head": head},
            ),
        )
    try:
        server = storage.server_version()
        current = current_revision(storage)
    except Exception as exc:
        storage.close()
        return (
            Check(
                "database",
                "fail",
                f"cannot connect to {shown}: {_first_line(exc)}",
                fix="start the database or point --db / FLUX_DATABASE_URL at it",
            ),
            Check("migrations", "skip", "skipped: database unreachable"),
        )
    storage.close()
    db_check = Check("database", "ok", f"{shown} reachable ({server.strip()})")
    data = {"current": current, "head": head}
    if current == head:
        return db_check, Check("migrations", "ok", f"at head {head}", data=data)
    if current is None:
        detail = f"no fluxcelery tables yet (head {head})"
    elif _known_revision(storage, current):
        detail = f"at {current}, head is {head}"
    else:
        return db_check, Check(
            "migrations",
            "fail",
            f"database is at {current}, which this fluxcelery does not know (head {head})",
            fix="upgrade fluxcelery to the version that migrated this database",
            data=data,
        )
    return db_check, Check("migrations", "fail", detail, fix="fluxcelery db upgrade", data=data)


def _known_revision(storage: Any, revision: str) -> bool:
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(_config(storage)).get_revision(revision) is not None
    except Exception:
        return False


def check_broker(settings: Settings, app: Any) -> Check:
    shown = redact_url(settings.broker_url)
    if settings.embedded:
        return Check(
            "broker",
            "skip",
            f"{shown}: embedded, runs execute in this process; nothing to reach",
        )
    try:
        conn = app.connection_for_write(connect_timeout=BROKER_TIMEOUT)
        try:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.2, timeout=BROKER_TIMEOUT
            )
        finally:
            conn.release()
    except Exception as exc:
        if _refused_login(exc):
            return Check(
                "broker",
                "fail",
                f"broker {shown} refused the login: "
                f"{getattr(exc, 'reply_text', None) or _first_line(exc)}",
                fix="check the user and password in FLUX_BROKER_URL (or --broker), and that "
                "the user may use the vhost",
            )
        return Check(
            "broker",
            "fail",
            f"cannot connect to broker {shown}: {_first_line(exc)}",
            fix="start the broker or point --broker / FLUX_BROKER_URL at it",
        )
    return Check("broker", "ok", f"{shown} reachable")


def _refused_login(exc: BaseException) -> bool:
    """RabbitMQ's 403 ACCESS_REFUSED (a wrong user, password or vhost), or Redis's
    WRONGPASS / NOAUTH: the broker is up and said no, so starting it is not the fix."""
    text = str(exc)
    return (
        getattr(exc, "code", None) == 403
        or "ACCESS_REFUSED" in text
        or "WRONGPASS" in text
        or "NOAUTH" in text
        or type(exc).__name__ == "AuthenticationError"
    )


def check_guest_account(broker_url: str) -> Check | None:
    """RabbitMQ's default guest/guest account on a remote host: insecure, and refused by
    RabbitMQ itself unless someone turned off ``loopback_users``. A warning, not a failure."""
    parts = urlsplit(broker_url)
    if parts.scheme not in ("amqp", "amqps", "pyamqp"):
        return None
    user = parts.username or "guest"
    password = parts.password or "guest"
    host = parts.hostname or "localhost"
    if user != "guest" or password != "guest" or is_loopback(host):
        return None
    return Check(
        "broker auth",
        "warn",
        f"the broker URL uses RabbitMQ's default guest/guest account on {host}",
        fix="create a dedicated RabbitMQ user with its own password",
    )


#: RabbitMQ's default ``consumer_timeout`` (3.8.17 and later): a step task holds its message
#: unacknowledged while it runs (acks late), and past this the broker closes the channel.
CONSUMER_TIMEOUT = 1800.0


def check_step_timeouts(
    settings: Settings, registered: Callable[[], Mapping[str, Any]]
) -> Check | None:
    """On RabbitMQ: steps that may run longer than the default ``consumer_timeout``."""
    if not settings.broker_url.startswith(("amqp", "pyamqp")):
        return None
    long: list[str] = []
    for name, wf in sorted(registered().items()):
        try:
            steps = wf.describe()["steps"]
        except Exception:
            continue  # reported by the workflows check
        for step in steps:
            timeout = settings.default_timeout if step["timeout_default"] else step["timeout"]
            if timeout is None:
                long.append(f"{name}.{step['name']} (no timeout)")
            elif timeout + HARD_LIMIT_MARGIN > CONSUMER_TIMEOUT:
                long.append(f"{name}.{step['name']} ({timeout:g} s)")
    if not long:
        return None
    return Check(
        "step timeouts",
        "warn",
        f"{len(long)} step(s) may run past RabbitMQ's consumer_timeout (30 min by default), "
        f"and the worker running one would exit: {', '.join(long)}",
        fix="raise consumer_timeout in rabbitmq.conf above the longest step, or shorten them",
        data={"steps": long},
    )


def check_otel(settings: Settings) -> Check | None:
    """With ``FLUX_TRACE_OTEL=1``: can spans be made here, and does something export them?"""
    if not settings.trace_otel:
        return None
    if importlib.util.find_spec("opentelemetry") is None:
        return Check(
            "otel",
            "fail",
            "FLUX_TRACE_OTEL=1 but OpenTelemetry is not installed: no spans are sent",
            fix='pip install "fluxcelery[otel]"',
        )
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        return Check(
            "otel",
            "warn",
            "OpenTelemetry API without an SDK: spans are made and dropped",
            fix="pip install opentelemetry-sdk (or opentelemetry-distro with an exporter)",
        )
    return Check("otel", "ok", "trace events also go to the tracer provider each process sets")


def check_workers(
    settings: Settings, app: Any, broker_ok: bool, queue: str
) -> tuple[Check, dict[str, list[str]]]:
    """Which workers are alive, and the queues each consumes (``active_queues``)."""
    if settings.embedded:
        return Check(
            "workers",
            "info",
            f"embedded broker {redact_url(settings.broker_url)}: no remote workers; runs "
            "execute in this process",
        ), {}
    if not broker_ok:
        return Check("workers", "skip", "skipped: no broker connection"), {}
    try:
        replies = app.control.inspect(timeout=INSPECT_TIMEOUT).active_queues() or {}
    except Exception as exc:
        return Check(
            "workers",
            "fail",
            f"asking the workers failed: {_first_line(exc)}",
            fix="check the broker, then start a worker",
        ), {}
    queues = {
        name: sorted(str(q.get("name")) for q in (reply or []) if isinstance(q, dict))
        for name, reply in replies.items()
    }
    if not queues:
        return Check(
            "workers",
            "fail",
            f"no worker answered within {INSPECT_TIMEOUT:g} s, so nothing consumes the step "
            f"queue {queue!r}",
            fix=f"start one: {_worker_command(settings, queue)}",
        ), {}
    names = sorted(queues)
    return Check(
        "workers", "ok", f"{len(names)} alive: {', '.join(names)}", data={"workers": queues}
    ), queues


def _worker_command(settings: Settings, queue: str) -> str:
    mods = ",".join(settings.workflows) or "your.workflows"
    return f"FLUX_WORKFLOWS={mods} FLUX_QUEUE={queue} celery -A fluxcelery worker -l INFO"


def step_queue(settings: Settings, app: Any) -> tuple[str, str]:
    """The queue step tasks are sent to, and where that name comes from."""
    queue = str(app.conf.task_default_queue) if app is not None else "flux"
    if "task_default_queue" in settings.celery:
        return queue, f"task_default_queue in {config_module()[0]}"
    return queue, "FLUX_QUEUE" if os.environ.get("FLUX_QUEUE") else "the default"


def check_queue(
    settings: Settings,
    queue: str,
    source: str,
    queues: Mapping[str, Sequence[str]],
    broker_ok: bool,
) -> tuple[Check, list[str]]:
    """Some live worker consumes the step queue; else every run waits there for good."""
    if not queues:
        why = "no worker answered" if broker_ok else "no broker connection"
        return Check("queue", "skip", f"{queue!r} ({source}): not checked, {why}"), []
    consumers = sorted(name for name, names in queues.items() if queue in names)
    if consumers:
        return Check(
            "queue",
            "ok",
            f"{queue!r} ({source}) consumed by {', '.join(consumers)}",
            data={"queue": queue, "consumers": consumers},
        ), consumers
    others = "; ".join(f"{name}: {', '.join(queues[name]) or 'none'}" for name in sorted(queues))
    return Check(
        "queue",
        "fail",
        f"no live worker consumes the step queue {queue!r} ({source}); they consume: {others}",
        fix=f"start a worker on it ({_worker_command(settings, queue)}), or set FLUX_QUEUE to "
        "the queue the workers consume",
        data={"queue": queue, "consumers": [], "workers": dict(queues)},
    ), []


def expected_tasks(wf: Any) -> list[str]:
    """The Celery task names a worker registers for ``wf``: one per step, one per
    compensation (see ``celery.tasks.register_workflow``)."""

    names = []
    for step in wf.freeze().steps:
        names.append(step_task_name(wf.name, step.name))
        if step.compensate is not None:
            names.append(compensate_task_name(wf.name, step.name))
    return names


def check_tasks(
    app: Any, queue: str, consumers: Sequence[str], registered: Callable[[], Mapping[str, Any]]
) -> list[Check]:
    """The workers on the step queue have the tasks of every registered workflow (a worker
    without them rejects the message as an unregistered task): one line per workflow."""
    if not consumers:
        return [Check("tasks", "skip", f"not checked: no worker consumes {queue!r}")]
    try:
        inspect = app.control.inspect(
            timeout=INSPECT_TIMEOUT, destination=list(consumers), limit=len(consumers)
        )
        replies = inspect.registered() or {}
    except Exception as exc:
        return [Check("tasks", "fail", f"asking the workers failed: {_first_line(exc)}")]
    have = {name: {str(t).split(" ", 1)[0] for t in tasks or []} for name, tasks in replies.items()}
    silent = sorted(set(consumers) - set(have))
    problems: list[Check] = []
    checked = 0
    for name, wf in sorted(registered().items()):
        try:
            wanted = expected_tasks(wf)
        except Exception:
            continue  # a definition without steps: reported by the workflows check
        checked += 1
        lacking = {w: [t for t in wanted if t not in tasks] for w, tasks in sorted(have.items())}
        lacking = {w: missing for w, missing in lacking.items() if missing}
        if not lacking:
            continue
        missing = sorted({t for ts in lacking.values() for t in ts})
        shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        problems.append(
            Check(
                "tasks",
                "fail",
                f"workflow {name!r}: {len(missing)} of its {len(wanted)} task(s) missing on "
                f"{', '.join(lacking)} (consuming {queue!r}): {shown}",
                fix="list its module in FLUX_WORKFLOWS on those workers and restart them",
                data={"workflow": name, "missing": lacking},
            )
        )
    if silent:
        problems.append(
            Check(
                "tasks",
                "warn",
                f"{', '.join(silent)} did not list their tasks within {INSPECT_TIMEOUT:g} s",
            )
        )
    if problems:
        return problems
    return [
        Check(
            "tasks",
            "ok",
            f"the {len(have)} worker(s) on {queue!r} have the tasks of all {checked} registered "
            "workflow(s)",
            data={"workflows": checked, "workers": sorted(have)},
        )
    ]


def check_workflows(
    import_modules: Callable[[], Sequence[str]], registered: Callable[[], Mapping[str, Any]]
) -> Check:
    try:
        import_modules()
    except Exception as exc:
        return Check(
            "workflows",
            "fail",
            _first_line(exc),
            fix="fix the module, or the --workflows / FLUX_WORKFLOWS list",
        )
    found: list[dict[str, Any]] = []
    problems: list[str] = []
    for name, wf in sorted(registered().items()):
        try:
            desc = wf.describe()
        except Exception as exc:
            problems.append(f"{name}: {_first_line(exc)}")
            continue
        found.append(
            {
                "name": name,
                "version": desc["version"],
                "definition_hash": desc["definition_hash"],
                "steps": len(desc["steps"]),
            }
        )
    if not found and not problems:
        return Check(
            "workflows",
            "warn",
            "no workflows registered",
            fix="list the modules that define them in --workflows or FLUX_WORKFLOWS",
        )
    listed = ", ".join(
        w["name"] + (f" v{w['version']}" if w["version"] else "") + f" ({w['definition_hash']})"
        for w in found
    )
    detail = f"{len(found)} registered: {listed}"
    data: dict[str, Any] = {"workflows": found}
    if problems:
        # A builder abandoned half-way (its module caught the DefinitionError): it cannot
        # run, but nothing that can run is affected, so this is a warning.
        data["unusable"] = problems
        return Check(
            "workflows",
            "warn",
            f"{detail}; not usable: {'; '.join(problems)}",
            fix="give those workflows steps, or stop defining them",
            data=data,
        )
    return Check("workflows", "ok", detail, data=data)


def run_checks(
    settings: Settings,
    sources: Mapping[str, str],
    app: Any,
    import_modules: Callable[[], Sequence[str]],
    registered: Callable[[], Mapping[str, Any]],
) -> list[Check]:
    checks = [check_settings(settings, sources)]
    checks.extend(check_database(settings.database_url))
    broker = check_broker(settings, app)
    checks.append(broker)
    guest = check_guest_account(settings.broker_url)
    if guest is not None:
        checks.append(guest)
    queue, source = step_queue(settings, app)
    broker_ok = broker.status == "ok"
    workers, queues = check_workers(settings, app, broker_ok, queue)
    checks.append(workers)
    workflows = check_workflows(import_modules, registered)  # imports them: tasks needs them
    if not settings.embedded:
        queue_check, consumers = check_queue(settings, queue, source, queues, broker_ok)
        checks.append(queue_check)
        checks.append(workflows)
        checks.extend(check_tasks(app, queue, consumers, registered))
    else:
        checks.append(workflows)
    for optional in (check_step_timeouts(settings, registered), check_otel(settings)):
        if optional is not None:
            checks.append(optional)
    return checks
