"""Workflows the integration tests run on real `celery -A fluxcelery worker` processes.

Workers import this module through FLUX_WORKFLOWS=it_workflows (PYTHONPATH=tests/integration).
Side effects of commit steps are rows in ``it_effects``, written through ``ctx.session`` so
that they commit with the step's completion: counting rows proves exactly-once.
"""

from __future__ import annotations

import asyncio
import os
import time

from sqlalchemy import text

from fluxcelery import Backoff, NonRetryableError, branch, wait_for, workflow

FAST = Backoff(base=0.2, factor=1.0, max=0.2, jitter=False)


def effect(ctx, what: str) -> None:
    ctx.session.execute(
        text("INSERT INTO it_effects (run_id, step, what) VALUES (:r, :s, :w)"),
        {"r": ctx.run_id, "s": ctx.step, "w": what},
    )


def noop(ctx):
    return None


def add(ctx):
    ctx.data["n"] = ctx.data.get("n", 0) + ctx.input.get("add", 1)
    return ctx.data["n"]


def record(ctx):
    effect(ctx, "record")
    return {"recorded": True}


four = (
    workflow("it-four")
    .step("a", add)
    .commit("b", record)
    .step("c", add)
    .step("d", lambda ctx: {"total": ctx.data["n"]})
)


def flaky(ctx):
    if ctx.attempt < 3:
        raise RuntimeError(f"flaky attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


retrying = workflow("it-retry").step("flaky", flaky, retries=3, backoff=FAST).step("after", noop)

approval = (
    workflow("it-approval")
    .step("prepare", add)
    .step("approve", lambda ctx: wait_for("approval"))
    .step("finish", lambda ctx: {"approved_by": ctx.results["approve"]["by"]})
)


def needs_flag(ctx):
    path = ctx.input["flag"]
    if not os.path.exists(path):
        raise NonRetryableError(f"flag file {path} missing")
    return "flag found"


fix_then_retry = (
    workflow("it-fix")
    .step("first", add)
    .commit("charge", record)
    .step("check", needs_flag)
    .step("last", noop)
)

compensated: list[str] = []


def undo(ctx):
    effect(ctx, "undo") if ctx.session is not None else None
    ctx.log.info("compensating %s", ctx.step)


def undo_commit(ctx):
    # Compensators get no session; record through a fresh connection is not needed:
    # the trace (step:compensate) is the evidence.
    return None


def boom(ctx):
    raise NonRetryableError("payment declined")


saga = (
    workflow("it-saga")
    .step("reserve", add, compensate=undo_commit)
    .commit("hold", record, compensate=undo_commit)
    .step("pay", boom)
)


def slow(ctx):
    time.sleep(float(ctx.input.get("sleep", 4)))
    return "slept"


crash = (
    workflow("it-crash")
    .commit("charge", record)
    .step("slow", slow, timeout=60, retries=3)
    .step("done", noop)
)


def hang(ctx):
    time.sleep(30)


timeouts = workflow("it-timeout").step("hang", hang, timeout=1, retries=1, backoff=FAST)


# Delays longer than FLUX_MAX_COUNTDOWN (the tests set 1 s) are taken in hops.
long_wait = workflow("it-long-wait").step(
    "ask", lambda ctx: wait_for("approval", timeout=float(ctx.input.get("wait", 3.5)))
)


def fails_first(ctx):
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return ctx.attempt


slow_retry = (
    workflow("it-slow-retry")
    .step(
        "flaky",
        fails_first,
        retries=1,
        backoff=Backoff(base=3.5, factor=1.0, max=3.5, jitter=False),
    )
    .step("after", noop)
)


class PaymentDeclined(Exception):
    """A user's own exception type: Celery and Flower must show it, not fluxcelery's."""


def decline(ctx):
    token = ctx.input["api_token"]
    if ctx.attempt == 1:
        raise ConnectionError(f"gateway timed out for {token}")  # retried (an OSError)
    raise PaymentDeclined(f"card declined for {token}")


declined = (
    workflow("it-declined")
    .step("reserve", add, compensate=undo_commit)
    .step("charge", decline, retries=1, backoff=FAST)
    .step("ship", noop)
)


def missing_file(ctx):
    raise FileNotFoundError(2, "No such file or directory", "/nonexistent/flux-it")


missing = workflow("it-missing").step("read", missing_file, retries=0).step("after", noop)


# No timeout of its own: the worker engine's default_timeout (FLUX_DEFAULT_TIMEOUT) rules.
long_step = workflow("it-long-step").step("work", slow, retries=0)


def crunch(ctx):
    """Reports progress while it works: 10 chunks of ``input.chunk`` seconds each."""
    chunks = int(ctx.input.get("chunks", 10))
    for i in range(chunks):
        ctx.progress(i, chunks, f"chunk {i}")
        time.sleep(float(ctx.input.get("chunk", 0.3)))
    ctx.progress(chunks, chunks, "done")
    return {"chunks": chunks}


progressing = workflow("it-progress").step("crunch", crunch, retries=0).step("after", noop)


def booked(ctx):
    """A commit whose effect is a row; it sleeps ``input.sleep`` seconds first (only the
    step named in ``input.slow``)."""
    if ctx.step == ctx.input.get("slow"):
        time.sleep(float(ctx.input.get("sleep", 0)))
    effect(ctx, "booked")
    return {"booked": ctx.step}


def unbook(ctx):
    effect(ctx, "unbooked")


# Cancellation on workers: ``hold`` waits for a signal (cancel while suspended), or a step
# sleeps (cancel while it runs).
cancellable = (
    workflow("it-cancel")
    .commit("flight", booked, compensate=unbook, timeout=120)
    .commit("hotel", booked, compensate=unbook, retries=0, timeout=120)
    .step("hold", lambda ctx: wait_for("go") if ctx.input.get("hold") else None)
    .commit("car", booked, compensate=unbook)
)


# -- parallel branches and for_each (SPEC section 11) ------------------------------------------
def nap(ctx):
    """Sleeps ``input.nap`` seconds (or ``input.naps[step]``), then says which step it was."""
    naps = ctx.input.get("naps") or {}
    time.sleep(float(naps.get(ctx.step, ctx.input.get("nap", 0))))
    return ctx.step


def item_effect(ctx):
    """A for_each item's commit: one row per item, ``what`` = the item."""
    if ctx.item == ctx.input.get("fail_item"):
        raise NonRetryableError(f"item {ctx.item} refused")
    effect(ctx, f"item {ctx.item}")
    return ctx.item


def item_undo(ctx):
    effect(ctx, f"undo item {ctx.item}")


def branch_fails(ctx):
    if ctx.input.get("fail") == ctx.step:
        raise NonRetryableError(f"{ctx.step} refused")
    if ctx.input.get("meet"):
        _meet(ctx)
    return booked(ctx)


def _meet(ctx) -> None:
    """Both branch steps of a run return at the same instant: each leaves a file in
    ``input.meet`` and waits (up to 20 s) for its sibling's, across worker processes."""
    folder = ctx.input["meet"]
    open(os.path.join(folder, f"{ctx.run_id}.{ctx.step}"), "w").close()
    siblings = [f"{ctx.run_id}.{s}" for s in ("left-book", "right-book")]
    deadline = time.monotonic() + 20
    while not all(os.path.exists(os.path.join(folder, f)) for f in siblings):
        if time.monotonic() > deadline:
            raise RuntimeError("the sibling branch never came")
        time.sleep(0.001)


def after_join(ctx):
    effect(ctx, "after join")
    return sorted(ctx.results["book"])


# Two branches of one step each: the race of the join (both end at once on -c 2).
par_race = (
    workflow("it-par-race")
    .parallel(
        "book",
        branch("left").commit("left-book", branch_fails, compensate=unbook),
        branch("right").commit("right-book", branch_fails, compensate=unbook),
    )
    .commit("after", after_join)
)

# Two branches that nap: concurrency on workers, and a branch killed mid-way.
par_nap = (
    workflow("it-par-nap")
    .parallel(
        "book",
        branch("a").step("nap-a", nap, timeout=120),
        branch("b").step("nap-b", nap, timeout=120).commit("mark-b", booked),
    )
    .commit("after", after_join)
)

# for_each over input.items with at most input-free max_concurrency 4, each item a commit.
par_each = (
    workflow("it-par-each")
    .step("prepare", noop)
    .for_each(
        "each",
        item_effect,
        items=lambda ctx: ctx.input["items"],
        max_concurrency=4,
        commit=True,
        compensate=item_undo,
        retries=0,
    )
    .commit("after", record)
)

# Two branches of one napping step each: concurrency on ``-c 2``.
par_pair = (
    workflow("it-par-pair")
    .parallel(
        "pair",
        branch("a").step("nap-a", nap, timeout=60),
        branch("b").step("nap-b", nap, timeout=60),
    )
    .step("after", noop)
)

# The same items, all sent at once (no max_concurrency).
par_each_all = workflow("it-par-each-all").for_each(
    "each",
    item_effect,
    items=lambda ctx: ctx.input["items"],
    commit=True,
    compensate=item_undo,
    retries=0,
)

# Cancellation across branches: ``fast`` books at once; ``slow`` sleeps ``input.sleep`` first.
par_cancel = workflow("it-par-cancel").parallel(
    "book",
    branch("fast").commit("fast-book", booked, compensate=unbook),
    branch("slow").commit("slow-book", booked, compensate=unbook, timeout=120),
)

# Items that nap, at most 3 at a time (max_concurrency on a worker wider than that).
par_each_nap = workflow("it-par-each-nap").for_each(
    "naps", nap, items=lambda ctx: ctx.input["items"], max_concurrency=3, timeout=60
)


# -- approvals (SPEC section 16) --------------------------------------------------------------
def spend_policy(ctx):
    amount = ctx.input.get("amount", 0)
    return "auto" if amount <= 10 else ("deny" if amount > 1000 else "ask")


signed = (
    workflow("it-signed")
    .commit("reserve", booked, compensate=unbook)
    .approval("manager", policy=spend_policy, approvers=["ann", "lee"], timeout=600)
    .commit("pay", booked)
)


# -- pools (tests/integration/test_pools.py) ----------------------------------------------------
def overrun(ctx):
    """A commit whose first attempt sleeps ``input.sleep`` seconds, then sets ``ctx.data``
    and appends its attempt to the file ``input.mark`` (so an attempt that ran on after its
    timeout or a terminate leaves a trace outside the database), then books."""
    if ctx.attempt == 1:
        time.sleep(float(ctx.input["sleep"]))
        ctx.data["late"] = ctx.attempt
        with open(ctx.input["mark"], "a") as f:
            f.write(f"{ctx.attempt}\n")
    effect(ctx, "booked")
    return ctx.attempt


# A 1 s timeout that the first attempt overruns; the second books at once.
pool_timeout = (
    workflow("it-pool-timeout")
    .commit("book", overrun, timeout=1, retries=1, backoff=FAST)
    .step("after", lambda ctx: {"late": "late" in ctx.data})
)

# Compensation in reverse order after a failure, with the effects as rows.
pool_saga = (
    workflow("it-pool-saga")
    .commit("flight", booked, compensate=unbook)
    .commit("hotel", booked, compensate=unbook)
    .step("pay", boom)
)

# ``cancel --terminate`` while ``hotel`` sleeps.
pool_cancel = (
    workflow("it-pool-cancel")
    .commit("flight", booked, compensate=unbook)
    .commit("hotel", overrun, compensate=unbook, timeout=60, retries=0)
    .step("car", noop)
)


def spin(ctx):
    """Computes for ``input.spin`` seconds without yielding (no I/O, no sleep), then appends
    to the file ``input.mark``."""
    end = time.monotonic() + float(ctx.input["spin"])
    while time.monotonic() < end:
        pass
    with open(ctx.input["mark"], "a") as f:
        f.write("spun\n")
    return "spun"


# A CPU-bound step past its 1 s timeout.
pool_cpu = workflow("it-pool-cpu").step("spin", spin, timeout=1, retries=0)


async def nap_async(ctx):
    """Sleeps ``input.sleep`` seconds in asyncio, then appends to the file ``input.mark``."""
    await asyncio.sleep(float(ctx.input["sleep"]))
    with open(ctx.input["mark"], "a") as f:
        f.write("woke\n")
    return "woke"


# An ``async def`` step past its 1 s timeout.
pool_async = workflow("it-pool-async").step("nap", nap_async, timeout=1, retries=0)


def db_nap(ctx):
    """An item that waits ``input.nap`` seconds in PostgreSQL (``pg_sleep`` through
    ``ctx.session``); returns when the database began and ended the wait."""
    row = ctx.session.execute(
        text("SELECT clock_timestamp() AS a, pg_sleep(:s), clock_timestamp() AS b"),
        {"s": float(ctx.input.get("nap", 1))},
    ).one()
    return [row.a.timestamp(), row.b.timestamp()]


# A commit step whose query (``pg_sleep(input.nap)``) outlasts its 1 s timeout.
pool_slow_query = workflow("it-pool-slow-query").commit("query", db_nap, timeout=1, retries=0)

# Items that wait on PostgreSQL at the same time, on a worker with room for them.
pool_db_naps = workflow("it-pool-db-naps").for_each(
    "naps", db_nap, items=lambda ctx: ctx.input["items"], commit=True, retries=0, timeout=30
)
