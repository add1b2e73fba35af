"""``prune`` deletes in batches until a batch finds nothing: a short batch is not the end
when another prune took part of it (or a run in it was retried meanwhile)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from fluxcelery import MemoryStorage, RunState, RunStatus, StepState
from fluxcelery.retention import prune


def _runs(n: int) -> list[RunState]:
    return [
        RunState(
            id=f"run-{i:02d}",
            workflow="wf",
            status=RunStatus.COMPLETED,
            input={},
            data={},
            steps=[StepState(name="s", index=0, kind="step")],
        )
        for i in range(n)
    ]


class RacedStorage(MemoryStorage):
    """Its first batch loses two runs to another prune running at the same time (as a
    concurrent ``DELETE`` on PostgreSQL takes rows from under this one's batch)."""

    raced = False

    def prune_runs(
        self, updated_before: datetime, statuses: Sequence[str], limit: int | None = 500
    ) -> int:
        if limit is not None and not self.raced:
            self.raced = True
            super().prune_runs(updated_before, statuses, limit=2)  # the other prune's
            return super().prune_runs(updated_before, statuses, limit=limit - 2)
        return super().prune_runs(updated_before, statuses, limit)


def test_a_short_batch_does_not_end_the_prune() -> None:
    storage = RacedStorage()
    for run in _runs(12):
        assert storage.create_run(run, [])
    totals: list[int] = []
    pruned = prune(storage, timedelta(0), batch=5, progress=totals.append)
    assert storage.size() == 0
    assert pruned == 10  # the other prune deleted the other two
    assert totals == [3, 8, 10]


def test_prune_reports_progress_per_batch_that_deleted_something() -> None:
    storage = MemoryStorage()
    for run in _runs(10):
        assert storage.create_run(run, [])
    totals: list[int] = []
    assert prune(storage, timedelta(0), batch=5, progress=totals.append) == 10
    assert totals == [5, 10]  # the last, empty batch ends the loop and reports nothing
    assert prune(storage, timedelta(0), batch=5, progress=totals.append) == 0
    assert totals == [5, 10]
