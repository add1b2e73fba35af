"""The ``workflow()`` builder and the frozen step definitions it produces."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .errors import (
    DefinitionError,
    DispatchError,
    InvalidInput,
    PayloadTooLarge,
    SerializationError,
)
from .jsoncodec import DEFAULT_MAX_BYTES, check_depth, find_non_finite, roundtrip
from .policy import Backoff

if TYPE_CHECKING:
    from ..handle import RunHandle
    from .context import StepContext

StepKind = Literal["step", "commit"]
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
class WaitFor:
    """Returned by a step to suspend the run until ``signal`` arrives."""

    signal: str
    timeout: float | None = None


def wait_for(signal: str, timeout: float | None = None) -> WaitFor:
    """Suspend the run until ``engine.signal(run_id, signal, payload)``.

    The payload becomes this step's output. With ``timeout`` (seconds), a wait that passes
    with no signal fails the step with a timeout error (and the run's failure path runs).
    """
    if not isinstance(signal, str) or not signal:
        raise DefinitionError("wait_for(signal): signal must be a non-empty string")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise DefinitionError(f"wait_for(timeout=...): must be a number > 0, got {timeout!r}")
    return WaitFor(signal, None if timeout is None else float(timeout))


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

    @property
    def is_commit(self) -> bool:
        return self.kind == "commit"

    def describe(self) -> dict[str, Any]:
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
        "steps": [[s.name, s.kind] for s in wf._steps],
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


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
    "InputSpec",
    "StepDef",
    "WaitFor",
    "Workflow",
    "registered_workflows",
    "wait_for",
    "workflow",
]
