#!/usr/bin/env python3
"""Verify a fluxcelery deployment end to end, stage by stage.

    python scripts/verify.py                       # every stage
    python scripts/verify.py --skip install,tests  # just migrate, doctor and the end-to-end run
    python scripts/verify.py --test-cmd "python -m pytest -q"

Stages, in order; the first failure stops the run (later stages are reported "not run"):

1. install   ``pip install -e ".[dev]"`` (``--install-cmd``)
2. migrate   ``fluxcelery db upgrade`` (the Python API when the CLI has no such command)
3. doctor    starts a verification worker, then ``fluxcelery doctor`` (skipped with a note when
             the CLI has no doctor command)
4. tests     ``--test-cmd`` (default: the unit tests, ``-m "not integration and not browser"``)
5. e2e       a worker and the AMQP consumer as subprocesses; publishes ``--orders`` orders
             (``--fail-ratio`` forced to fail at charge-payment) plus ``--malformed`` bad
             messages; checks every order became exactly one run, forced failures show
             ``step:retry`` and ``step:compensate`` and end ``rolled_back``, ``retry`` completes
             one of them, and the bad messages are in the dead-letter queue with a reason.

Settings: ``--database-url`` (``FLUX_DATABASE_URL``, else SQLite in .flux/) and ``--broker``
(``FLUX_BROKER_URL``, else RabbitMQ on 127.0.0.1). Exit code 0 when every stage that ran
passed, 1 otherwise, 2 on a usage error. Logs of each stage go to ``--log-dir``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("install", "migrate", "doctor", "tests", "e2e")
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_TESTS = f"{sys.executable} -m pytest -q -m 'not integration and not browser'"
FAST_ORDERS = {"ORDERS_BACKOFF_BASE": "0.05", "ORDERS_BACKOFF_MAX": "0.2"}
MARK = {"ok": "✓", "fail": "✗", "skip": "-", "not run": " "}


class StageFailed(Exception):
    """A stage's check did not hold; the message says what was expected and seen."""


@dataclass
class Result:
    stage: str
    status: str = "not run"  # ok | fail | skip | not run
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Context:
    args: argparse.Namespace
    log_dir: Path
    env: dict[str, str]
    queue_suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    worker: subprocess.Popen[bytes] | None = None
    cli: dict[str, bool] = field(default_factory=dict)

    @property
    def step_queue(self) -> str:
        return f"flux.verify.{self.queue_suffix}"

    @property
    def ingress_queue(self) -> str:
        return f"orders.workflow.verify.{self.queue_suffix}"


# -- helpers ----------------------------------------------------------------------------------
def run(ctx: Context, name: str, cmd: list[str], timeout: float | None = None) -> str:
    """Run a command with the stage environment; raise ``StageFailed`` with its output tail."""
    log = ctx.log_dir / f"{name}.log"
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=ctx.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        log.write_bytes(exc.output or b"")
        raise StageFailed(f"{shlex.join(cmd)} timed out after {timeout}s (log: {log})") from None
    except OSError as exc:
        raise StageFailed(f"cannot run {cmd[0]}: {exc}") from None
    out = proc.stdout.decode(errors="replace")
    log.write_text(out)
    if proc.returncode != 0:
        raise StageFailed(
            f"{shlex.join(cmd)} exited {proc.returncode} (log: {log})\n{_tail(out, 25)}"
        )
    return out


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def fluxcelery_cli() -> list[str]:
    exe = Path(sys.executable).with_name("fluxcelery")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from fluxcelery.cli import main; sys.exit(main())"]


def cli_has(ctx: Context, *command: str) -> bool:
    """Whether the ``fluxcelery`` CLI works and has ``command`` (probed once per command)."""
    key = " ".join(command)
    if key not in ctx.cli:
        try:
            proc = subprocess.run(
                [*fluxcelery_cli(), *command, "--help"],
                cwd=ROOT,
                env=ctx.env,
                capture_output=True,
                timeout=60,
                check=False,
            )
            ctx.cli[key] = proc.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ctx.cli[key] = False
    return ctx.cli[key]


def start_worker(ctx: Context) -> None:
    if ctx.worker is not None and ctx.worker.poll() is None:
        return
    log_path = ctx.log_dir / "worker.log"
    log_file = log_path.open("wb")
    cmd = [sys.executable, "-m", "celery", "-A", "fluxcelery", "worker", "-P", "prefork"]
    cmd += ["-c", "2", "-Q", ctx.step_queue, "-n", f"verify-{ctx.queue_suffix}@%h"]
    cmd += ["--without-mingle", "--without-gossip", "-l", "INFO"]
    ctx.worker = subprocess.Popen(
        cmd, cwd=ROOT, env=ctx.env, stdout=log_file, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if " ready." in log_path.read_text(errors="replace"):
            return
        if ctx.worker.poll() is not None:
            break
        time.sleep(0.2)
    tail = _tail(log_path.read_text(errors="replace"), 25)
    stop_process(ctx.worker)
    ctx.worker = None
    raise StageFailed(f"the verification worker did not start (log: {log_path})\n{tail}")


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- stages -----------------------------------------------------------------------------------
def stage_install(ctx: Context) -> str:
    run(ctx, "install", shlex.split(ctx.args.install_cmd), timeout=900)
    return ctx.args.install_cmd


def stage_migrate(ctx: Context) -> str:
    if cli_has(ctx, "db", "upgrade"):
        out = run(ctx, "migrate", [*fluxcelery_cli(), "db", "upgrade"], timeout=120)
        return _tail(out, 1) or "fluxcelery db upgrade"
    code = (
        "import sys\n"
        "from fluxcelery.storage.sql import SqlStorage, redact_url\n"
        "from fluxcelery.storage.migrate import upgrade\n"
        "url = sys.argv[1]\n"
        "before, after = upgrade(SqlStorage(url, auto_migrate=False))\n"
        "print(f'{redact_url(url)}: {before} -> {after}')\n"
    )
    out = run(ctx, "migrate", [sys.executable, "-c", code, ctx.env["FLUX_DATABASE_URL"]], 120)
    return _tail(out, 1) + " (Python API: the CLI has no `db upgrade` yet)"


def stage_doctor(ctx: Context) -> str:
    if not cli_has(ctx, "doctor"):
        raise Skip("`fluxcelery doctor` is not available in this install")
    if not ctx.args.no_worker:
        start_worker(ctx)
    out = run(ctx, "doctor", [*fluxcelery_cli(), "doctor"], timeout=120)
    checks = [line.split()[1] for line in out.splitlines() if line[:1] in ("✓", "!")]
    return f"{len(checks)} checks passed: {', '.join(checks)}"


def stage_tests(ctx: Context) -> str:
    out = run(ctx, "tests", shlex.split(ctx.args.test_cmd), timeout=3600)
    return _tail(out, 1)


def stage_e2e(ctx: Context) -> str:
    from e2e_check import EndToEnd  # scripts/ is on sys.path (this file's folder)

    if ctx.env["FLUX_BROKER_URL"].startswith("memory://"):
        raise StageFailed("the end-to-end stage needs RabbitMQ: pass --broker amqp://...")
    start_worker(ctx)
    if cli_has(ctx, "consume"):
        consumer_cmd = [*fluxcelery_cli(), "consume"]
    else:
        consumer_cmd = [sys.executable, "-m", "fluxcelery.ingress"]
    consumer_cmd += ["--queue", ctx.ingress_queue, "--workflow", "order-fulfillment"]
    log_path = ctx.log_dir / "consumer.log"
    with log_path.open("wb") as log_file:
        consumer = subprocess.Popen(
            consumer_cmd,
            cwd=ROOT,
            env=ctx.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        check = EndToEnd(
            broker_url=ctx.env["FLUX_BROKER_URL"],
            database_url=ctx.env["FLUX_DATABASE_URL"],
            ingress_queue=ctx.ingress_queue,
            step_queue=ctx.step_queue,
            orders=ctx.args.orders,
            fail_ratio=ctx.args.fail_ratio,
            malformed=ctx.args.malformed,
            timeout=ctx.args.timeout,
        )
        try:
            summary = check.run(alive=lambda: consumer.poll() is None)
        except AssertionError as exc:
            raise StageFailed(
                f"{exc}\nconsumer log ({log_path}):\n"
                f"{_tail(log_path.read_text(errors='replace'), 15)}"
            ) from None
        finally:
            stop_process(consumer)
            check.cleanup()
    return summary


class Skip(Exception):
    """The stage cannot run here; reported, not a failure."""


STAGE_FUNCS: dict[str, Callable[[Context], str]] = {
    "install": stage_install,
    "migrate": stage_migrate,
    "doctor": stage_doctor,
    "tests": stage_tests,
    "e2e": stage_e2e,
}


# -- driver -----------------------------------------------------------------------------------
@contextmanager
def worker_teardown(ctx: Context) -> Iterator[None]:
    try:
        yield
    finally:
        stop_process(ctx.worker)
        if ctx.worker is not None:
            with suppress(Exception):
                from e2e_check import delete_queues

                delete_queues(ctx.env["FLUX_BROKER_URL"], [ctx.step_queue])


def run_stages(ctx: Context, skip: set[str], out: Any = sys.stdout) -> list[Result]:
    results = [Result(name) for name in STAGES]
    failed = False
    with worker_teardown(ctx):
        for result in results:
            if result.stage in skip:
                result.status, result.detail = "skip", "skipped (--skip)"
            elif failed:
                result.detail = "(an earlier stage failed)"
            else:
                print(f"  … {result.stage}", file=out, flush=True)
                started = time.monotonic()
                try:
                    result.detail = STAGE_FUNCS[result.stage](ctx)
                    result.status = "ok"
                except Skip as exc:
                    result.status, result.detail = "skip", str(exc)
                except StageFailed as exc:
                    result.status, result.detail, failed = "fail", str(exc), True
                except Exception as exc:
                    result.status, failed = "fail", True
                    result.detail = f"{type(exc).__name__}: {exc}"
                result.seconds = time.monotonic() - started
            report_line(result, out)
    return results


def report_line(result: Result, out: Any) -> None:
    first, *rest = (result.detail or "").splitlines() or [""]
    timing = f"{result.seconds:6.1f}s" if result.status in ("ok", "fail") else " " * 7
    print(f"{MARK[result.status]} {result.stage:<8} {timing}  {result.status:<7} {first}", file=out)
    if result.status == "fail":
        for line in rest:
            print(f"      {line}", file=out)
    out.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--skip", default="", help=f"comma-separated stages to skip: {','.join(STAGES)}")
    p.add_argument("--test-cmd", default=DEFAULT_TESTS)
    p.add_argument("--install-cmd", default=f"{sys.executable} -m pip install -q -e .[dev]")
    p.add_argument("--database-url", default=os.environ.get("FLUX_DATABASE_URL"))
    p.add_argument("--broker", default=os.environ.get("FLUX_BROKER_URL") or DEFAULT_BROKER)
    p.add_argument("--orders", type=int, default=20)
    p.add_argument("--fail-ratio", type=float, default=0.1)
    p.add_argument("--malformed", type=int, default=5)
    p.add_argument("--timeout", type=float, default=120.0, help="e2e: seconds to wait for runs")
    p.add_argument("--no-worker", action="store_true", help="doctor: do not start a worker")
    p.add_argument("--log-dir", default=str(ROOT / ".flux" / "verify"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # e2e_check, publish_order
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(STAGES)
    if unknown:
        p.error(f"unknown stage(s) {sorted(unknown)}; stages are {','.join(STAGES)}")
    if args.orders < 1 or not 0 <= args.fail_ratio <= 1 or args.malformed < 0:
        p.error("--orders must be >= 1, --fail-ratio within 0..1, --malformed >= 0")
    with suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args=args, log_dir=log_dir, env={})
    ctx.env = {
        **FAST_ORDERS,
        **os.environ,
        "FLUX_BROKER_URL": args.broker,
        "FLUX_DATABASE_URL": args.database_url or "sqlite:///.flux/flux.db",
        "FLUX_WORKFLOWS": os.environ.get("FLUX_WORKFLOWS") or "workflows.order",
        "FLUX_QUEUE": ctx.step_queue,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    ctx.env.pop("FLUX_INGRESS_URL", None)
    print(f"fluxcelery verify (logs in {log_dir})")
    started = time.monotonic()
    results = run_stages(ctx, skip)
    failed = next((r for r in results if r.status == "fail"), None)
    total = time.monotonic() - started
    if failed:
        print(f"\nFAILED after {total:.1f}s; first failing stage: {failed.stage}")
        return 1
    ran = sum(1 for r in results if r.status == "ok")
    print(f"\nOK: {ran} stage(s) passed in {total:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
