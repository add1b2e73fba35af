"""Chaos run: order workflows on real prefork workers while workers are SIGKILLed and the
broker and the database restart; then check that nothing was lost or done twice.

    python bench/chaos.py --runs 1000 --kill-every 5 --workers 2 --json bench/results/chaos.json

Needs RabbitMQ and PostgreSQL on loopback and the right to restart them (see DEVELOPERS.md).
Every run gets a fresh PostgreSQL schema and queue, dropped at the end. Exit code 1 when an
invariant fails: a run not terminal (lost), a run with an unexpected outcome, a commit effect
missing or duplicated, or a trace gap.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Short charge backoffs so that forced failures roll back in well under a second. Set before
#: ``workflows.order`` is imported: producer and workers must build the same definition.
ORDER_ENV = {
    "ORDERS_BACKOFF_BASE": "0.05",
    "ORDERS_BACKOFF_MAX": "0.2",
    "ORDERS_CHARGE_RETRIES": "2",
    "ORDERS_CHARGE_TIMEOUT": "10",
    "ORDERS_CHARGE_FAILURE_RATE": "0",
}
os.environ.update(ORDER_ENV)

PG_BASE = os.environ.get("FLUX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("FLUX_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
CELERY = str(Path(sys.executable).with_name("celery"))
TERMINAL = {"completed", "rolled_back", "failed", "cancelled"}
STEPS = ("validate-order", "reserve-stock", "charge-payment", "notify")


# -- services --------------------------------------------------------------------------------
def port_open(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"127.0.0.1:{port} did not come back within {timeout:.0f}s")


def _run(cmd: list[str] | str, timeout: float = 120.0) -> None:
    subprocess.run(
        cmd,
        shell=isinstance(cmd, str),
        check=True,
        timeout=timeout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def restart_broker(down_for: float = 1.0) -> None:
    """Drop every broker connection: stop and start the RabbitMQ application."""
    _run(["rabbitmqctl", "stop_app"])
    time.sleep(down_for)
    _run(["rabbitmqctl", "start_app"])
    wait_port(5672)


def ensure_broker() -> None:
    """Start RabbitMQ when it is down (leave services running)."""
    if port_open(5672):
        return
    try:
        _run(["rabbitmqctl", "start_app"], timeout=60)
    except Exception:
        _run(["rabbitmq-server", "-detached"], timeout=60)
    wait_port(5672)


def _pg_ctl(action: str) -> None:
    _run(f"pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main {action}")


def restart_database(down_for: float = 1.0) -> None:
    """Stop PostgreSQL (every connection dies), wait, start it again."""
    _pg_ctl("stop")
    time.sleep(down_for)
    _pg_ctl("start")
    wait_port(5432)


def ensure_database() -> None:
    if not port_open(5432):
        _pg_ctl("start")
        wait_port(5432)


# -- workers ---------------------------------------------------------------------------------
class Worker:
    """One ``celery -A fluxcelery worker`` (prefork) in its own process group."""

    def __init__(self, env: dict[str, str], name: str, log_path: Path, concurrency: int) -> None:
        self.env = env
        self.name = name
        self.log_path = log_path
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Worker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                CELERY,
                "-A",
                "fluxcelery",
                "worker",
                "-P",
                "prefork",
                "-c",
                str(self.concurrency),
                "-Q",
                self.env["FLUX_QUEUE"],
                "-n",
                f"{self.name}@%h",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "WARNING",
            ],
            env=self.env,
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the main process and its pool children (a machine losing power)."""
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


# -- the run ---------------------------------------------------------------------------------
@dataclass
class ChaosConfig:
    runs: int = 100
    kill_every: float = 5.0
    workers: int = 2
    concurrency: int = 4
    fail_ratio: float = 0.2
    broker_restart: bool = True
    db_restart: bool = True
    settle_timeout: float = 300.0
    chaos_tail: float = 20.0
    rate: float = 20.0
    seed: int | None = None
    workdir: Path | None = None
    log: Callable[[str], None] = print


@dataclass
class ChaosReport:
    runs: int = 0
    completed: int = 0
    failed_as_designed: int = 0
    lost: int = 0
    unexpected: int = 0
    failed_worker_lost: int = 0
    #: Of ``failed_worker_lost``, the runs that were forced to fail later (the kill came first).
    forced_worker_lost: int = 0
    duplicate_commit_effects: int = 0
    missing_commit_effects: int = 0
    trace_gaps: int = 0
    worker_kills: int = 0
    broker_restarts: int = 0
    db_restarts: int = 0
    producer_retries: int = 0
    recovered: int = 0
    wall_time_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.unexpected == 0
            and self.duplicate_commit_effects == 0
            and self.missing_commit_effects == 0
            and self.trace_gaps == 0
            and self.completed + self.failed_as_designed + self.failed_worker_lost == self.runs
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["problems"] = self.problems[:50]
        return out

    def table(self) -> str:
        rows = [
            ("runs", self.runs, ""),
            ("completed", self.completed, ""),
            ("failed as designed (rolled back)", self.failed_as_designed, ""),
            ("failed: kill used the only attempt", self.failed_worker_lost, "retries=0 step"),
            ("lost", self.lost, "must be 0"),
            ("unexpected outcome", self.unexpected, "must be 0"),
            ("duplicate commit effects", self.duplicate_commit_effects, "must be 0"),
            ("missing commit effects", self.missing_commit_effects, "must be 0"),
            ("trace gaps", self.trace_gaps, "must be 0"),
            ("worker kills survived", self.worker_kills, ""),
            ("broker restarts survived", self.broker_restarts, ""),
            ("database restarts survived", self.db_restarts, ""),
            ("producer retries (start)", self.producer_retries, ""),
            ("runs continued by recover()", self.recovered, ""),
            ("wall time (s)", f"{self.wall_time_s:.1f}", ""),
            ("result", "OK" if self.ok else "FAILED", ""),
        ]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value!s:>8}  {note}" for name, value, note in rows)


def make_order(i: int, prefix: str, forced: bool, rng: random.Random) -> dict[str, Any]:
    items = [
        {"sku": f"SKU-{n}", "qty": rng.randint(1, 5)}
        for n in rng.sample(range(100), rng.randint(1, 3))
    ]
    order: dict[str, Any] = {
        "order_id": f"{prefix}-{i:05d}",
        "customer": f"customer-{i}@example.com",
        "items": items,
        "amount": f"{rng.randint(1, 500)}.{rng.randint(0, 99):02d}",
    }
    if forced:
        order["force_fail"] = "charge"
    return order


class Chaos:
    """Owns the schema, queue, workers and producer engine of one chaos run."""

    def __init__(self, cfg: ChaosConfig) -> None:
        import sqlalchemy as sa

        from fluxcelery import FluxEngine, SqlStorage
        from fluxcelery.celery.app import build_app
        from fluxcelery.settings import Settings
        from workflows.order import order

        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.tag = uuid.uuid4().hex[:8]
        self.schema = f"flux_chaos_{self.tag}"
        self.queue = f"flux_chaos_{self.tag}"
        self.workdir = cfg.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / self.schema
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.admin = sa.create_engine(PG_BASE, pool_pre_ping=True)
        with self.admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
        self.db_url = f"{PG_BASE}?options=-csearch_path%3D{self.schema}"
        self.env = {
            **os.environ,
            **ORDER_ENV,
            "FLUX_BROKER_URL": AMQP_URL,
            "FLUX_DATABASE_URL": self.db_url,
            "FLUX_WORKFLOWS": "workflows.order",
            "FLUX_QUEUE": self.queue,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.env.pop("FLUX_TRACE_FILE", None)
        settings = Settings(
            broker_url=AMQP_URL,
            database_url=self.db_url,
            workflows=("workflows.order",),
            celery={"task_default_queue": self.queue},
        )
        self.storage = SqlStorage(self.db_url)
        self.storage.init()
        self.engine = FluxEngine(storage=self.storage, app=build_app(settings))
        self.workflow = order
        self.engine.register(order)
        from workflows.order import ensure_tables

        ensure_tables(self.storage.engine)
        self.workers: list[Worker] = []
        self.report = ChaosReport(runs=cfg.runs)
        self.run_ids: dict[str, bool] = {}  # run_id -> forced to fail
        self._lock = threading.Lock()

    # -- workers
    def spawn(self) -> Worker:
        n = len(self.workers)
        w = Worker(
            self.env, f"chaos{n}-{self.tag}", self.workdir / f"worker-{n}.log", self.cfg.concurrency
        )
        self.workers.append(w.start())
        return w

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    def kill_one(self) -> None:
        live = self.live_workers()
        if not live:
            return
        victim = self.rng.choice(live)
        victim.kill()
        self.report.worker_kills += 1
        self.cfg.log(f"  killed worker {victim.name} (kill #{self.report.worker_kills})")
        self.spawn()

    # -- producer
    def start_run(self, run_id: str, order: dict[str, Any], stop: threading.Event) -> None:
        """``engine.start`` with the same run id until it lands (it is idempotent)."""
        from fluxcelery.core.errors import DispatchError, StorageError

        delay = 0.1
        while True:
            try:
                self.engine.start(self.workflow, order, run_id=run_id)
                return
            except (DispatchError, StorageError, OSError) as exc:
                with self._lock:
                    self.report.producer_retries += 1
                if stop.is_set():
                    raise RuntimeError(f"could not start {run_id}: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:  # e.g. a raw driver error while PostgreSQL restarts
                if type(exc).__module__.split(".")[0] not in (
                    "sqlalchemy",
                    "psycopg",
                    "kombu",
                    "amqp",
                ):
                    raise
                with self._lock:
                    self.report.producer_retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def produce(self, stop: threading.Event) -> None:
        prefix = f"chaos{self.tag}"
        forced_count = round(self.cfg.runs * self.cfg.fail_ratio)
        forced = set(self.rng.sample(range(self.cfg.runs), forced_count))
        t0 = time.monotonic()
        for i in range(self.cfg.runs):
            if self.cfg.rate:  # paced, so that the restarts happen while producing
                time.sleep(max(0.0, t0 + i / self.cfg.rate - time.monotonic()))
            run_id = f"{prefix}-{i:05d}"
            is_forced = i in forced
            self.run_ids[run_id] = is_forced
            self.start_run(run_id, make_order(i, prefix, is_forced, self.rng), stop)

    # -- progress
    def statuses(self) -> dict[str, str]:
        import sqlalchemy as sa

        from fluxcelery.storage.schema import runs

        for attempt in range(30):
            try:
                with self.storage.engine.connect() as conn:
                    rows = conn.execute(
                        sa.select(runs.c.id, runs.c.status).where(runs.c.id.in_(list(self.run_ids)))
                    ).all()
                return {r.id: r.status for r in rows}
            except Exception:
                if attempt == 29:
                    raise
                time.sleep(1.0)
        return {}

    def terminal_count(self) -> int:
        return sum(1 for s in self.statuses().values() if s in TERMINAL)

    def run(self) -> ChaosReport:
        cfg = self.cfg
        t0 = time.monotonic()
        for _ in range(cfg.workers):
            self.spawn()
        stop = threading.Event()
        errors: list[BaseException] = []

        def producer() -> None:
            try:
                self.produce(stop)
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=producer, name="chaos-producer", daemon=True)
        thread.start()
        broker_done = not cfg.broker_restart
        db_done = not cfg.db_restart
        next_kill = time.monotonic() + cfg.kill_every
        produced_at: float | None = None
        deadline = time.monotonic() + cfg.settle_timeout
        try:
            while time.monotonic() < deadline:
                time.sleep(0.25)
                done = self.terminal_count()
                produced = len(self.run_ids)
                if time.monotonic() >= next_kill and done < cfg.runs:
                    self.kill_one()
                    next_kill = time.monotonic() + cfg.kill_every
                # Restart the broker at ~1/3 and the database at ~2/3 of the runs produced,
                # while runs are in flight.
                if not broker_done and produced >= cfg.runs / 3:
                    cfg.log(f"  restarting RabbitMQ ({done}/{cfg.runs} terminal)")
                    restart_broker()
                    broker_done = True
                    self.report.broker_restarts += 1
                if broker_done and not db_done and produced >= 2 * cfg.runs / 3:
                    cfg.log(f"  restarting PostgreSQL ({done}/{cfg.runs} terminal)")
                    restart_database()
                    db_done = True
                    self.report.db_restarts += 1
                for w in self.workers:  # a worker that died on its own is replaced
                    if w.proc is not None and w.proc.poll() is not None and w.proc.returncode != -9:
                        w.proc.returncode = -9  # count once
                        cfg.log(f"  worker {w.name} exited by itself; replacing it")
                        self.spawn()
                if not thread.is_alive() and broker_done and db_done:
                    if produced_at is None:
                        produced_at = time.monotonic()
                    # The chaos phase ends when every run is terminal or, at the latest,
                    # ``chaos_tail`` seconds after the last run was started: then settle.
                    if done >= cfg.runs or time.monotonic() - produced_at > cfg.chaos_tail:
                        break
                if not thread.is_alive() and errors:
                    break
            self.settle(deadline)
        finally:
            stop.set()
            thread.join(timeout=30)
            ensure_broker()
            ensure_database()
        if errors:
            self.report.problems.append(f"producer: {errors[0]!r}")
        self.check()
        self.report.wall_time_s = time.monotonic() - t0
        return self.report

    def settle(self, deadline: float) -> None:
        """Wait for every run to be terminal, calling ``recover`` for the stuck ones."""
        last_recover = time.monotonic()
        settle_deadline = max(deadline, time.monotonic() + 60)
        while time.monotonic() < settle_deadline:
            if self.terminal_count() >= len(self.run_ids) and len(self.run_ids) >= self.cfg.runs:
                return
            if time.monotonic() - last_recover > 15:
                acted = self.engine.recover(older_than=10.0, limit=1000)
                if acted:
                    self.report.recovered += len(acted)
                    self.cfg.log(f"  recover() continued {len(acted)} stuck run(s)")
                last_recover = time.monotonic()
            if not self.live_workers():
                self.spawn()
            time.sleep(0.5)

    # -- invariants
    def check(self) -> None:
        import sqlalchemy as sa

        from workflows.order import notifications, reservations

        rep = self.report
        states = self.statuses()
        counts = Counter(states.values())
        rep.statuses = dict(counts)
        with self.storage.engine.connect() as conn:
            res_rows = conn.execute(
                sa.select(
                    reservations.c.run_id,
                    reservations.c.pass_no,
                    reservations.c.sku,
                    reservations.c.status,
                )
            ).all()
            notes = Counter(r.run_id for r in conn.execute(sa.select(notifications.c.run_id)).all())
        lines: dict[str, Counter[tuple[int, str]]] = {}
        released: dict[str, set[str]] = {}
        for r in res_rows:
            lines.setdefault(r.run_id, Counter())[(r.pass_no, r.sku)] += 1
            released.setdefault(r.run_id, set()).add(r.status)
        traces = self._traces()
        for run_id, forced in self.run_ids.items():
            status = states.get(run_id)
            if status not in TERMINAL:
                rep.lost += 1
                rep.problems.append(f"{run_id}: lost (status {status})")
                continue
            want = "rolled_back" if forced else "completed"
            state = self.engine.get(run_id)
            assert state is not None
            interrupted = status == "failed" and (state.error or "").startswith("WorkerLost:")
            if interrupted:
                # By design a SIGKILL uses up an attempt (so a step that crashes its worker
                # cannot loop forever); a step with retries=0 then fails the run, cleanly. An
                # order forced to fail later (at charge-payment) can be hit there first too.
                rep.failed_worker_lost += 1
                rep.forced_worker_lost += int(forced)
                rep.problems.append(f"{run_id}: failed by design: {state.error}")
            elif status != want:
                rep.unexpected += 1
                steps = ", ".join(f"{s.name}={s.status.value}/{s.attempts}" for s in state.steps)
                tr = [
                    f"{e.type}:{e.step}:{e.attempt}:{e.worker}:{e.meta}"
                    for e in self.engine.traces(run_id=run_id)
                ]
                rep.problems.append(
                    f"{run_id}: {status}, expected {want}: {state.error} [{steps}] {tr}"
                )
            elif forced:
                rep.failed_as_designed += 1
            else:
                rep.completed += 1
            reserved = state.step("reserve-stock").status.value in ("completed", "compensated")
            items = len(state.input["items"]) if reserved else 0
            got = lines.get(run_id, Counter())
            dup = sum(n - 1 for n in got.values() if n > 1)
            if dup:
                rep.duplicate_commit_effects += dup
                rep.problems.append(f"{run_id}: {dup} duplicate reservation line(s)")
            if len(got) != items:
                rep.missing_commit_effects += 1
                rep.problems.append(f"{run_id}: {len(got)} reservation lines, expected {items}")
            if forced and reserved and released.get(run_id, set()) - {"released"}:
                rep.unexpected += 1
                rep.problems.append(f"{run_id}: rolled back but stock not released")
            n_notes = notes.get(run_id, 0)
            # notify is a for_each: one outbox row per completed (committed) recipient item.
            want_notes = sum(
                1
                for s in state.steps
                if s.name == "notify" and s.item is not None and s.status.value == "completed"
            )
            if n_notes > want_notes:
                rep.duplicate_commit_effects += n_notes - want_notes
                rep.problems.append(f"{run_id}: {n_notes} notifications")
            elif n_notes < want_notes:
                rep.missing_commit_effects += 1
                rep.problems.append(f"{run_id}: notification missing")
            rep.trace_gaps += self._trace_gaps(state, traces.get(run_id, []))

    def _traces(self) -> dict[str, list[tuple[str, str | None]]]:
        import sqlalchemy as sa

        from fluxcelery.storage.schema import traces

        out: dict[str, list[tuple[str, str | None]]] = {}
        with self.storage.engine.connect() as conn:
            for r in conn.execute(
                sa.select(traces.c.run_id, traces.c.type, traces.c.step).order_by(traces.c.ts)
            ):
                out.setdefault(r.run_id, []).append((r.type, r.step))
        return out

    def _trace_gaps(self, state: Any, events: list[tuple[str, str | None]]) -> int:
        gaps = 0
        seen = {(t, s) for t, s in events}
        for step in state.steps:
            done = step.status.value in ("completed", "compensated")
            if (
                done
                and ("step:complete", step.name) not in seen
                and (
                    "step:skipped",
                    step.name,
                )
                not in seen
            ):
                gaps += 1
                self.report.problems.append(f"{state.id}: no step:complete for {step.name}")
            if step.status.value == "compensated" and ("step:compensate", step.name) not in seen:
                gaps += 1
                self.report.problems.append(f"{state.id}: no step:compensate for {step.name}")
        status = state.status.value
        if status in ("failed", "rolled_back") and ("workflow:error", None) not in seen:
            gaps += 1
            self.report.problems.append(f"{state.id}: {status} without workflow:error")
        if status == "completed" and ("workflow:complete", None) not in seen:
            gaps += 1
            self.report.problems.append(f"{state.id}: completed without workflow:complete")
        return gaps

    # -- cleanup
    def close(self) -> None:
        import sqlalchemy as sa

        for w in self.workers:
            try:
                w.stop()
            except Exception:
                pass
        try:
            with self.engine.dispatcher().app.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.queue)
        except Exception:
            pass
        self.engine.close()
        try:
            with self.admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{self.schema}" CASCADE'))
        except Exception as exc:
            self.cfg.log(f"could not drop schema {self.schema}: {exc}")
        self.admin.dispose()


def run_chaos(cfg: ChaosConfig, *, keep: bool = False) -> ChaosReport:
    """Run one chaos session and return its report (services are left running)."""
    ensure_broker()
    ensure_database()
    chaos = Chaos(cfg)
    try:
        return chaos.run()
    finally:
        if not keep:
            chaos.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200, help="order workflows to run")
    p.add_argument("--kill-every", type=float, default=5.0, help="seconds between SIGKILLs")
    p.add_argument("--workers", type=int, default=2, help="prefork worker processes")
    p.add_argument("--concurrency", type=int, default=4, help="pool processes per worker")
    p.add_argument("--fail-ratio", type=float, default=0.2, help="share forced to fail at charge")
    p.add_argument(
        "--rate", type=float, default=20.0, help="runs started per second (0: no pacing)"
    )
    p.add_argument("--no-broker-restart", action="store_true")
    p.add_argument("--no-db-restart", action="store_true")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the runs")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    if args.runs < 1 or args.workers < 1 or args.kill_every <= 0:
        p.error("--runs and --workers must be >= 1 and --kill-every > 0")
    cfg = ChaosConfig(
        runs=args.runs,
        kill_every=args.kill_every,
        workers=args.workers,
        concurrency=args.concurrency,
        fail_ratio=args.fail_ratio,
        rate=args.rate,
        broker_restart=not args.no_broker_restart,
        db_restart=not args.no_db_restart,
        settle_timeout=args.timeout,
        seed=args.seed,
    )
    print(
        f"chaos: {cfg.runs} runs, {cfg.workers} workers x {cfg.concurrency}, kill every "
        f"{cfg.kill_every}s, broker restart {cfg.broker_restart}, db restart {cfg.db_restart}"
    )
    report = run_chaos(cfg)
    print(report.table())
    for problem in report.problems[:20]:
        print("  problem:", problem)
    if args.json:
        payload = {
            "command": " ".join(sys.argv),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("log", "workdir")},
            **report.to_dict(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
