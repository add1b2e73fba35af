"""Hostile input: arbitrary JSON-ish values as workflow input, signal payloads, CLI JSON and
AMQP message bodies. Each is either accepted and round-tripped exactly (as JSON would), or
refused with a ``FluxError`` (CLI: exit 1/2 with one ``error:`` line) and nothing stored —
never an unhandled exception, never a stored run that cannot be loaded again.

Cases that test_bad_input.py and test_ingress.py pin one by one (NaN, NUL, oversize input and
ctx.data, pickle and malformed AMQP bodies) are here as properties over generated values."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_workflows import approval
from click.testing import CliRunner
from helpers import no_sleep
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxcelery import FluxEngine, FluxError, MemoryStorage, RunStatus, SqlStorage, workflow
from fluxcelery.cli import cli
from fluxcelery.ingress import Accepted, Rejected, check_message

ECHO = workflow("hostile-echo", version="1").step("echo", lambda ctx: ctx.input)
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies -------------------------------------------------------------------------------
#: Text with NUL characters and every plane; lone surrogates separately (see below).
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20) | st.sampled_from(
    ["\x00", "a\x00b", "'; DROP TABLE flux_runs; --", "<script>alert(1)</script>", "\u202e"]
)
#: Huge ints as exponents: hypothesis cannot repr an int over 4300 digits in its strategy.
INTS = st.integers() | st.sampled_from([63, 64, 300, 5000]).map(lambda e: 10**e)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
KEYS = TEXT | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(KEYS, inner, max_size=4)
    ),
    max_leaves=12,
)


def json_model(value: Any) -> tuple[bool, Any]:
    """(encodable, normalized) for a value under strict JSON rules (no NaN, no NUL)."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return False, None
    if "\\u0000" in text:
        return False, None
    return True, json.loads(text)


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "sqlite"])
def hostile_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FluxEngine]:
    storage: Any = (
        MemoryStorage() if request.param == "memory" else SqlStorage(f"sqlite:///{tmp_path}/h.db")
    )
    engine = FluxEngine(storage=storage, max_payload_bytes=64 * 1024)
    yield engine
    engine.close()


def _count(engine: FluxEngine) -> int:
    return len(engine.list(limit=None))


def _one_line(exc: BaseException) -> None:
    assert str(exc) and "\n" not in str(exc), repr(exc)


# -- workflow input ---------------------------------------------------------------------------
@SETTINGS
@given(value=VALUES)
def test_workflow_input_round_trips_or_is_refused(hostile_engine: FluxEngine, value: Any) -> None:
    engine = hostile_engine
    before = _count(engine)
    value = {"v": value}  # a top-level None means "no input" ({}), by design
    ok, normalized = json_model(value)
    try:
        result = engine.execute(ECHO, value)
    except FluxError as exc:
        _one_line(exc)
        assert not ok or len(json.dumps(normalized)) > engine.max_payload_bytes  # type: ignore[operator]
        assert _count(engine) == before  # nothing stored
        return
    assert ok, f"accepted a value JSON cannot hold: {value!r}"
    assert result.status == RunStatus.COMPLETED, result.error
    assert result.input == normalized
    assert result.results["echo"] == normalized
    loaded = engine.get(result.id)  # the stored run loads again, identical
    assert loaded is not None and loaded.input == normalized
    assert engine.traces(run_id=result.id)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf, {"x": [float("nan")]}])
def test_non_finite_floats_are_refused(hostile_engine: FluxEngine, value: Any) -> None:
    with pytest.raises(FluxError, match="not JSON-serializable"):
        hostile_engine.execute(ECHO, value)
    assert _count(hostile_engine) == 0


def test_oversize_input_refused_and_nothing_stored(hostile_engine: FluxEngine) -> None:
    with pytest.raises(FluxError, match="over the limit of 65536 bytes"):
        hostile_engine.execute(ECHO, {"blob": "x" * 70_000})
    assert _count(hostile_engine) == 0


def _deep(n: int) -> Any:
    value: Any = []
    for _ in range(n):
        value = [value]
    return value


def test_deeply_nested_input_is_refused_with_a_flux_error(hostile_engine: FluxEngine) -> None:
    with pytest.raises(FluxError):
        hostile_engine.execute(ECHO, _deep(5000))
    assert _count(hostile_engine) == 0


def test_input_that_contains_itself_is_refused_with_a_flux_error(
    hostile_engine: FluxEngine,
) -> None:
    loop: dict[str, Any] = {"a": 1}
    loop["self"] = loop
    with pytest.raises(FluxError, match="contains itself"):
        hostile_engine.execute(ECHO, loop)
    assert _count(hostile_engine) == 0


def test_lone_surrogate_is_refused_on_every_backend_alike() -> None:
    """Memory storage could keep it, but no database can: refuse it everywhere."""
    engine = FluxEngine(storage=MemoryStorage())
    with pytest.raises(FluxError, match="not valid Unicode"):
        engine.execute(ECHO, {"s": "\ud800"})
    assert _count(engine) == 0


def test_lone_surrogate_on_sql_is_refused_with_a_flux_error(tmp_path: Path) -> None:
    engine = FluxEngine(storage=SqlStorage(f"sqlite:///{tmp_path}/s.db"))
    with pytest.raises(FluxError):
        engine.execute(ECHO, {"s": "\ud800"})
    assert _count(engine) == 0


# -- signal payloads --------------------------------------------------------------------------
@pytest.fixture
def memory_engine() -> Iterator[FluxEngine]:
    engine = FluxEngine(
        storage=MemoryStorage(), max_payload_bytes=64 * 1024, default_retries=0, sleep=no_sleep
    )
    yield engine
    engine.close()


@SETTINGS
@given(payload=VALUES)
def test_signal_payload_round_trips_or_leaves_the_run_waiting(
    memory_engine: FluxEngine, payload: Any
) -> None:
    engine = memory_engine
    run = engine.execute(approval, {"n": 1})
    assert run.status == RunStatus.SUSPENDED
    ok, normalized = json_model(payload)
    try:
        engine.signal(run.id, "approval", payload)
    except FluxError as exc:
        _one_line(exc)
        assert not ok
        state = engine.get(run.id)
        assert state is not None and state.status == RunStatus.SUSPENDED
        return
    assert ok, f"accepted a payload JSON cannot hold: {payload!r}"
    state = engine.get(run.id)
    assert state is not None
    assert state.steps[1].output == normalized  # the payload is the waiting step's output
    assert state.status in (RunStatus.COMPLETED, RunStatus.FAILED)  # "after" reads .get()


def test_oversize_signal_payload_is_refused(memory_engine: FluxEngine) -> None:
    run = memory_engine.execute(approval, {"n": 1})
    with pytest.raises(FluxError, match="over the limit"):
        memory_engine.signal(run.id, "approval", {"blob": "x" * 70_000})
    state = memory_engine.get(run.id)
    assert state is not None and state.status == RunStatus.SUSPENDED


# -- CLI JSON ---------------------------------------------------------------------------------
CLI_ENV: dict[str, str | None] = {
    "FLUX_BROKER_URL": "memory://",
    "FLUX_WORKFLOWS": None,
    "FLUX_TRACE_FILE": None,
    "COLUMNS": "200",
}


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


#: CLI JSON: garbage text, or an object holding any value (a non-object input would make the
#: demo workflow's steps fail and retry with real backoff, which is not what is tested here).
def _cli_text(value: Any) -> str:
    try:
        return json.dumps({"n": 1, "x": value}, allow_nan=True, ensure_ascii=False)
    except ValueError:  # an int over 4300 digits
        return '{"n": 1, "x": ' + "9" * 5000 + "}"


CLI_JSON = st.text(max_size=40).filter(_not_json) | VALUES.map(_cli_text)


def _cli(db: str, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--workflows", "cli_workflows", "--db", db, *args], env=CLI_ENV)


def _assert_cli_contract(result: Any) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert result.exit_code in (1, 2), (result.exit_code, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


@pytest.fixture(scope="module")
def cli_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('hostile')}/cli.db"


@settings(max_examples=40, deadline=None)
@given(text=CLI_JSON)
def test_cli_run_input_never_crashes(cli_db: str, text: str) -> None:
    result = _cli(cli_db, "run", "cli-order", "--input", text, "--local", "--json")
    _assert_cli_contract(result)
    if result.exit_code == 0 or (result.exit_code == 1 and result.stdout.strip()):
        doc = json.loads(result.stdout)
        if "id" in doc:  # a run was stored: it loads again
            shown = _cli(cli_db, "show", doc["id"], "--json")
            assert shown.exit_code == 0, shown.output


@settings(max_examples=20, deadline=None)
@given(text=CLI_JSON)
def test_cli_signal_payload_never_crashes(cli_db: str, text: str) -> None:
    started = _cli(cli_db, "run", "cli-approval", "--input", '{"n": 1}', "--local", "--json")
    assert started.exit_code == 0, started.output
    run_id = json.loads(started.stdout)["id"]
    result = _cli(cli_db, "signal", run_id, "approval", "--payload", text, "--json")
    _assert_cli_contract(result)
    shown = _cli(cli_db, "show", run_id, "--json")
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.stdout)["status"]
    assert status == ("suspended" if result.exit_code else "completed")


def test_cli_oversize_input_is_a_usage_error(cli_db: str, tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"n": 1, "blob": "x" * (1024 * 1024 + 10)}))
    before = _cli(cli_db, "runs", "--json")
    result = _cli(cli_db, "run", "cli-order", "--input", f"@{path}", "--local", "--json")
    _assert_cli_contract(result)
    assert result.exit_code in (1, 2)
    assert "limit" in result.stderr
    assert _cli(cli_db, "runs", "--json").stdout == before.stdout  # nothing stored


# -- AMQP message bodies ----------------------------------------------------------------------
INGRESS_WF = workflow("hostile-ingress").step("noop", lambda ctx: None)
CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "text/plain", "application/x-python-serialize", "", "json"]
)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=200) | VALUES.map(lambda v: _cli_text(v).encode()),
    content_type=CONTENT_TYPES,
    message_id=st.none() | st.text(max_size=80),
    headers=st.dictionaries(st.text(max_size=10), SCALARS, max_size=3),
)
def test_any_amqp_message_is_accepted_or_dead_lettered(
    body: bytes, content_type: str | None, message_id: str | None, headers: dict[str, Any]
) -> None:
    decision = check_message(
        body,
        content_type,
        workflow=INGRESS_WF.name,
        workflows={INGRESS_WF.name: INGRESS_WF},
        message_id=message_id,
        headers=headers,
    )
    assert isinstance(decision, (Accepted, Rejected))
    if isinstance(decision, Rejected):
        assert decision.code and decision.reason and "\n" not in decision.code
    else:
        assert content_type != "application/x-python-serialize"  # pickle is never read
        assert isinstance(decision.body, dict)
        assert decision.run_id


# -- no SQL from user text ----------------------------------------------------------------
#: The only SQL text built with an f-string or ``format``: a module constant (migrate.py).
ALLOWED_DYNAMIC_SQL = {
    ("storage/migrate.py", 'sa.text(f"SELECT version_num FROM {VERSION_TABLE}")')
}


def test_no_sql_is_built_from_user_text() -> None:
    """Every statement is SQLAlchemy Core with bound parameters; dynamic SQL text is only
    ever schema-constant. A new f-string/format in a ``text()``/``execute()`` fails here."""
    import re

    import fluxcelery

    pkg = Path(fluxcelery.__file__).parent
    pattern = re.compile(
        r"""(?:text|execute|exec_driver_sql)\(\s*(?:f["']|["'][^"']*["']\s*\.format\(|["'][^"']*["']\s*%)"""
    )
    found = set()
    for path in pkg.rglob("*.py"):
        for line in path.read_text().splitlines():
            if pattern.search(line):
                found.add((path.relative_to(pkg).as_posix(), line.strip().split("return ")[-1]))
    found = {(p, line[line.index("sa.text") :] if "sa.text" in line else line) for p, line in found}
    extra = {
        f for f in found if not any(f[0] == a[0] and a[1] in f[1] for a in ALLOWED_DYNAMIC_SQL)
    }
    assert not extra, f"SQL text built from strings: {sorted(extra)}"
