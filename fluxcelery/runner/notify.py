"""What a stored change tells the world: trace events to the extra sinks, and the user's
hooks (``on={...}``). A hook that raises is logged and traced (``hook:error``), never
changes a run's outcome; a sink that fails never blocks one (trace/fanout.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..core.errors import describe_error
from ..core.jsoncodec import Redactor
from ..core.records import RunState, secret_sources
from ..storage.base import Storage
from ..trace.event import TraceEvent
from ..trace.fanout import TraceFanout
from .invoke import Invoker

log = logging.getLogger("fluxcelery.runner")

HOOKS = ("step_start", "step_complete", "step_error", "workflow_complete", "workflow_error")


class Notifier:
    def __init__(
        self,
        storage: Storage,
        sinks: TraceFanout,
        hooks: Mapping[str, Callable[..., Any]],
        invoker: Invoker,
        redact: Redactor,
        hook_timeout: float | None,
    ) -> None:
        unknown = set(hooks) - set(HOOKS)
        if unknown:
            raise ValueError(f"unknown hook(s) {sorted(unknown)}; hooks are {list(HOOKS)}")
        self.storage = storage
        self.sinks = sinks
        self.hooks = dict(hooks)
        self.invoker = invoker
        self.redact = redact
        self.hook_timeout = hook_timeout

    def publish(self, events: Sequence[TraceEvent]) -> None:
        """Send already-stored events to the extra sinks."""
        if self.sinks:
            self.sinks.emit_all(events)

    def record(self, events: Sequence[TraceEvent]) -> None:
        """Store and publish events that are not part of a state change (``hook:error``)."""
        try:
            self.storage.append_traces(events)
        except Exception as exc:
            log.warning("could not store trace events: %s", exc)
        self.publish(events)

    def error_text(self, exc: BaseException, state: RunState) -> str:
        """``describe_error`` with the run's secrets masked: an exception message is stored
        and traced, and a handler may have put a token in it."""
        return self.redact.scrub(describe_error(exc), *secret_sources(state))

    def call_hook(self, name: str, state: RunState, *args: Any) -> None:
        """Call a hook; a raising hook is logged and traced, never changes the outcome."""
        fn = self.hooks.get(name)
        if fn is None:
            return
        try:
            self.invoker.call(fn, *args, timeout=self.hook_timeout, what=f"hook {name}")
        except Exception as exc:
            err = self.error_text(exc, state)
            log.warning("hook %s raised for run %s: %s", name, state.id, err)
            event = TraceEvent(
                type="hook:error",
                run_id=state.id,
                workflow=state.workflow,
                error=err,
                meta={"hook": name},
                step=args[0] if args and isinstance(args[0], str) else None,
            )
            self.record([event])
