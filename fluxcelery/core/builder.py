"""The ``workflow()`` builder and the frozen step definitions it produces."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .approvals import (
    Approvers,
    Policy,
    approval_handler,
    check_approval_options,
    describe_approvers,
)
from .errors import (
    DefinitionError,
    DispatchError,
    InvalidInput,
    PayloadTooLarge,
    SerializationError,
)
from .jsoncodec import DEFAULT_MAX_BYTES, check_depth, find_non_finite, roundtrip
from .policy import Backoff
from .waits import WaitFor, wait_for

if TYPE_CHECKING:
    from ..handle import RunHandle
    from .context import StepContext
    from .records import RunState

StepKind = Literal["step", "commit", "parallel", "for_each", "approval"]
#: The kinds of a step that starts branches or items and waits for them (the join).
GROUP_KINDS = frozenset({"parallel", "for_each"})
#: At most this many items per ``for_each`` (SPEC section 11).
MAX_ITEMS = 10_000
Handler = Callable[["StepContext"], Any]
Condition = Callable[["StepContext"], Any]


class _Unset:
    """Marks an option left to the engine's default (``None`` means "no limit")."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"

    def __bool__(self) -> bool:
        return False


DEFAULT: Any = _Unset()


@dataclass(frozen=True)
class StepDef:
    """One step of a workflow, as defined. Options left unset resolve against the engine."""

    name: str
    index: int
    kind: StepKind
    handler: Handler
    retries: int | None = None
    timeout: float | _Unset | None = DEFAULT
    backoff: Backoff | None = None
    when: Condition | None = None
    compensate: Handler | None = None
    retry_on: tuple[type[BaseException], ...] | None = None
    no_retry_on: tuple[type[BaseException], ...] = ()
    #: A branch step: the branch's name and the index of its ``.parallel`` step.
    branch: str | None = None
    parent: int | None = None
    #: A branch step: the index of the next step of its branch (None: the branch's last).
    next_in_branch: int | None = None
    #: A ``.parallel`` step: each branch's name and step indexes, in definition order.
    branches: tuple[tuple[str, tuple[int, ...]], ...] = ()
    #: A ``.for_each`` step: ``items(ctx)`` (evaluated at fan-out), the most items in flight
    #: (None: all), and whether each item is a commit (once-only).
    items: Callable[[StepContext], Any] | None = None
    max_concurrency: int | None = None
    item_commit: bool = False
    #: An ``.approval`` step: who may decide (names, a callable of ctx, or None: anyone)
    #: and its policy (None: ask).
    approvers: Approvers | None = None
    policy: Policy | None = None

    @property
    def is_commit(self) -> bool:
        return self.kind == "commit"

    @property
    def is_group(self) -> bool:
        """A ``.parallel`` or ``.for_each`` step: it fans out, and completes at the join."""
        return self.kind in GROUP_KINDS

    @property
    def span(self) -> int:
        """How many rows after this one belong to it (its branch steps)."""
        return sum(len(indexes) for _, indexes in self.branches)

    def describe(self) -> dict[str, Any]:
        out = self._describe_one()
        if self.kind == "parallel":
            out["branches"] = [{"name": name, "steps": list(ix)} for name, ix in self.branches]
            out["has_compensation"] = False
        elif self.kind == "for_each":
            out["max_concurrency"] = self.max_concurrency
            out["item_kind"] = "commit" if self.item_commit else "step"
        elif self.kind == "approval":
            out["approvers"] = describe_approvers(self.approvers)
            out["policy"] = getattr(self.policy, "__qualname__", None) if self.policy else None
        if self.branch is not None:
            out["branch"] = self.branch
            out["parent"] = self.parent
        return out

    def _describe_one(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "kind": self.kind,
            "retries": self.retries,
            "timeout": None if isinstance(self.timeout, _Unset) else self.timeout,
            "timeout_default": isinstance(self.timeout, _Unset),
            "backoff": dataclasses.asdict(self.backoff) if self.backoff else None,
            "has_condition": self.when is not None,
            "has_compensation": self.compensate is not None,
        }


class InputSpec:
    """Validates workflow input with a pydantic model, a dataclass, or a ``callable -> bool``."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self._adapter: Any = None
        self._validator: Callable[[Any], Any] | None = None
        if isinstance(spec, type) and (_is_pydantic_model(spec) or dataclasses.is_dataclass(spec)):
            from pydantic import TypeAdapter

            self._adapter = TypeAdapter(spec)
        elif callable(spec):
            self._validator = spec
        else:
            raise DefinitionError(
                ".input(...) takes a pydantic model, a dataclass, or a callable(input) -> bool; "
                f"got {spec!r}"
            )

    @property
    def label(self) -> str:
        return getattr(self.spec, "__name__", repr(self.spec))

    def validate(self, workflow: str, raw: Any) -> Any:
        """Return the JSON-ready form to store, or raise ``InvalidInput`` naming the field."""
        if self._adapter is not None:
            from pydantic import ValidationError

            if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
                raw = dataclasses.asdict(raw)
            elif _is_pydantic_model(type(raw)):
                raw = raw.model_dump()
            # pydantic's JSON dump turns NaN and infinity into null (a ``dict[str, Any]``
            # field, a float field): the stored input would differ from the one given.
            bad = find_non_finite(raw)
            if bad is not None:
                raise InvalidInput(
                    f"Invalid input for workflow {workflow!r}: field {bad!r}: NaN and "
                    "infinity cannot be stored as JSON",
                    field=bad,
                )
            try:
                value = self._adapter.validate_python(raw)
            except ValidationError as exc:
                problems = []
                first_field = None
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err.get("loc", ())) or "(input)"
                    first_field = first_field or loc
                    problems.append(f"field {loc!r}: {err.get('msg')}")
                raise InvalidInput(
                    f"Invalid input for workflow {workflow!r}: " + "; ".join(problems),
                    field=first_field,
                ) from None
            try:
                return self._adapter.dump_python(value, mode="json")
            except (ValueError, RecursionError) as exc:  # e.g. "Maximum serialization depth"
                raise InvalidInput(f"Invalid input for workflow {workflow!r}: {exc}") from None
        assert self._validator is not None
        try:
            ok = self._validator(raw)
        except InvalidInput:
            raise
        except Exception as exc:
            raise InvalidInput(f"Invalid input for workflow {workflow!r}: {exc}") from None
        if ok is False:
            raise InvalidInput(f"Invalid input for workflow {workflow!r}: rejected by {self.label}")
        return raw

    def load(self, stored: Any) -> Any:
        """Rebuild the typed input (model or dataclass instance) from its stored JSON form."""
        if self._adapter is not None:
            return self._adapter.validate_python(stored)
        return stored


def _is_pydantic_model(tp: Any) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - pydantic is a dependency
        return False
    return isinstance(tp, type) and issubclass(tp, BaseModel)


_NAME_MAX = 200


def _check_name(what: str, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise DefinitionError(f"{what} name must be a non-empty string, got {name!r}")
    if len(name) > _NAME_MAX:
        raise DefinitionError(f"{what} name is longer than {_NAME_MAX} characters: {name[:40]!r}…")
    return name


class Workflow:
    """A named, versioned list of steps, built with ``workflow(name)``.

    The builder methods return the workflow itself. The definition freezes the first time it
    is used (run, described, registered); adding steps after that is an error.
    """

    def __init__(self, name: str, version: str | None = None) -> None:
        self.name = _check_name("Workflow", name)
        if version is not None and not isinstance(version, (str, int)):
            raise DefinitionError(f"workflow version must be a string, got {version!r}")
        self.version: str | None = None if version is None else str(version)
        self._steps: list[StepDef] = []
        self._frozen_steps: tuple[StepDef, ...] | None = None
        self._input: InputSpec | None = None
        self._frozen = False
        self._hash: str | None = None
        self._lock = threading.Lock()
        _registry_add(self)

    # -- building -----------------------------------------------------------------------
    def input(self, spec: Any) -> Workflow:
        """Validate run input with a pydantic model, a dataclass, or a callable -> bool."""
        self._check_open()
        self._input = None if spec is None else InputSpec(spec)
        return self

    def step(
        self,
        name: str,
        handler: Handler,
        *,
        retries: int | None = None,
        timeout: float | _Unset | None = DEFAULT,
        backoff: Backoff | None = None,
        when: Condition | None = None,
        compensate: Handler | None = None,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] | None = None,
        no_retry_on: tuple[type[BaseException], ...] | type[BaseException] = (),
    ) -> Workflow:
        """Add a step that runs logic (at least once; retried on failure)."""
        return self._add(
            "step",
            name,
            handler,
            retries,
            timeout,
            backoff,
            when,
            compensate,
            retry_on,
            no_retry_on,
        )

    def commit(
        self,
        name: str,
        handler: Handler,
        *,
        retries: int | None = None,
        timeout: float | _Unset | None = DEFAULT,
        backoff: Backoff | None = None,
        when: Condition | None = None,
        compensate: Handler | None = None,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] | None = None,
        no_retry_on: tuple[type[BaseException], ...] | type[BaseException] = (),
    ) -> Workflow:
        """Add a side-effect step that is never re-run once recorded ``completed``."""
        return self._add(
            "commit",
            name,
            handler,
            retries,
            timeout,
            backoff,
            when,
            compensate,
            retry_on,
            no_retry_on,
        )

    def _add(
        self,
        kind: StepKind,
        name: str,
        handler: Handler,
        retries: int | None,
        timeout: float | _Unset | None,
        backoff: Backoff | None,
        when: Condition | None,
        compensate: Handler | None,
        retry_on: Any,
        no_retry_on: Any,
    ) -> Workflow:
        self._check_open()
        problems: list[str] = []
        try:
            _check_name("Step", name)
        except DefinitionError as exc:
            problems.append(str(exc))
        if any(s.name == name for s in self._steps):
            problems.append(f"duplicate step name {name!r} (step names must be unique)")
        if not callable(handler):
            problems.append(f"handler must be callable, got {handler!r}")
        if retries is not None and (
            isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
        ):
            problems.append(f"retries must be an int >= 0, got {retries!r}")
        if (
            not isinstance(timeout, _Unset)
            and timeout is not None
            and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0)
        ):
            problems.append(f"timeout must be seconds > 0 or None, got {timeout!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            problems.append(f"backoff must be a Backoff(...), got {backoff!r}")
        if when is not None and not callable(when):
            problems.append(f"when must be callable(ctx) -> bool, got {when!r}")
        if compensate is not None and not callable(compensate):
            problems.append(f"compensate must be callable(ctx), got {compensate!r}")
        retry_on_t = _exc_tuple("retry_on", retry_on, problems) if retry_on is not None else None
        no_retry_t = _exc_tuple("no_retry_on", no_retry_on, problems) or ()
        if problems:
            raise DefinitionError(f"Workflow {self.name!r}, step {name!r}: " + "; ".join(problems))
        self._steps.append(
            StepDef(
                name=name,
                index=len(self._steps),
                kind=kind,
                handler=handler,
                retries=retries,
                timeout=timeout
                if isinstance(timeout, _Unset) or timeout is None
                else float(timeout),
                backoff=backoff,
                when=when,
                compensate=compensate,
                retry_on=retry_on_t,
                no_retry_on=no_retry_t,
            )
        )
        return self

    def approval(
        self,
        name: str,
        *,
        policy: Policy | None = None,
        approvers: Approvers | list[str] | None = None,
        timeout: float | None = None,
        compensate: Handler | None = None,
    ) -> Workflow:
        """Add an approval (SPEC section 16): ``policy(ctx)`` returns ``"auto"`` (approved
        at once), ``"ask"`` (the default: the run suspends until ``engine.approve`` or
        ``engine.reject``) or ``"deny"`` (the step fails, not retried). ``approvers``: the
        names who may decide, or ``callable(ctx) -> names`` (None: anyone). ``timeout``:
        seconds to wait for a decision before the step fails. ``ctx.results[name]`` is
        ``{decision, by, comment, at}``."""
        self._check_open()
        problems: list[str] = []
        stored = check_approval_options(policy, approvers, timeout, compensate, problems)
        if problems:
            raise DefinitionError(f"Workflow {self.name!r}, step {name!r}: " + "; ".join(problems))
        self._add(
            "approval",
            name,
            approval_handler(name, policy, None if timeout is None else float(timeout)),
            0,
            DEFAULT,  # the policy's call; the wait for a person is ``timeout``
            None,
            None,
            compensate,
            None,
            (),
        )
        self._steps[-1] = dataclasses.replace(self._steps[-1], approvers=stored, policy=policy)
        return self

    def parallel(self, name: str, *branches: Branch, when: Condition | None = None) -> Workflow:
        """Run ``branches`` at the same time; the step completes when all have (the join).
        ``ctx.results[name]`` is ``{branch: output of its last step}`` (SPEC section 11).
        ``when``: a condition; false skips the step and every branch."""
        self._check_open()
        problems: list[str] = []
        if when is not None and not callable(when):
            problems.append(f"when must be callable(ctx) -> bool, got {when!r}")
        try:
            _check_name("Step", name)
        except DefinitionError as exc:
            problems.append(str(exc))
        if not branches:
            problems.append("give at least one branch: .parallel(name, branch('a').step(...))")
        seen: set[str] = set()
        for b in branches:
            if not isinstance(b, Branch):
                problems.append(f"branches must be made with branch(name), got {b!r}")
                continue
            if b.name in seen:
                problems.append(f"duplicate branch name {b.name!r}")
            seen.add(b.name)
            if not b.steps:
                problems.append(f"branch {b.name!r} has no steps")
        taken = {s.name for s in self._steps} | {name}
        for b in branches:
            for sd in b.steps if isinstance(b, Branch) else ():
                if sd.name in taken:
                    problems.append(
                        f"duplicate step name {sd.name!r} (step names must be unique across "
                        "the workflow, branches included)"
                    )
                taken.add(sd.name)
        if problems:
            raise DefinitionError(f"Workflow {self.name!r}, step {name!r}: " + "; ".join(problems))
        parent = len(self._steps)
        rows: list[StepDef] = []
        layout: list[tuple[str, tuple[int, ...]]] = []
        at = parent + 1
        for b in branches:
            indexes = tuple(range(at, at + len(b.steps)))
            layout.append((b.name, indexes))
            for k, sd in enumerate(b.steps):
                rows.append(
                    dataclasses.replace(
                        sd,
                        index=at + k,
                        branch=b.name,
                        parent=parent,
                        next_in_branch=at + k + 1 if k + 1 < len(b.steps) else None,
                    )
                )
            at += len(b.steps)
        self._steps.append(
            StepDef(
                name=name,
                index=parent,
                kind="parallel",
                handler=_join_only,
                retries=0,
                when=when,
                branches=tuple(layout),
            )
        )
        self._steps.extend(rows)
        return self

    def for_each(
        self,
        name: str,
        handler: Handler,
        *,
        items: Callable[[StepContext], Any],
        max_concurrency: int | None = None,
        commit: bool = False,
        retries: int | None = None,
        timeout: float | _Unset | None = DEFAULT,
        backoff: Backoff | None = None,
        when: Condition | None = None,
        compensate: Handler | None = None,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] | None = None,
        no_retry_on: tuple[type[BaseException], ...] | type[BaseException] = (),
    ) -> Workflow:
        """Run ``handler`` once per item of ``items(ctx)`` (a JSON list, evaluated once at
        fan-out, at most 10,000), at most ``max_concurrency`` at a time; ``ctx.item`` and
        ``ctx.item_index`` say which. ``ctx.results[name]`` is the list of outputs in item
        order. ``commit=True``: each item is a commit (once-only, its own idempotency key).
        The options apply to each item; ``compensate`` runs once per completed item."""
        problems: list[str] = []
        if not callable(items):
            problems.append(f"items must be callable(ctx) -> list, got {items!r}")
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            problems.append(f"max_concurrency must be an int >= 1 or None, got {max_concurrency!r}")
        if problems:
            raise DefinitionError(f"Workflow {self.name!r}, step {name!r}: " + "; ".join(problems))
        self._add(
            "for_each",
            name,
            handler,
            retries,
            timeout,
            backoff,
            when,
            compensate,
            retry_on,
            no_retry_on,
        )
        last = self._steps[-1]
        self._steps[-1] = dataclasses.replace(
            last, items=items, max_concurrency=max_concurrency, item_commit=bool(commit)
        )
        return self

    def _check_open(self) -> None:
        if self._frozen:
            raise DefinitionError(
                f"Workflow {self.name!r} is already in use; define all its steps before running it"
            )

    # -- using --------------------------------------------------------------------------
    def freeze(self) -> Workflow:
        """Validate and freeze the definition (done automatically on first use)."""
        if self._frozen:
            return self
        with self._lock:
            if not self._steps:
                raise DefinitionError(f"Workflow {self.name!r} has no steps")
            self._hash = _definition_hash(self)
            self._frozen_steps = tuple(self._steps)
            self._frozen = True
        return self

    @property
    def steps(self) -> tuple[StepDef, ...]:
        # Read several times per step on the hot path: frozen, the tuple is built once.
        frozen = self._frozen_steps
        return frozen if frozen is not None else tuple(self._steps)

    @property
    def input_spec(self) -> InputSpec | None:
        return self._input

    @property
    def definition_hash(self) -> str:
        return self.freeze()._hash or ""

    def row_def(self, state: RunState, index: int) -> StepDef:
        """The definition row ``index`` of a run runs: its own, or for a for_each item
        (a row added at fan-out) its for_each step's."""
        steps = self.steps
        if index < len(steps):
            return steps[index]
        parent = state.steps[index].parent
        if parent is None or not 0 <= parent < len(steps) or steps[parent].kind != "for_each":
            raise DefinitionError(f"run {state.id}: step row {index} belongs to no for_each")
        group = steps[parent]
        kind: StepKind = "commit" if group.item_commit else "step"
        # ``when`` decides for the whole for_each (at fan-out), not per item.
        return dataclasses.replace(group, index=index, kind=kind, parent=parent, when=None)

    def after(self, index: int) -> int:
        """The index of the step that follows step ``index`` at the top level (past the
        branch steps of a ``.parallel``)."""
        return index + 1 + self.steps[index].span

    def step_named(self, name: str) -> StepDef:
        for step in self._steps:
            if step.name == name:
                return step
        raise DefinitionError(
            f"Workflow {self.name!r} has no step {name!r} "
            f"(steps: {', '.join(s.name for s in self._steps)})"
        )

    def validate_input(self, raw: Any) -> Any:
        """The JSON-ready input to store; raises ``InvalidInput``."""
        if self._input is None:
            return {} if raw is None else raw
        return self._input.validate(self.name, raw)

    def prepare_input(self, raw: Any, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Any:
        """The input exactly as a run would store it (validated, through the same JSON
        round trip, within ``max_bytes`` once encoded), or ``InvalidInput`` saying why.
        Every door checks with this before it says yes: the engine, the AMQP ingress and
        the HTTP producer."""
        try:
            stored = roundtrip(self.validate_input(raw), what="workflow input", max_bytes=max_bytes)
            check_depth(stored, what="workflow input")
            return stored
        except (SerializationError, PayloadTooLarge) as exc:
            raise InvalidInput(f"Invalid input for workflow {self.name!r}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        """A JSON-serializable description used by the CLI, the Flower tab and the viewer."""
        self.freeze()
        return {
            "name": self.name,
            "version": self.version,
            "definition_hash": self._hash,
            "input": self._input.label if self._input else None,
            "steps": [s.describe() for s in self._steps],
        }

    #: Starts a run with the default engine: plugged in by the composition root
    #: (defaults.py), so that definitions need not import the engine.
    starter: ClassVar[Callable[..., RunHandle] | None] = None

    def delay(self, input: Any = None, **options: Any) -> RunHandle:
        """Start a run on Celery workers with the default engine (``engine.start``)."""
        if Workflow.starter is None:
            raise DispatchError("fluxcelery.defaults is not loaded: import fluxcelery first")
        return Workflow.starter(self, input, **options)

    def __repr__(self) -> str:
        v = f" v{self.version}" if self.version else ""
        return f"<Workflow {self.name}{v}: {len(self._steps)} steps>"


def _exc_tuple(option: str, value: Any, problems: list[str]) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in items):
        problems.append(f"{option} must be an exception type or a tuple of them, got {value!r}")
        return ()
    return items


def _definition_hash(wf: Workflow) -> str:
    """Identity of a definition's shape: what a stored run depends on to continue safely."""
    shape = {
        "name": wf.name,
        "version": wf.version,
        # A branch step's branch joins its shape (linear workflows keep their hash).
        "steps": [[s.name, s.kind] + ([s.branch] if s.branch else []) for s in wf._steps],
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def _join_only(ctx: StepContext) -> None:
    """The handler of a ``.parallel`` step: its work is its branches'."""
    return None


class Branch:
    """One branch of a ``.parallel`` step: a sequence built with ``.step``/``.commit``
    (same options as a workflow's), made with ``branch(name)``."""

    def __init__(self, name: str) -> None:
        self.name = _check_name("Branch", name)
        self._wf = Workflow.__new__(Workflow)  # a scratch builder, not registered
        self._wf.name = f"branch {name!r}"
        self._wf._steps = []
        self._wf._frozen = False

    @property
    def steps(self) -> list[StepDef]:
        return list(self._wf._steps)

    def step(self, name: str, handler: Handler, **options: Any) -> Branch:
        """Add a step to this branch (options as ``Workflow.step``)."""
        self._wf.step(name, handler, **options)
        return self

    def commit(self, name: str, handler: Handler, **options: Any) -> Branch:
        """Add a commit step to this branch (options as ``Workflow.commit``)."""
        self._wf.commit(name, handler, **options)
        return self

    def __repr__(self) -> str:
        return f"<Branch {self.name}: {len(self._wf._steps)} steps>"


def branch(name: str) -> Branch:
    """Start a branch for ``.parallel``: ``branch("hotel").step("pick", pick).commit(...)``."""
    return Branch(name)


def workflow(name: str, version: str | None = None) -> Workflow:
    """Start defining a workflow: ``workflow("order").step("a", fn).commit("b", fn2)``."""
    return Workflow(name, version)


# -- the process-wide registry workers and the CLI look workflows up in --------------------
_REGISTRY: dict[str, Workflow] = {}
_REGISTRY_LOCK = threading.Lock()


def _registry_add(wf: Workflow) -> None:
    with _REGISTRY_LOCK:
        _REGISTRY[wf.name] = wf


def registered_workflows() -> dict[str, Workflow]:
    """Every workflow defined in this process, by name (the latest definition wins)."""
    with _REGISTRY_LOCK:
        return dict(_REGISTRY)


__all__ = [
    "DEFAULT",
    "GROUP_KINDS",
    "MAX_ITEMS",
    "Branch",
    "branch",
    "InputSpec",
    "StepDef",
    "WaitFor",
    "Workflow",
    "registered_workflows",
    "wait_for",
    "workflow",
]
