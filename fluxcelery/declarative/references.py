"""Import paths in a workflow file (``run: myapp.refunds.validate``), resolved to objects.

Importing the named modules is the only side effect of loading a file: that is how the
handlers are found, as ``FLUX_WORKFLOWS`` imports modules. Each path is resolved once per
file; what it must resolve to (a callable, an exception class, an input spec) is checked
here so that the problem names the path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class UnresolvedPath(Exception):
    """An import path that does not resolve to what its key needs."""


def import_object(path: str) -> Any:
    """The object ``path`` names: the longest prefix that is a module, then attributes."""
    parts = path.split(".")
    failure = f"no module named {parts[0]!r}"
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing == module_name or module_name.startswith(missing + "."):
                failure = f"no module named {missing!r}"
                continue  # not a module: a shorter prefix may be, and the rest attributes
            raise UnresolvedPath(f"importing {module_name} failed: {exc}") from None
        except Exception as exc:  # the module itself raised while being imported
            raise UnresolvedPath(
                f"importing {module_name} failed: {type(exc).__name__}: {exc}"
            ) from None
        value: Any = module
        for depth, attr in enumerate(parts[cut:], start=cut):
            if not hasattr(value, attr):
                owner = ".".join(parts[:depth])
                raise UnresolvedPath(f"{owner} has no attribute {attr!r}")
            value = getattr(value, attr)
        return value
    raise UnresolvedPath(f"cannot import {path!r}: {failure}")


def _callable(value: Any) -> str | None:
    return None if callable(value) else f"is not callable (it is a {type(value).__name__})"


def _exception(value: Any) -> str | None:
    if isinstance(value, type) and issubclass(value, BaseException):
        return None
    return "is not an exception class"


def _input_spec(value: Any) -> str | None:
    # A pydantic model or a dataclass is a class, so callable too; InputSpec tells them apart.
    if callable(value):
        return None
    return "is not a pydantic model, a dataclass or a callable(input) -> bool"


#: What each key's import path must name.
EXPECTATIONS: dict[str, Callable[[Any], str | None]] = {
    "callable": _callable,
    "exception": _exception,
    "input": _input_spec,
}


class Resolver:
    """Resolves the import paths of one file, each once."""

    def __init__(self) -> None:
        self._done: dict[str, Any] = {}

    def resolve(self, path: str, expect: str) -> Any:
        """The object, or ``UnresolvedPath`` saying why ``path`` is not usable."""
        if path not in self._done:
            try:
                self._done[path] = import_object(path)
            except UnresolvedPath as exc:
                self._done[path] = exc
        value = self._done[path]
        if isinstance(value, UnresolvedPath):
            raise value
        wrong = EXPECTATIONS[expect](value)
        if wrong is not None:
            raise UnresolvedPath(f"{path} {wrong}")
        return value


__all__ = ["EXPECTATIONS", "UnresolvedPath", "Resolver", "import_object"]
