"""``when`` expressions: CEL (Common Expression Language) through cel-python.

CEL is a standard, non-Turing-complete expression language: no loops beyond its bounded
macros, no assignment, no access to Python objects. cel-python's interpreter walks the
parsed tree (its transpiler, which uses ``exec``, is not used), so an expression can only
read the three values it is given, never call or reach into Python.

An expression is compiled once, when the file is loaded, and checked there: a syntax error,
a name other than ``input``, ``data`` and ``results``, or a function CEL does not have is a
problem of the file. At run time it sees the run's values as JSON (the input as stored:
a pydantic model's JSON form, so a ``Decimal`` is a string), and a missing key or a type
mismatch raises ``ConditionError`` naming the step and the expression: the step fails, not
retried (the same data would fail the same way). ``has(data.key)`` tests for a key.
"""

from __future__ import annotations

import operator
import re
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import celpy
import lark
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, base_functions
from pydantic_core import to_jsonable_python

from ..core.errors import NonRetryableError

if TYPE_CHECKING:
    from ..core.context import StepContext

#: The names an expression may read.
NAMES = ("input", "data", "results")
#: CEL's macros; the first argument of the last five names a variable of the macro.
MACROS = frozenset({"has", "dyn", "all", "exists", "exists_one", "map", "filter"})
BINDING_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
#: CEL's standard functions (cel-python's, without its operators).
FUNCTIONS = frozenset(name for name in base_functions if re.fullmatch(r"[A-Za-z]\w*", name))

_TYPE_NAMES = {
    "IntType": "int",
    "UintType": "uint",
    "DoubleType": "double",
    "StringType": "string",
    "BoolType": "bool",
    "MapType": "map",
    "ListType": "list",
    "NoneType": "null",
    "BytesType": "bytes",
    "TimestampType": "timestamp",
    "DurationType": "duration",
}
_OPERATORS = {
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_eq": "==",
    "relation_ne": "!=",
    "relation_in": "in",
}


class ExpressionError(Exception):
    """A ``when`` expression that cannot be compiled (a problem of the file)."""


class ConditionError(NonRetryableError):
    """A ``when`` expression failed at run time (a missing key, a type mismatch, a result
    that is not a boolean): the step fails, without further attempts."""

    code = "condition_error"


class Condition:
    """A compiled ``when``: ``condition(ctx) -> bool``, what the builder takes."""

    __slots__ = ("_program", "source", "step")

    def __init__(self, source: str, step: str, program: celpy.Runner) -> None:
        self.source = source
        self.step = step
        self._program = program

    def __call__(self, ctx: StepContext) -> bool:
        activation = {
            "input": celpy.json_to_cel(to_jsonable_python(ctx.input)),
            "data": celpy.json_to_cel(ctx.data),
            "results": celpy.json_to_cel(ctx.results),
        }
        value: Any
        try:
            value = self._program.evaluate(activation)
        except CELEvalError as exc:
            value = exc
        except (RecursionError, ValueError, TypeError, ArithmeticError) as exc:
            raise self._error(f"{type(exc).__name__}: {exc}") from None
        if isinstance(value, CELEvalError):
            raise self._error(describe_eval_error(value)) from None
        if not isinstance(value, celtypes.BoolType):
            kind = _TYPE_NAMES.get(type(value).__name__, type(value).__name__)
            raise self._error(f"the result must be a bool (true or false), got {kind}")
        return bool(value)

    def _error(self, detail: str) -> ConditionError:
        return ConditionError(f"when of step {self.step!r} ({self.source}): {detail}")

    def __repr__(self) -> str:
        return f"<Condition {self.source!r}>"


def describe_eval_error(exc: CELEvalError) -> str:
    """cel-python's evaluation error in one short line."""
    message = str(exc.args[0]) if exc.args else str(exc)
    match = re.search(r"no such member in mapping: (.+)$", message)
    if match:
        return f"no key {match.group(1)} (test for it with has(...))"
    match = re.search(
        r"overload for Token\('RULE', '(\w+)'\) applied to "
        r"'\(<class '[\w.]*?(\w+)'>, <class '[\w.]*?(\w+)'>\)'",
        message,
    )
    if match:
        op = _OPERATORS.get(match.group(1), match.group(1))
        left, right = (_TYPE_NAMES.get(t, t) for t in match.group(2, 3))
        return f"no operator {op} for {left} and {right}"
    return message.split(" (in activation", 1)[0][:200]


def _numeric(op: Callable[[Any, Any], bool], fallback: Any) -> Callable[[Any, Any], Any]:
    """A comparison that also compares an int with a double, as CEL's specification does
    (cel-python refuses it): JSON does not say which a number is (``5`` or ``5.0``)."""

    def compare(left: Any, right: Any) -> Any:
        if (
            isinstance(left, _NUMBERS)
            and isinstance(right, _NUMBERS)
            and type(left) is not type(right)
        ):
            return celtypes.BoolType(op(_plain(left), _plain(right)))
        return fallback(left, right)

    return compare


_NUMBERS = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)


def _plain(value: Any) -> int | float:
    return float(value) if isinstance(value, celtypes.DoubleType) else int(value)


_COMPARISONS: dict[str, Any] = {
    "_<_": _numeric(operator.lt, base_functions["_<_"]),
    "_<=_": _numeric(operator.le, base_functions["_<=_"]),
    "_>_": _numeric(operator.gt, base_functions["_>_"]),
    "_>=_": _numeric(operator.ge, base_functions["_>=_"]),
    "_==_": _numeric(operator.eq, base_functions["_==_"]),
    "_!=_": _numeric(operator.ne, base_functions["_!=_"]),
}

_lock = threading.Lock()
_environment: celpy.Environment | None = None


def _env() -> celpy.Environment:
    """One interpreting environment per process (cel-python raises the recursion limit to
    2500 when it makes one; a higher limit set before is kept)."""
    global _environment
    if _environment is None:
        before = sys.getrecursionlimit()
        env = celpy.Environment(runner_class=celpy.InterpretedRunner)
        sys.setrecursionlimit(max(before, sys.getrecursionlimit()))
        _environment = env
    return _environment


def compile_condition(source: str, step: str) -> Condition:
    """Compile and check ``source``; ``ExpressionError`` says what is wrong with it."""
    with _lock:
        env = _env()
        try:
            tree = env.compile(source)
        except CELParseError as exc:
            raise ExpressionError(_syntax_error(source, exc)) from None
        except (lark.exceptions.LarkError, RecursionError) as exc:
            raise ExpressionError(f"syntax error: {str(exc).splitlines()[0][:120]}") from None
        problems = check_tree(tree)
        if problems:
            raise ExpressionError("; ".join(problems))
        program = env.program(tree, functions=_COMPARISONS)
    return Condition(source, step, program)


def _syntax_error(source: str, exc: CELParseError) -> str:
    column = exc.column if isinstance(exc.column, int) else None
    line = exc.line if isinstance(exc.line, int) else 1
    if column is None:
        return "syntax error"
    text = source.splitlines()[line - 1] if source.splitlines() else ""
    near = text[column - 1 : column + 11]
    where = f"near {near!r}" if near.strip() else "at the end"
    return f"syntax error at column {column} of the expression, {where}"


def check_tree(tree: lark.Tree) -> list[str]:
    """What the expression reads and calls, checked: only ``input``, ``data``, ``results``
    (and a macro's own variable), only CEL's functions, no message construction."""
    problems: list[str] = []
    _walk(tree, frozenset(), problems)
    return sorted(set(problems), key=problems.index)


def _walk(node: Any, bound: frozenset[str], problems: list[str]) -> None:
    if not isinstance(node, lark.Tree):
        return
    kind = node.data
    if kind in ("ident", "dot_ident"):
        name = str(node.children[-1])
        if name not in NAMES and name not in bound:
            problems.append(f"unknown name {name!r} (an expression reads {', '.join(NAMES)})")
        return
    if kind in ("ident_arg", "dot_ident_arg"):
        _call(str(node.children[0]), problems)
        for child in node.children[1:]:
            _walk(child, bound, problems)
        return
    if kind == "member_dot_arg":
        target, method, *rest = node.children
        name = str(method)
        _call(name, problems)
        _walk(target, bound, problems)
        args = rest[0].children if rest and isinstance(rest[0], lark.Tree) else []
        if name in BINDING_MACROS and args:
            variable = _variable(args[0])
            if variable is None:
                problems.append(f"{name}(...) takes a variable name first")
            inner = bound | {variable} if variable else bound
            for child in args[1:]:
                _walk(child, inner, problems)
            return
        for child in args:
            _walk(child, bound, problems)
        return
    if kind == "member_object":
        problems.append("message construction (Type{...}) is not supported")
        return
    for child in node.children:
        _walk(child, bound, problems)


def _call(name: str, problems: list[str]) -> None:
    if name not in FUNCTIONS and name not in MACROS:
        problems.append(f"unknown function {name!r}")


def _variable(expr: Any) -> str | None:
    """The name a macro binds: its first argument must be a bare identifier."""
    node = expr
    while isinstance(node, lark.Tree):
        if node.data == "ident":
            return str(node.children[0])
        if len(node.children) != 1:
            return None
        node = node.children[0]
    return None


__all__ = [
    "Condition",
    "ConditionError",
    "ExpressionError",
    "check_tree",
    "compile_condition",
    "describe_eval_error",
]
