"""CPU time by process group, read from /proc (Linux): where a benchmark's CPU goes.

On a machine whose cores are all busy, throughput is the inverse of CPU spent per run, so
per-process CPU per run tells which part to make cheaper; CPU over wall time tells how busy
the cores were (what is left is waiting: commits syncing, messages in flight).
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def available() -> bool:
    return (PROC / "self" / "stat").exists()


def _seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0 when it is gone)."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in (PROC / str(pid) / "task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def _named(names: tuple[str, ...]) -> list[int]:
    pids = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith(names):
                pids.append(int(entry.name))
    return pids


class CpuGroups:
    """Snapshots of CPU seconds per group: a worker's parent and its pool children, the
    servers (PostgreSQL, RabbitMQ, Redis), and this process (the producer)."""

    SERVERS = {"postgresql": ("postgres",), "rabbitmq": ("beam.smp",), "redis": ("redis-server",)}

    def __init__(self, worker_pid: int) -> None:
        self.worker_pid = worker_pid

    def snapshot(self) -> dict[str, float]:
        # Server processes come and go (a backend per connection): all of them, each time.
        groups = {
            "worker parent": _seconds(self.worker_pid),
            "pool children": sum(_seconds(p) for p in _children(self.worker_pid)),
            "producer": _seconds(os.getpid()),
        }
        for group, names in self.SERVERS.items():
            groups[group] = sum(_seconds(p) for p in _named(names))
        return groups


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}
