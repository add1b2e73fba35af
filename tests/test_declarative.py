"""Declarative workflows (SPEC section 15): a YAML or JSON file builds the same ``Workflow``
as the builder, every problem of a file is reported at once with its line and column, and
nothing in a file is executed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import declarative_handlers as h
import pytest

from fluxcelery import (
    Backoff,
    DefinitionError,
    FluxEngine,
    MemoryStorage,
    MissingExtra,
    RunStatus,
    StepStatus,
    branch,
    load_workflow,
    workflow,
)
from fluxcelery.celery.app import build_app, import_workflow_modules
from fluxcelery.core import builder
from fluxcelery.declarative import (
    Problem,
    WorkflowFileError,
    check_workflow_file,
    import_workflow_sources,
    is_workflow_file,
)
from fluxcelery.declarative.expressions import (
    Condition,
    ConditionError,
    ExpressionError,
    compile_condition,
)
from fluxcelery.settings import Settings

FILES = Path(__file__).parent / "declarative_files"
FEATURES = FILES / "features.yaml"
FIVE = FILES / "five_mistakes.yaml"


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    """Loading registers workflows by name: put back what other tests registered."""
    saved = dict(builder._REGISTRY)
    yield
    builder._REGISTRY.clear()
    builder._REGISTRY.update(saved)


def write(tmp_path: Path, text: str, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems_of(path: Path) -> list[tuple[int, int, str]]:
    return [(p.line, p.col, p.message) for p in check_workflow_file(path).problems]


# -- every feature maps to the builder ------------------------------------------------------
def features_in_python() -> Any:
    return (
        workflow("every-feature", version="7")
        .input(h.RefundIn)
        .step(
            "validate",
            h.validate,
            retries=2,
            timeout=10,
            backoff=Backoff(base=0.5, factor=3, max=20, jitter=False),
            retry_on=h.Flaky,
            no_retry_on=(h.Fatal, KeyError),
        )
        .commit(
            "refund",
            h.refund,
            compensate=h.reverse,
            when=lambda ctx: ctx.data.get("approved") is True,
            timeout=None,
        )
        .approval(
            "manager", policy=h.policy, approvers=["ann", "bob"], timeout=3600, compensate=h.reverse
        )
        .approval("finance", approvers=h.approvers)
        .parallel(
            "notify",
            branch("email").step("send-email", h.email, retries=1),
            branch("sms")
            .step("pick-number", h.pick, when=lambda ctx: True)
            .commit("send-sms", h.sms, compensate=h.unsend),
            when=lambda ctx: "quiet" not in ctx.data,
        )
        .for_each(
            "receipts",
            h.receipt,
            items=h.recipients,
            max_concurrency=3,
            commit=True,
            retries=0,
            backoff=Backoff(base=2),
        )
    )


def test_every_feature_builds_the_same_workflow_as_python() -> None:
    python = features_in_python()
    loaded = load_workflow(FEATURES)

    assert loaded.definition_hash == python.definition_hash
    assert loaded.describe() == python.describe()
    for mine, theirs in zip(loaded.steps, python.steps, strict=True):
        assert (mine.name, mine.kind, mine.branch, mine.parent) == (
            theirs.name,
            theirs.kind,
            theirs.branch,
            theirs.parent,
        )
        if mine.kind != "approval":  # an approval's handler is made by the builder
            assert mine.handler is theirs.handler
        assert mine.compensate is theirs.compensate
        assert (mine.retries, mine.timeout, mine.backoff) == (
            theirs.retries,
            theirs.timeout,
            theirs.backoff,
        )
        assert (mine.retry_on, mine.no_retry_on) == (theirs.retry_on, theirs.no_retry_on)
        assert (mine.items, mine.max_concurrency, mine.item_commit) == (
            theirs.items,
            theirs.max_concurrency,
            theirs.item_commit,
        )
        assert (mine.approvers, mine.policy) == (theirs.approvers, theirs.policy)
        assert (mine.when is None) == (theirs.when is None)
    assert isinstance(loaded.step_named("refund").when, Condition)
    assert loaded.input_spec is not None and loaded.input_spec.spec is h.RefundIn


def test_a_json_file_is_the_same_workflow(tmp_path: Path) -> None:
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load(FEATURES.read_text())
    path = tmp_path / "features.json"
    path.write_text(json.dumps(data, indent=2))

    assert load_workflow(path).definition_hash == features_in_python().definition_hash


@pytest.mark.parametrize(
    ("given", "expected"),
    [("version: 3", "3"), ('version: "3"', "3"), ("", None)],
)
def test_version_is_a_string_as_in_python(tmp_path: Path, given: str, expected: Any) -> None:
    path = write(
        tmp_path, f"name: v\n{given}\nsteps: [{{step: a, run: declarative_handlers.pick}}]"
    )
    wf = load_workflow(path)
    assert wf.version == expected
    assert wf.definition_hash == workflow("v", expected).step("a", h.pick).definition_hash


@pytest.mark.parametrize("spec", ["RefundIn", "PlainIn", "accept_all"])
def test_input_takes_a_model_a_dataclass_or_a_callable(tmp_path: Path, spec: str) -> None:
    path = write(
        tmp_path,
        f"""
        name: typed
        input: declarative_handlers.{spec}
        steps: [{{step: a, run: declarative_handlers.pick}}]
        """,
    )
    spec_obj = load_workflow(path).input_spec
    assert spec_obj is not None and spec_obj.spec is getattr(h, spec)


def test_options_left_out_keep_the_engine_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "name: d\nsteps: [{step: a, run: declarative_handlers.pick}]")
    step = load_workflow(path).steps[0]
    assert (step.retries, step.timeout, step.backoff, step.when) == (
        None,
        builder.DEFAULT,
        None,
        None,
    )


# -- problems: all at once, each where it is -------------------------------------------------
def test_five_mistakes_give_exactly_five_problems_with_their_positions() -> None:
    assert problems_of(FIVE) == [
        (
            6,
            5,
            "unknown key 'retires' (did you mean 'retries'? valid keys: step, run, retries, "
            "timeout, backoff, when, compensate, retry_on, no_retry_on)",
        ),
        (8, 10, "'run': declarative_handlers has no attribute 'no_such_handler'"),
        (11, 14, "'timeout' must be seconds > 0, or null for no limit, got -5"),
        (14, 11, "'when': syntax error at column 16 of the expression, near '&& data.ok'"),
        (15, 13, "duplicate step name 'validate' (first used on line 4)"),
    ]


def test_load_raises_one_definition_error_naming_every_problem() -> None:
    with pytest.raises(DefinitionError) as caught:
        load_workflow(FIVE)
    error = caught.value
    assert isinstance(error, WorkflowFileError)
    assert len(error.problems) == 5
    lines = str(error).splitlines()
    assert lines[0] == f"workflow file {FIVE} has 5 problems:"
    assert lines[1:] == [f"  {p}" for p in error.problems]
    assert all(line.startswith(f"  {FIVE}:") for line in lines[1:])


CASES = {
    "no kind": ("steps:\n  - run: declarative_handlers.pick\n", (3, "run"), "a step needs one of"),
    "two kinds": (
        "steps:\n  - {step: a, commit: b, run: declarative_handlers.pick}\n",
        (3, "{step"),
        "a step has one kind, this one has 'step' and 'commit': keep one",
    ),
    "missing run": ("steps:\n  - step: a\n", (3, "step"), "step 'a': missing key 'run'"),
    "wrong type": (
        "steps:\n  - {step: a, run: declarative_handlers.pick, retries: two}\n",
        (3, "two"),
        "'retries' must be a whole number >= 0 (extra attempts after the first), got \"two\"",
    ),
    "not an import path": (
        "steps:\n  - {step: a, run: pick}\n",
        (3, "pick"),
        "'run' must be an import path such as 'package.module.function', got \"pick\"",
    ),
    "module missing": (
        "steps:\n  - {step: a, run: nosuch.mod.fn}\n",
        (3, "nosuch"),
        "'run': cannot import 'nosuch.mod.fn': no module named 'nosuch'",
    ),
    "not callable": (
        "steps:\n  - {step: a, run: declarative_handlers.NOT_CALLABLE}\n",
        (3, "declarative_handlers.NOT"),
        "'run': declarative_handlers.NOT_CALLABLE is not callable (it is a int)",
    ),
    "not an exception": (
        "steps:\n  - step: a\n    run: declarative_handlers.pick\n"
        "    retry_on: [declarative_handlers.Flaky, declarative_handlers.pick]\n",
        (5, "declarative_handlers.pick"),
        "item 2 of 'retry_on': declarative_handlers.pick is not an exception class",
    ),
    "bad backoff": (
        "steps:\n  - step: a\n    run: declarative_handlers.pick\n"
        "    backoff: {base: 1, factor: 0.5}\n",
        (5, "0.5"),
        "'factor' must be a number >= 1, got 0.5",
    ),
    "unknown name in when": (
        "steps:\n  - {step: a, run: declarative_handlers.pick, when: 'env.HOME == 1'}\n",
        (3, "'env"),
        "'when': unknown name 'env' (an expression reads input, data, results)",
    ),
    "approval in a branch": (
        "steps:\n  - parallel: p\n    branches:\n      one:\n        - approval: x\n",
        (6, "approval"),
        "a branch holds step and commit steps, not 'approval' (no nesting)",
    ),
    "for_each without items": (
        "steps:\n  - {for_each: f, run: declarative_handlers.pick}\n",
        (3, "{for_each"),
        "for_each 'f': missing key 'items'",
    ),
    "approvers as one name": (
        "steps:\n  - {approval: ok, approvers: ann}\n",
        (3, "ann"),
        "'approvers' must be a list of names, or the import path of a callable(ctx) -> "
        'names, got "ann"',
    ),
    "unknown top-level key": ("steps: []\nstep: x\n", (3, "step"), "unknown key 'step'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_kind_of_mistake_is_named_where_it_is(tmp_path: Path, case: str) -> None:
    body, (line, token), message = CASES[case]
    text = "name: m\n" + body
    col = text.splitlines()[line - 1].index(token) + 1  # where the value (or key) starts
    found = problems_of(write(tmp_path, text))
    assert [(line, col) for line, col, _ in found][-1:] == [(line, col)], found
    assert message in found[-1][2], found


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad.yaml", "name: x\nsteps: [a, b\n", (3, 1, "invalid YAML: expected ',' or ']'")),
        ("bad.yaml", "name: x\nname: y\n", (2, 1, 'invalid YAML: found duplicate key "name"')),
        ("bad.json", '{"name": "x",\n  "steps": [1,]}', (2, 15, "invalid JSON: Expecting value")),
        ("dup.json", '{"name": "x", "name": "y"}', (1, 15, "invalid JSON: found duplicate key")),
        ("empty.yaml", "", (1, 1, "the file is empty")),
        ("list.yaml", "- a\n", (1, 1, "the file must hold a map")),
        ("flow.txt", "name: x", (1, 1, "not a workflow file: use .yaml, .yml or .json")),
        ("date.yaml", "name: 2024-01-01\n", (1, 7, "a date is not allowed here (quote it")),
    ],
)
def test_files_that_do_not_parse(tmp_path: Path, name: str, text: str, expected: Any) -> None:
    (tmp_path / name).write_text(text)
    found = problems_of(tmp_path / name)
    assert len(found) == 1, found
    assert found[0][:2] == expected[:2] and found[0][2].startswith(expected[2]), found


def test_a_missing_file_is_a_problem_too(tmp_path: Path) -> None:
    found = check_workflow_file(tmp_path / "nope.yaml").problems
    assert [(p.line, p.col) for p in found] == [(1, 1)]
    assert "cannot read the file" in found[0].message
    assert str(found[0]).startswith(f"{tmp_path / 'nope.yaml'}:1:1: ")


def test_problem_prints_as_file_line_col() -> None:
    assert str(Problem(3, 7, "unknown key 'x'", "f.yaml")) == "f.yaml:3:7: unknown key 'x'"


# -- security: nothing in a file runs ----------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        '!!python/object/apply:builtins.open ["{out}", "w"]',
        "!!python/name:os.system",
        "!!python/object:pathlib.Path {{}}",
        "!custom value",
    ],
)
def test_python_tags_are_refused_never_constructed(tmp_path: Path, value: str) -> None:
    out = tmp_path / "pwned"
    path = write(tmp_path, f"name: t\nsteps:\n  - step: a\n    run: {value.format(out=out)}\n")
    found = problems_of(path)
    assert len(found) == 1 and found[0][:2] == (4, 10), found
    assert "is not allowed: a workflow file holds plain values" in found[0][2]
    assert not out.exists()


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("data.__init__()", "unknown function '__init__'"),
        ("__import__('os').system('id') == 0", "unknown function '__import__'"),
        ("input.__class__.__subclasses__() == []", "unknown function '__subclasses__'"),
        ("os.system('id') == 0", "unknown name 'os'"),
        ("google.protobuf.Struct{} == input", "message construction"),
        ("data.items.reduce(x, 0, x + 1) > 1", "unknown function 'reduce'"),
    ],
)
def test_expressions_that_reach_for_python_are_refused_at_load(
    expression: str, problem: str
) -> None:
    with pytest.raises(ExpressionError, match=problem.replace("(", r"\(")):
        compile_condition(expression, "s")


def test_attribute_names_are_map_keys_never_python_attributes() -> None:
    cond = compile_condition("input.__class__ == 'x'", "gate")
    with pytest.raises(ConditionError, match="no key '__class__'"):
        cond(ctx(input={"a": 1}))


def test_import_paths_with_dunders_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "name: d\nsteps: [{step: a, run: os.__dict__}]\n")
    assert problems_of(path) == [
        (
            2,
            24,
            "'run' must be an import path such as 'package.module.function', got \"os.__dict__\"",
        )
    ]


def test_an_alias_bomb_is_cut_short(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    path = write(tmp_path, "\n".join(["name: bomb", *lines, "steps: []"]))
    assert problems_of(path) == [(1, 1, "more than 100000 values once aliases expand")]


# -- CEL `when` -------------------------------------------------------------------------------
def ctx(**values: Any) -> Any:
    return SimpleNamespace(**{"input": {}, "data": {}, "results": {}, **values})


@pytest.mark.parametrize(
    ("expression", "values", "expected"),
    [
        ("input.amount > 0 && data.approved == true", {"input": {"amount": 5}}, "no key"),
        (
            "input.amount > 0 && data.approved == true",
            {"input": {"amount": 5}, "data": {"approved": True}},
            True,
        ),
        ("input.amount > 0 || !data.flag", {"input": {"amount": 0}, "data": {"flag": True}}, False),
        ("!has(data.flag) || data.flag", {}, True),
        ("input.amount > 1.5", {"input": {"amount": 2}}, True),
        ("data.n == 2", {"data": {"n": 2.0}}, True),
        ("'vip' in input.tags", {"input": {"tags": ["vip"]}}, True),
        ("input.kind in ['a', 'b']", {"input": {"kind": "c"}}, False),
        ("results.charge.status == 'ok'", {"results": {"charge": {"status": "ok"}}}, True),
        ("results.charge == null", {"results": {"charge": None}}, True),
        ("size(input.tags) >= 2", {"input": {"tags": ["a"]}}, False),
        ("input.tags.exists(t, t.startsWith('v'))", {"input": {"tags": ["vip"]}}, True),
        ("input.amount > 'x'", {"input": {"amount": 1}}, "no operator > for int and string"),
        ("input.amount", {"input": {"amount": 1}}, "the result must be a bool"),
        ("1 / input.n == 1", {"input": {"n": 0}}, "divide by zero"),
    ],
)
def test_when_expressions(expression: str, values: dict[str, Any], expected: Any) -> None:
    cond = compile_condition(expression, "gate")
    if isinstance(expected, bool):
        assert cond(ctx(**values)) is expected
        return
    with pytest.raises(ConditionError) as caught:
        cond(ctx(**values))
    assert str(caught.value).startswith(f"when of step 'gate' ({expression}): ")
    assert expected in str(caught.value)


def test_when_sees_a_pydantic_input_as_its_stored_json() -> None:
    typed = h.RefundIn(amount="12.50", tags=["vip"])
    assert compile_condition("input.amount == '12.50'", "s")(ctx(input=typed)) is True
    assert compile_condition("double(input.amount) > 12.0", "s")(ctx(input=typed)) is True


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("input.amount +", "syntax error at column 14 of the expression"),
        ("input.amount > && x", "syntax error at column 16"),
        ("foo > 1", "unknown name 'foo'"),
        ("input.tags.all(t, t == other)", "unknown name 'other'"),
        ("frobnicate(input) == 1", "unknown function 'frobnicate'"),
    ],
)
def test_bad_expressions_are_problems_at_load(expression: str, problem: str) -> None:
    with pytest.raises(ExpressionError, match=problem.replace("(", r"\(")):
        compile_condition(expression, "s")


GATE = """
name: cel-gate
input: declarative_handlers.RefundIn
steps:
  - step: mark
    run: declarative_handlers.mark
  - commit: refund
    run: declarative_handlers.refund
    when: "double(input.amount) > 0.0 && data.approved == true && results.mark.ok"
  - step: after
    run: declarative_handlers.pick
    when: "{after}"
"""


@pytest.fixture
def engine(make_engine: Callable[..., FluxEngine]) -> FluxEngine:
    return make_engine(MemoryStorage())


@pytest.mark.parametrize(
    ("given", "refund"),
    [
        ({"amount": "10.00"}, StepStatus.COMPLETED),
        ({"amount": "10.00", "approve": False}, StepStatus.SKIPPED),
        ({"amount": "0"}, StepStatus.SKIPPED),
    ],
)
def test_when_runs_or_skips_a_step(
    tmp_path: Path, engine: FluxEngine, given: dict[str, Any], refund: StepStatus
) -> None:
    wf = load_workflow(write(tmp_path, GATE.format(after="true")))
    result = engine.execute(wf, given)
    assert result.status == RunStatus.COMPLETED, result.error
    assert [s.status for s in result.steps] == [StepStatus.COMPLETED, refund, StepStatus.COMPLETED]


def test_a_when_that_fails_fails_its_step_naming_step_and_expression(
    tmp_path: Path, engine: FluxEngine
) -> None:
    wf = load_workflow(write(tmp_path, GATE.format(after="data.missing == 1")))
    result = engine.execute(wf, {"amount": "1.00"})
    assert result.status == RunStatus.FAILED
    after = result.steps[2]
    assert after.status == StepStatus.FAILED and after.attempts == 0
    assert result.error is not None
    assert (
        "ConditionError: when of step 'after' (data.missing == 1): no key 'missing' "
        "(test for it with has(...))"
    ) in result.error


def test_the_feature_file_runs_until_its_approval_asks(engine: FluxEngine) -> None:
    result = engine.execute(load_workflow(FEATURES), {"amount": "5.00"})
    assert result.status == RunStatus.SUSPENDED, result.error
    status = {s.name: s.status for s in result.steps}
    assert status["manager"] == StepStatus.COMPLETED  # its policy says "auto"
    assert status["finance"] == StepStatus.SUSPENDED
    assert result.results["refund"] == {"refunded": "5.00"}


# -- FLUX_WORKFLOWS takes files ----------------------------------------------------------------
def test_sources_load_files_and_import_modules(tmp_path: Path) -> None:
    path = write(tmp_path, "name: from-file\nsteps: [{step: a, run: declarative_handlers.pick}]")
    assert import_workflow_sources([str(path), "declarative_handlers"]) == [
        str(path),
        "declarative_handlers",
    ]
    registered = builder.registered_workflows()["from-file"]
    import_workflow_sources([str(path)])  # once per process, as a module import
    assert builder.registered_workflows()["from-file"] is registered


@pytest.mark.parametrize(
    ("name", "is_file"),
    [("a/b.yaml", True), ("B.YML", True), ("x.json", True), ("myapp.flows", False)],
)
def test_a_file_is_told_by_its_suffix(name: str, is_file: bool) -> None:
    assert is_workflow_file(name) is is_file


def test_a_bad_file_in_the_sources_raises_its_problems(tmp_path: Path) -> None:
    shutil.copy(FIVE, tmp_path / "five.yaml")
    with pytest.raises(WorkflowFileError, match="has 5 problems"):
        import_workflow_sources([str(tmp_path / "five.yaml")])


# -- without the extra -------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["celpy", "ruamel.yaml", "jsonschema"])
def test_missing_packages_name_the_extra(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtra) as caught:
        load_workflow(FEATURES)
    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith("pip install 'fluxcelery[yaml]'")
    package = {"celpy": "cel-python"}.get(module, module)
    assert package in message


def test_a_worker_app_registers_the_tasks_of_a_workflow_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: on-workers\nsteps: [{step: a, run: declarative_handlers.pick}]")
    app = build_app(Settings(workflows=(str(path),)))
    assert import_workflow_modules(app) == [str(path)]
    assert any(name.startswith("flux.on-workers.") for name in app.tasks)


def test_importing_fluxcelery_loads_none_of_the_extra() -> None:
    """The core install has no ruamel.yaml, jsonschema or cel-python: importing fluxcelery
    (and reading the schema) must not need them; loading a file says what to install."""
    blocked = ("ruamel", "jsonschema", "celpy", "lark", "re2", "pendulum")
    code = textwrap.dedent(
        f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None
        import fluxcelery
        from fluxcelery.declarative import json_schema
        assert json_schema()["title"] == "fluxcelery workflow"
        try:
            fluxcelery.load_workflow("any.yaml")
        except fluxcelery.MissingExtra as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "YAML/JSON workflows need ruamel.yaml, jsonschema, cel-python, not installed: "
        "pip install 'fluxcelery[yaml]'\n"
    )
