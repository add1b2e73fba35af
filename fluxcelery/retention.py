"""Pruning finished runs: a run's rows (run, steps, traces) are kept until deleted, and the
trace table grows by several rows per run. ``fluxcelery prune`` deletes those finished long
enough ago, in batches, each its own short transaction (no long lock on a busy table)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

from .core.records import utcnow
from .core.states import TERMINAL_RUN
from .storage.base import Storage

#: Runs that can be pruned: finished ones (a failed run can still be retried until then).
FINISHED = tuple(sorted(s.value for s in TERMINAL_RUN))


def prune(
    storage: Storage,
    older_than: timedelta,
    *,
    statuses: Sequence[str] = FINISHED,
    batch: int = 500,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete runs in ``statuses`` not updated for ``older_than``, with their steps and
    traces; returns how many (with ``dry_run``, how many would be). ``progress`` is called
    with the running total after each batch."""
    unknown = sorted(set(statuses) - set(FINISHED))
    if unknown:
        raise ValueError(
            f"only finished runs can be pruned ({', '.join(FINISHED)}); not {', '.join(unknown)}"
        )
    if older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cutoff = utcnow() - older_than
    if dry_run:
        return storage.prune_runs(cutoff, statuses, limit=None)
    total = 0
    while True:
        pruned = storage.prune_runs(cutoff, statuses, limit=batch)
        total += pruned
        if progress is not None and pruned:
            progress(total)
        # Not ``pruned < batch``: a short batch does not mean the end. Another prune may
        # have taken part of this one, or a run in it was retried meanwhile (PostgreSQL
        # re-checks the condition on each row); only an empty batch does.
        if not pruned:
            return total
