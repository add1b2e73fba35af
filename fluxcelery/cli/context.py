"""What every ``fluxcelery`` command shares: settings, the engine, output and errors.

Commands read the same settings as workers (``celeryconfig`` / ``FLUX_*``), overridden by
the global ``--db``, ``--broker`` and ``--workflows`` options. The error policy lives here so
that it is the same for every command: exit 0 ok, 1 the operation failed, 2 usage (malformed
JSON, a bad option); one ``error:`` line on stderr, plus a JSON error object on stdout with
``--json``; never a traceback (unless ``FLUX_DEBUG`` is set).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import ops
from ..celery.app import build_app
from ..core.errors import (
    FluxError,
    InvalidInput,
    PayloadTooLarge,
    RunNotFound,
    SerializationError,
    WorkflowNotFound,
)
from ..core.jsoncodec import JsonTextError, parse_json_text
from ..core.records import FluxResult
from ..core.states import MOVING_RUN, UNSUCCESSFUL_RUN, values
from ..declarative.sources import import_workflow_source, is_workflow_file
from ..engine import FluxEngine
from ..handle import RunTimeout
from ..settings import Settings, load_settings
from ..storage.sql import SqlStorage, redact_url
from ..trace.configured import sinks_from_settings
from .doctor import config_module
from .render import fmt_ms, make_console, status_text, steps_table, terminal_safe

if TYPE_CHECKING:
    from rich.console import Console

    from ..core.records import FluxResult, RunState
    from ..engine import FluxEngine
    from ..handle import RunHandle
    from ..storage.base import Storage

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Runs that end like this make ``run --wait`` (and a followed retry/signal) exit 1.
FAILED_RUN = values(UNSUCCESSFUL_RUN)
#: Workflows that ship with fluxcelery, imported on demand when a run of theirs is touched.
BUNDLED = {"demo-order": "fluxcelery.cli.demo"}


class CliError(Exception):
    """An error the CLI reports as one line, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, code: str = "cli_error"):
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code


@dataclasses.dataclass
class Cli:
    """Global options and the engine built from them (once per invocation)."""

    db: str | None = None
    broker: str | None = None
    workflows: str | None = None
    json: bool = False
    _settings: Settings | None = None
    _engine: FluxEngine | None = None
    _app: Any = None
    _console: Console | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            base = load_settings()
            # celeryconfig's own ``broker_url`` rides along in ``celery`` and build_app
            # applies it last; drop it so that the broker chosen here is the one used.
            celery = {k: v for k, v in base.celery.items() if k != "broker_url"}
            self._settings = dataclasses.replace(
                base,
                celery=celery,
                broker_url=self.broker or base.broker_url,
                database_url=self.db or base.database_url,
                workflows=_split(self.workflows) if self.workflows is not None else base.workflows,
            )
        return self._settings

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = make_console()
        return self._console

    def sources(self) -> dict[str, str]:
        """Where each setting came from, for ``doctor``."""

        name, path = config_module()
        fallback = f"{name} or default" if path else "default"

        def origin(option: str | None, flag: str, env: str) -> str:
            if option is not None:
                return flag
            return env if os.environ.get(env) else fallback

        return {
            "broker": origin(self.broker, "--broker", "FLUX_BROKER_URL"),
            "database": origin(self.db, "--db", "FLUX_DATABASE_URL"),
            "workflows": origin(self.workflows, "--workflows", "FLUX_WORKFLOWS"),
        }

    def app(self) -> Any:
        """A Celery app on the effective settings (``--broker`` included)."""
        if self._app is None:
            self._app = build_app(self.settings)
        return self._app

    def engine(self, *, must_exist: bool = True) -> FluxEngine:
        """The engine on the configured database. ``must_exist``: refuse to create a new
        SQLite file (a command run in the wrong directory should say so, not show nothing)."""
        if self._engine is None:
            s = self.settings
            if must_exist:
                _require_database(s.database_url)
            sinks = sinks_from_settings(s)
            # Our own app on a real broker, so that the broker checked is the one used; the
            # embedded broker keeps the process-wide app its in-process worker runs on.
            app = self.app() if self.broker or not s.embedded else None
            storage = SqlStorage(s.database_url)
            try:
                self._engine = FluxEngine(storage=storage, trace=sinks, app=app)
            except Exception as exc:
                if isinstance(exc, FluxError):
                    raise
                raise CliError(
                    f"database {redact_url(s.database_url)} is not usable: {_first_line(exc)}"
                ) from exc
        return self._engine

    def import_workflows(self) -> list[str]:
        """Import the workflow modules (and load the workflow files) so that their
        definitions are registered."""
        modules = list(self.settings.workflows)
        where = "--workflows" if self.workflows is not None else "FLUX_WORKFLOWS"
        for name in modules:
            try:
                import_workflow_source(name)
            except Exception as exc:
                what = "load workflow file" if is_workflow_file(name) else "import workflow module"
                detail = str(exc) if isinstance(exc, FluxError) else _first_line(exc)
                raise CliError(
                    f"{where}: cannot {what} {name!r}: {detail}",
                    EXIT_USAGE if self.workflows is not None else EXIT_FAILED,
                    "workflow_import_error",
                ) from exc
        return modules

    def resolve_run_id(self, run_id: str) -> str:
        """The full id of ``run_id``, which may be a unique prefix of it (tables show the
        first 8 characters): a missing run raises ``RunNotFound`` (exit 1), a prefix that
        matches several runs is a usage error (exit 2)."""
        given = run_id.strip().removesuffix("…")
        engine = self.engine()
        if given and engine.get(given) is not None:
            return given
        if len(given) < MIN_PREFIX:
            raise CliError(
                f"Run not found: {run_id} (an id shorter than {MIN_PREFIX} characters must "
                "be whole)",
                code=RunNotFound.code,
            )
        matches = ids_with_prefix(engine.storage, given)
        if not matches:
            raise RunNotFound(run_id)
        if len(matches) > 1:
            raise CliError(
                f"run id prefix {given!r} is ambiguous: it matches {matches[0]}, {matches[1]}"
                f"{' and more' if len(matches) > 2 else ''}; give more characters",
                EXIT_USAGE,
                "ambiguous_run_id",
            )
        return matches[0]

    def definitions_for(self, run_id: str) -> None:
        """Import the configured workflows, and a bundled one when the run is one of ours."""
        self.import_workflows()
        state = self.engine().get(run_id)
        if state is not None and state.workflow in BUNDLED:
            importlib.import_module(BUNDLED[state.workflow])

    def out(self, data: Any, render: Callable[[Console], None]) -> None:
        """One JSON document with ``--json``, else the readable form."""
        if self.json:
            click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        else:
            render(self.console)

    def export_env(self) -> None:
        """Hand the global options to a tool that reads settings itself (Flower, viewer)."""
        for value, env in (
            (self.db, "FLUX_DATABASE_URL"),
            (self.broker, "FLUX_BROKER_URL"),
            (self.workflows, "FLUX_WORKFLOWS"),
        ):
            if value is not None:
                os.environ[env] = value

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._app is not None:
            self._app.close()  # its broker connection pool
            self._app = None


pass_cli = click.make_pass_decorator(Cli, ensure=True)

#: A shorter RUN_ID must match whole: ``show 3f2`` would pick a run nearly at random.
MIN_PREFIX = 4


def ids_with_prefix(storage: Storage, prefix: str, limit: int = 3) -> list[str]:
    """Up to ``limit`` run ids that start with ``prefix``, sorted (asked of the store:
    ``Storage.run_ids_with_prefix``)."""
    return storage.run_ids_with_prefix(prefix, limit)


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _first_line(exc: BaseException | str) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _require_database(url: str) -> None:
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except Exception as exc:  # the parser's message quotes the URL, password included
        raise CliError("invalid database URL (expected dialect://…)", EXIT_USAGE) from exc
    db = parsed.database
    is_file = parsed.drivername.startswith("sqlite") and db and db != ":memory:"
    if is_file and not Path(str(db)).expanduser().exists():
        raise CliError(
            f"no database at {url} (nothing has run here yet: try `fluxcelery demo`, "
            "or pass --db / set FLUX_DATABASE_URL)"
        )


def parse_json_option(option: str, text: str | None) -> Any:
    """``JSON`` or ``@file`` (``@-`` reads stdin); malformed input is a usage error."""
    if text is None:
        return None
    source = text
    if text.startswith("@"):
        path = text[1:]
        try:
            data: bytes | str = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            raise CliError(f"{option}: cannot read {path}: {exc.strerror}", EXIT_USAGE) from exc
    else:
        data = source
    try:
        return parse_json_text(data)
    except JsonTextError as exc:
        raise CliError(f"{option} is not valid JSON: {exc}", EXIT_USAGE, "invalid_json") from exc


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def parse_json_object(option: str, text: str | None) -> dict[str, Any] | None:
    """Run input: ``parse_json_option`` that must give a JSON object, as the AMQP ingress
    requires; anything else is ``InvalidInput`` (exit 2) before anything is stored."""
    value = parse_json_option(option, text)
    if text is None or isinstance(value, dict):
        return value
    given = f"{option} {text}" if text.startswith("@") else option
    raise InvalidInput(f"{given} must be a JSON object, got {_json_type(value)}")


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` on a subcommand too (``fluxcelery runs --json``), same as the global one."""

    def enable(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(Cli).json = True

    return click.option(
        "--json",
        "json_output",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=enable,
        help="Print one JSON document instead of tables.",
    )(f)


# -- errors -------------------------------------------------------------------------------
def classify(exc: BaseException) -> tuple[int, str, str, str]:
    """(exit code, error type, stable code, one-line message) for any error."""

    if isinstance(exc, CliError):
        return exc.exit_code, "CliError", exc.code, str(exc)
    if isinstance(exc, click.UsageError):
        msg = exc.format_message()
        if exc.ctx is not None:
            msg += f" (see '{exc.ctx.command_path} --help')"
        return EXIT_USAGE, type(exc).__name__, "usage", msg
    if isinstance(exc, click.ClickException):
        return exc.exit_code, type(exc).__name__, "cli_error", exc.format_message()
    if isinstance(exc, (InvalidInput, SerializationError, PayloadTooLarge)):
        return EXIT_USAGE, type(exc).__name__, exc.code, str(exc)
    if isinstance(exc, WorkflowNotFound):
        hint = "; list the module that defines it in --workflows or FLUX_WORKFLOWS"
        return EXIT_FAILED, type(exc).__name__, exc.code, str(exc) + hint
    if isinstance(exc, FluxError):
        return EXIT_FAILED, type(exc).__name__, exc.code, str(exc)
    if isinstance(exc, RunTimeout):
        return EXIT_FAILED, "RunTimeout", "run_timeout", f"{exc} (check: fluxcelery doctor)"
    return EXIT_FAILED, type(exc).__name__, "internal_error", f"{type(exc).__name__}: {exc}"


def fail_line(message: str) -> int:
    """An outcome already shown on stdout (a failed run, a failed check): one stderr line
    and exit 1, without a second JSON document."""

    click.echo(f"error: {terminal_safe(message)}", err=True)
    return EXIT_FAILED


def report_error(exc: BaseException, json_mode: bool) -> int:

    exit_code, type_, code, message = classify(exc)
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    if json_mode:
        error = {"type": type_, "code": code, "message": line, "exit_code": exit_code}
        click.echo(json.dumps({"error": error}, ensure_ascii=False))
    click.echo(f"error: {terminal_safe(line)}", err=True)
    return exit_code


class LevelFormatter(logging.Formatter):
    """``info: …``, ``warning: …``, ``error: …``: each record labelled by its own level
    (optionally after a timestamp), control characters escaped, and an exception as its
    last line instead of a traceback (unless ``FLUX_DEBUG`` is set)."""

    def __init__(self, *, timestamps: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:

        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            if os.environ.get("FLUX_DEBUG"):
                message += "\n" + self.formatException(record.exc_info)
            else:
                message += f" ({_first_line(record.exc_info[1])})"
        prefix = self.formatTime(record) + " " if self.timestamps else ""
        label = record.levelname.lower()
        return f"{prefix}{label}: {terminal_safe(message, multiline=True)}"


def setup_logging(level: int | str | None = None, *, timestamps: bool = False) -> None:
    """Log records to stderr through ``LevelFormatter`` (added once, when nothing else
    configured logging); ``level`` sets the root level (default: warnings and up)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h.formatter, LevelFormatter)]
    if not root.handlers:
        ours = [logging.StreamHandler()]
        root.addHandler(ours[0])
        root.setLevel(logging.WARNING)
        # Its plugin list at INFO when a tool (Flower) lowers the root level: noise here.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    for handler in ours:
        handler.setFormatter(LevelFormatter(timestamps=timestamps))
    if level is not None:
        root.setLevel(level.upper() if isinstance(level, str) else level)


def _undecodable_argument(argv: list[str]) -> CliError | None:
    """Python decodes arguments that are not UTF-8 with stand-ins (lone surrogates) that no
    database, JSON or terminal takes: refuse them here, with the argument and byte at fault,
    rather than as an internal error wherever they end up."""
    for position, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            try:  # the bytes as given: b"w\xff" shows as w\xff
                raw = arg.encode("utf-8", "surrogateescape")
                shown = raw.decode("utf-8", "backslashreplace")
                what = "byte 0x" + arg[exc.start].encode("utf-8", "surrogateescape").hex()
            except UnicodeEncodeError:  # a surrogate that came from elsewhere
                shown = arg.encode("utf-8", "backslashreplace").decode("utf-8")
                what = f"U+{ord(arg[exc.start]):04X}"
            return CliError(
                f"argument {position} ({shown}) is not valid UTF-8 ({what} at "
                f"character {exc.start})",
                EXIT_USAGE,
                "invalid_argument",
            )
    return None


def run(
    command: click.Command,
    argv: list[str],
    prog_name: str,
    *,
    help_if_empty: bool = True,
    **extra: Any,
) -> int:
    """Invoke the CLI and turn every outcome into an exit code and at most one error line."""
    if not argv and help_if_empty:
        argv = ["--help"]
    options = argv[: argv.index("--")] if "--" in argv else argv
    json_mode = "--json" in options
    setup_logging()
    bad = _undecodable_argument(argv)
    if bad is not None:
        return report_error(bad, json_mode)
    try:
        rv = click.Command.main(command, argv, prog_name=prog_name, standalone_mode=False, **extra)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except Exception as exc:
        if os.environ.get("FLUX_DEBUG"):
            raise
        return report_error(exc, json_mode)
    return rv if isinstance(rv, int) else EXIT_OK


# -- helpers shared by commands ----------------------------------------------------------
def parse_choices(
    values: tuple[str, ...], allowed: tuple[str, ...], option: str
) -> list[str] | None:
    """Repeated and comma-separated values (``--status failed,rolled_back``), validated."""
    out = [v.strip() for value in values for v in value.split(",") if v.strip()]
    bad = [v for v in out if v not in allowed]
    if bad:
        raise click.BadParameter(
            f"{', '.join(map(repr, bad))} (choose from {', '.join(allowed)})", param_hint=option
        )
    return out or None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str) -> timedelta:
    """``30d``, ``12h``, ``15m``, ``90s`` or plain seconds."""
    raw = text.strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in _UNITS else (raw, "s")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise click.BadParameter(
            f"{text!r} is not a duration (e.g. 30d, 12h, 15m, 90s)", param_hint=option
        )
    return timedelta(seconds=value * _UNITS[unit])


def _result_dict(cli_obj: Cli, result: FluxResult) -> dict[str, Any]:
    engine = cli_obj.engine()
    data = result.to_dict()
    for key in ("input", "data", "results"):
        data[key] = engine.redact(data[key])
    for step in data["steps"]:
        step["output"] = engine.redact(step["output"])
    return data


def print_result(cli_obj: Cli, result: FluxResult) -> int:
    """Show a settled run; exit 1 when it ended failed, rolled back or cancelled."""

    data = _result_dict(cli_obj, result)

    def render(console: Console) -> None:
        from rich.text import Text

        line = Text(f"Run {terminal_safe(data['id'])}  {terminal_safe(data['workflow'])}  ")
        line.append_text(status_text(data["status"]))
        line.append(f"  {fmt_ms(data['duration_ms'])}")
        console.print(line)
        console.print(steps_table(data["steps"]))
        if data["error"]:
            console.print(Text(f"error: {terminal_safe(data['error'], multiline=True)}", "red"))
        waiting = [s for s in data["steps"] if s["status"] == "suspended"]
        run_id = terminal_safe(data["id"])
        if waiting and waiting[0].get("kind") == "approval":
            step = terminal_safe(waiting[0]["name"])
            console.print(
                Text(
                    f"waiting for a decision on approval '{step}': fluxcelery approve {run_id} "
                    f"--by NAME  (or: fluxcelery reject {run_id} --by NAME --reason TEXT)"
                )
            )
        elif waiting:
            name = terminal_safe(waiting[0]["waiting_for"])
            hint = f"fluxcelery signal {run_id} {name} --payload '{{...}}'"
            console.print(Text(f"waiting for signal '{name}': {hint}"))

    cli_obj.out(data, render)
    if data["status"] in FAILED_RUN:
        return fail_line(f"run {data['id']} ended {data['status']}: {data['error']}")
    return EXIT_OK


def follow_run(cli_obj: Cli, handle: RunHandle, action: str, wait: bool, timeout: float) -> int:
    """After signal/retry/recover: show where the run is now. Local runs have already run
    in this process; runs on the embedded broker are waited for (this process is their
    worker); runs on real workers are waited for with ``--wait``."""
    state = handle.state()
    settled = state.executor == "local" or not is_active(state)
    if not settled and (wait or cli_obj.settings.embedded):
        return print_result(cli_obj, handle.get(timeout=timeout))
    if settled:
        return print_result(cli_obj, FluxResult.from_state(state))
    row = ops.run_row(state)

    def render(console: Console) -> None:
        from rich.text import Text

        run_id = terminal_safe(state.id)
        console.print(
            Text(
                f"{terminal_safe(action)}: run {run_id} is {state.status.value}; it continues "
                f"on the workers (follow it: fluxcelery show {run_id})"
            )
        )

    cli_obj.out(row, render)
    return EXIT_OK


def is_active(state: RunState) -> bool:
    return state.status in MOVING_RUN


def load_extension(module: str, attr: str, what: str) -> Callable[..., Any]:
    """Import an optional part of fluxcelery on demand; a missing one is one error line."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module
        if module == missing or module.startswith(missing + "."):
            raise CliError(f"{what} is not available: module {module} is missing") from exc
        raise CliError(
            f"{what} needs the {missing!r} package: {exc} (pip install 'fluxcelery[flower]')"
        ) from exc
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise CliError(f"{what} is not available: {module}.{attr} is missing")
    return fn
