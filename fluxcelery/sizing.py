"""Sizing the workers from a profile (``fluxcelery profile``, SPEC section 17): a pool kind
and a concurrency per Celery queue, and a timeout per step. Pure: profiles in, advice out.

The rules, as the output states them:

- A step is CPU-bound when its attempts spend at least ``CPU_BOUND`` (0.5) of their wall
  time on the CPU (``profile.classify``), I/O-bound below; steps whose attempts take under
  ``FAST_MS`` are too short to judge and weigh on no pool. CPU-bound steps want ``prefork``
  (a process per core: Python threads share one core through the GIL); I/O-bound steps
  want ``threads`` (``gevent`` above ``THREADS_MAX`` in flight per process). A queue with
  both is best split: the CPU-bound steps routed to a queue of their own (``task_routes``).
- Concurrency, by Little's law: attempts in flight = rate x the attempts' wall time per run
  on that queue (retries included; less the time they waited for a core, a trait of the
  host), summed over the workflows on it, rounded up. The rate
  is ``--target-rate`` runs/s of each workflow, else the rate observed in the trace.
  CPU-bound work is capped by cores: the cores it keeps busy (rate x CPU time per run) over
  the cores of a machine gives the machines, and the concurrency is spread over them. A
  threads pool gets one process per ``GIL_SHARE`` of a core of CPU work.
- Timeout: p95 x ``TIMEOUT_FACTOR`` (1.5), rounded up to whole seconds, at least 1 s;
  compared with the step's configured timeout (when its workflow is importable):
  ``tight`` below that, ``loose`` at ``LOOSE_FACTOR`` (5) times it or more, ``none`` when no
  limit is set.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .profile import CPU_BOUND, FAST_MS, StepProfile, WorkflowProfile

#: Suggested timeout = p95 x this, rounded up to a whole second, at least ``MIN_TIMEOUT_S``.
TIMEOUT_FACTOR = 1.5
MIN_TIMEOUT_S = 1
#: A configured timeout this many times the suggestion or more is ``loose``.
LOOSE_FACTOR = 5.0
#: The CPU a threads (or gevent) worker process is planned to keep busy: one core at most
#: through the GIL, half of it for headroom.
GIL_SHARE = 0.5
#: A threads pool up to this many in flight per process; gevent beyond.
THREADS_MAX = 100

RULES = {
    "cpu_bound": f"cpu/wall >= {CPU_BOUND} (attempts of {FAST_MS:g} ms and up)",
    "pool": "prefork for CPU-bound steps, threads (gevent above "
    f"{THREADS_MAX} per process) for I/O-bound ones; both on one queue: split it",
    "concurrency": "rate x attempt wall time per run on the queue (Little's law), rounded up; "
    "CPU-bound work spread over machines by the cores it keeps busy",
    "timeout": f"p95 x {TIMEOUT_FACTOR:g} rounded up to whole seconds, at least "
    f"{MIN_TIMEOUT_S} s; tight below it, loose at {LOOSE_FACTOR:g}x it",
}


# -- the math --------------------------------------------------------------------------------
def slots(rate: float, busy_s: float) -> int:
    """Attempts in flight at ``rate`` per second, each busy ``busy_s`` (Little's law),
    rounded up; at least 1."""
    return max(1, math.ceil(rate * busy_s - 1e-9))


def suggest_timeout(p95_ms: float | None) -> int | None:
    if p95_ms is None:
        return None
    return max(MIN_TIMEOUT_S, math.ceil(p95_ms / 1000 * TIMEOUT_FACTOR - 1e-9))


def judge_timeout(configured: float | None, suggested: int) -> str:
    """``none`` (no limit set), ``tight`` (below the suggestion: slow but normal attempts
    time out), ``loose`` (a hung attempt holds a worker that long), or ``ok``."""
    if configured is None:
        return "none"
    if configured < suggested:
        return "tight"
    if configured >= suggested * LOOSE_FACTOR:
        return "loose"
    return "ok"


# -- advice ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """What some steps ask of a queue at a rate: attempts in flight and cores busy, on
    average (None: no rate known)."""

    in_flight: float | None
    cores: float | None


@dataclass(frozen=True)
class PoolAdvice:
    """The pool for one queue (or one part of a queue to split)."""

    queue: str
    #: ``prefork``, ``threads``, ``gevent``, ``split``, or None (nothing to judge by).
    pool: str | None
    #: ``cpu``, ``io``, ``mixed``, or None.
    bound: str | None
    steps: tuple[str, ...]
    load: Load
    #: Attempts in flight in all, and how: ``processes`` worker processes (prefork: one per
    #: machine) of ``per_process`` each. None without a rate.
    concurrency: int | None
    processes: int | None
    per_process: int | None
    reason: str
    #: A queue to split: the CPU-bound part (on a new queue) and the rest.
    parts: tuple[PoolAdvice, ...] = ()
    #: A split's ``task_routes``: the CPU-bound steps' tasks to their new queue.
    routes: Mapping[str, str] | None = None

    @property
    def command(self) -> str | None:
        if self.pool in (None, "split"):
            return None
        c = f" -c {self.per_process}" if self.per_process else ""
        return f"celery -A fluxcelery worker -Q {self.queue} -P {self.pool}{c}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "pool": self.pool,
            "bound": self.bound,
            "steps": list(self.steps),
            "in_flight": _round(self.load.in_flight),
            "cores_busy": _round(self.load.cores),
            "concurrency": self.concurrency,
            "processes": self.processes,
            "per_process": self.per_process,
            "command": self.command,
            "reason": self.reason,
            "parts": [p.to_dict() for p in self.parts],
            "routes": dict(self.routes) if self.routes else None,
        }


@dataclass(frozen=True)
class TimeoutAdvice:
    workflow: str
    step: str
    p95_ms: float | None
    #: The configured timeout in seconds (None: no limit); ``known`` False when the
    #: workflow could not be imported.
    configured: float | None
    known: bool
    suggested_s: int | None
    verdict: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "step": self.step,
            "p95_ms": _round(self.p95_ms),
            "configured_s": self.configured if self.known else "unknown",
            "suggested_s": self.suggested_s,
            "verdict": self.verdict,
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


#: (workflow profile, step) pairs routed to one queue.
Routed = Sequence[tuple[WorkflowProfile, StepProfile]]


def load_of(routed: Routed, rates: Mapping[str, float | None]) -> Load:
    """Attempts in flight and cores busy for ``routed`` steps at each workflow's rate:
    Σ rate x (wall, CPU) time of its attempts per run. The wall time leaves out the time
    spent waiting for a core (a trait of the host it ran on, not of the step); the CPU time
    of attempts that recorded none is taken at the step's ratio."""
    in_flight = cores = 0.0
    for wf, step in routed:
        r = rates.get(wf.workflow)
        if r is None or not wf.runs:
            return Load(None, None)
        in_flight += r * step.ready_total_ms / 1000 / wf.runs
        cores += r * step.total_ms / 1000 / wf.runs * (step.cpu_ratio or 0.0)
    return Load(in_flight, cores)


def advise_pool(
    queue: str, routed: Routed, rates: Mapping[str, float | None], cores: int
) -> PoolAdvice:
    """The pool for ``queue`` (see the module's docstring)."""
    names = tuple(f"{wf.workflow}.{s.step}" for wf, s in routed)
    cpu = [(wf, s) for wf, s in routed if s.bound == "cpu"]
    io = [(wf, s) for wf, s in routed if s.bound == "io"]
    if cpu and io:
        heavy = f"{queue}-cpu"
        parts = (
            advise_pool(heavy, cpu, rates, cores),
            advise_pool(queue, [p for p in routed if p not in cpu], rates, cores),
        )
        moved = ", ".join(f"{wf.workflow}.{s.step}" for wf, s in cpu)
        return PoolAdvice(
            queue,
            "split",
            "mixed",
            names,
            load_of(routed, rates),
            None,
            None,
            None,
            f"CPU-bound and I/O-bound steps share this queue: route {moved} to {heavy!r} "
            "(prefork), keep threads here",
            parts,
            {f"flux.{wf.workflow}.{s.step}": heavy for wf, s in cpu},
        )
    load = load_of(routed, rates)
    n = None if load.in_flight is None else slots(1.0, load.in_flight)
    if cpu:
        machines = None if load.cores is None else max(1, math.ceil(load.cores / cores - 1e-9))
        per = None if n is None or machines is None else math.ceil(n / machines)
        where = f"{machines} machine(s) of {cores} cores" if machines else "machines"
        busy = f", {load.cores:.2f} cores busy" if load.cores is not None else ""
        reason = f"CPU-bound steps: a process per core keeps them off the GIL ({where}{busy})"
        return PoolAdvice(queue, "prefork", "cpu", names, load, n, machines, per, reason)
    if io:
        processes = None if load.cores is None else max(1, math.ceil(load.cores / GIL_SHARE))
        per = None if n is None or processes is None else math.ceil(n / processes)
        pool = "gevent" if per is not None and per > THREADS_MAX else "threads"
        reason = "I/O-bound steps wait most of their time: threads overlap the waits"
        if pool == "gevent":
            reason += f"; more than {THREADS_MAX} in flight per process: gevent greenlets"
        if processes and processes > 1:
            reason += f"; {processes} processes for the CPU they still use (GIL)"
        return PoolAdvice(queue, pool, "io", names, load, n, processes, per, reason)
    why = (
        f"steps too short to judge (under {FAST_MS:g} ms): any pool"
        if any(s.bound == "fast" for _, s in routed)
        else "no CPU time recorded (traces written before meta.cpu_ms)"
    )
    return PoolAdvice(queue, None, None, names, load, n, None, None, why)


def advise_pools(
    workflows: Iterable[WorkflowProfile],
    queue_of: Callable[[str, str], str],
    *,
    target_rate: float | None,
    cores: int,
) -> list[PoolAdvice]:
    """A pool per queue, for the steps that route to it (``queue_of(workflow, step)``)."""
    by_queue: dict[str, list[tuple[WorkflowProfile, StepProfile]]] = defaultdict(list)
    rates: dict[str, float | None] = {}
    for wf in workflows:
        rates[wf.workflow] = target_rate if target_rate is not None else wf.observed_rate
        for step in wf.steps:
            if step.attempts:
                by_queue[queue_of(wf.workflow, step.step)].append((wf, step))
    return [advise_pool(q, by_queue[q], rates, cores) for q in sorted(by_queue)]


def advise_timeouts(
    workflows: Iterable[WorkflowProfile], configured: Mapping[tuple[str, str], float | None]
) -> list[TimeoutAdvice]:
    """A timeout per step with attempts, against its configured one where known."""
    out = []
    for wf in workflows:
        for step in wf.steps:
            if not step.attempts:
                continue
            key = (wf.workflow, step.step)
            suggested = suggest_timeout(step.p95_ms)
            known = key in configured
            current = configured.get(key)
            verdict = judge_timeout(current, suggested) if known and suggested else None
            out.append(
                TimeoutAdvice(
                    wf.workflow, step.step, step.p95_ms, current, known, suggested, verdict
                )
            )
    return out
