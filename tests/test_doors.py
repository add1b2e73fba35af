"""Every door takes input by the same rules (issue #16, defect 9): the AMQP consumer's
``check_message``, the HTTP producer (which answers 202 only for what the consumer will
start, and publishes the bytes it checked), the engine, and the CLI. NaN, NUL, nesting,
5,000-digit numbers, text that is not UTF-8 and input that grows past the limit once stored
are refused with a reason naming the problem, never as ``internal_error``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_workflows import order as cli_order
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from test_ingress import GOOD, JSON, WF, FakePublisher, call

from fluxcelery import FluxEngine, InvalidInput, MemoryStorage, workflow
from fluxcelery.contrib.http_producer import ProducerApp
from fluxcelery.ingress import Accepted, Rejected, check_message, derive_run_id

ROOT = Path(__file__).resolve().parent.parent


class Loose(BaseModel):
    """A schema that lets anything through in ``meta``: pydantic's JSON dump would turn a
    NaN there into null."""

    meta: dict[str, Any] = {}
    values: list[float] = []


LOOSE = workflow("doors-loose").input(Loose).step("noop", lambda ctx: None)
WORKFLOWS = {LOOSE.name: LOOSE}


def _nest(levels: int) -> bytes:
    return b'{"meta": {"x": ' + b"[" * levels + b"]" * levels + b"}}"


#: (body, the code every door gives). ``None``: accepted.
CASES = [
    (b'{"meta": {"x": 1.5}}', None),
    (b'{"meta": {"x": NaN}}', "invalid_json"),
    (b'{"meta": {"x": [Infinity]}}', "invalid_json"),
    (b'{"meta": {"x": -Infinity}}', "invalid_json"),
    (b'{"meta": {"x": "a\\u0000b"}}', "invalid_input"),
    (_nest(150), "invalid_input"),
    (_nest(900), "invalid_input"),
    (_nest(5000), "invalid_json"),
    (b'{"meta": {"n": ' + b"7" * 5000 + b"}}", "invalid_json"),
    (b'{"meta": {"s": "caf\xe9"}}', "invalid_json"),  # Latin-1, not UTF-8
    # 600 KB of JSON that the schema stores as 1.2 MB of floats ("0" -> "0.0"): over the
    # engine's limit once stored, so the consumer would refuse it.
    (b'{"values": [' + b",".join([b"0"] * 300_000) + b"]}", "invalid_input"),
]
REASONS = {
    _nest(150): "nested deeper than 100 levels",
    b'{"meta": {"x": NaN}}': "NaN is not a JSON number",
    b'{"meta": {"n": ' + b"7" * 5000 + b"}}": "more than 4300 digits",
    b'{"meta": {"s": "caf\xe9"}}': "not UTF-8 (byte 0xe9",
    b'{"meta": {"x": "a\\u0000b"}}': "NUL",
}


def _decide(body: bytes) -> Accepted | Rejected:
    return check_message(
        body, JSON, message_id="m-1", headers={}, workflow=LOOSE.name, workflows=WORKFLOWS
    )


@pytest.mark.parametrize(("body", "code"), CASES, ids=lambda v: str(v)[:30])
def test_the_consumer_decides_with_a_reason(body: bytes, code: str | None) -> None:
    decision = _decide(body)
    if code is None:
        assert isinstance(decision, Accepted)
        return
    assert isinstance(decision, Rejected) and decision.code == code, decision
    if body in REASONS:
        assert REASONS[body] in decision.reason, decision.reason


@pytest.mark.parametrize(("body", "code"), CASES, ids=lambda v: str(v)[:30])
def test_the_producer_answers_as_the_consumer_will_decide(body: bytes, code: str | None) -> None:
    publisher = FakePublisher()
    app = ProducerApp(workflow=LOOSE.name, publisher=publisher, storage=MemoryStorage())
    status, answer = call(app, "POST", "/orders", body, content_type=JSON, idempotency_key="k")
    if code is None:
        assert status == 202 and publisher.raw == [body]  # the bytes it checked, as they were
    else:
        assert (status, answer["error"]) == (400, code) and publisher.raw == []


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=80)
    | st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=8,
    ).map(lambda v: json.dumps({"meta": {"v": v}}).encode())
)
def test_the_producer_and_the_consumer_never_disagree(body: bytes) -> None:
    app = ProducerApp(workflow=LOOSE.name, publisher=FakePublisher(), storage=MemoryStorage())
    status, _ = call(app, "POST", "/orders", body, content_type=JSON, idempotency_key="k")
    assert (status == 202) == isinstance(_decide(body), Accepted)


def test_a_non_ascii_idempotency_key_is_kept_as_sent() -> None:
    """Header values are UTF-8: ``clé-✓`` was garbled through Latin-1 into ``clÃ©-â\x9c\x93``."""
    publisher = FakePublisher()
    app = ProducerApp(workflow=WF.name, publisher=publisher, storage=MemoryStorage())
    status, answer = call(
        app, "POST", "/orders", json.dumps(GOOD).encode(), content_type=JSON,
        idempotency_key="clé-✓",
    )  # fmt: skip
    assert status == 202 and answer["message_id"] == "clé-✓"
    assert answer["run_id"] == derive_run_id("clé-✓", GOOD)
    assert publisher.sent[0][1] == "clé-✓"


def _raw_call(app: ProducerApp, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
    import asyncio

    scope = {"type": "http", "method": "POST", "path": "/orders", "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": json.dumps(GOOD).encode()}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.mark.parametrize(
    "key",
    [b"\xff\xfe", b"k" * 256, "é".encode() * 128, b"   "],
    ids=["latin1", "256", "é", "blank"],
)
def test_an_unusable_idempotency_key_is_a_400_naming_the_header(key: bytes) -> None:
    publisher = FakePublisher()
    app = ProducerApp(workflow=WF.name, publisher=publisher, storage=MemoryStorage())
    status, answer = _raw_call(app, [(b"content-type", JSON.encode()), (b"idempotency-key", key)])
    assert (status, answer["error"]) == (400, "invalid_header"), answer
    assert "dempotency" in answer["message"] and publisher.sent == []


def test_a_long_order_id_still_gives_a_usable_message_id() -> None:
    publisher = FakePublisher()
    app = ProducerApp(workflow=WF.name, publisher=publisher, storage=MemoryStorage())
    order = {**GOOD, "order_id": "o" * 300}
    status, answer = call(app, "POST", "/orders", json.dumps(order).encode(), content_type=JSON)
    assert status == 202 and len(answer["message_id"].encode()) <= 255
    again = call(app, "POST", "/orders", json.dumps(order).encode(), content_type=JSON)[1]
    assert again["message_id"] == answer["message_id"] and again["duplicate"] is True


# -- the engine -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        {"meta": {"x": float("nan")}},
        {"meta": {"x": [float("inf")]}},
        {"values": [1.0, float("-inf")]},
        Loose(meta={"x": float("nan")}),
    ],
    ids=["dict", "list", "float-field", "model"],
)
def test_nan_in_a_loose_schema_is_refused_not_stored_as_null(value: Any) -> None:
    engine = FluxEngine(storage=MemoryStorage())
    with pytest.raises(InvalidInput, match="NaN and infinity") as info:
        engine.execute(LOOSE, value)
    assert info.value.field and engine.list(limit=None) == []


def test_a_deep_signal_payload_is_refused() -> None:
    from cli_workflows import approval

    engine = FluxEngine(storage=MemoryStorage())
    run = engine.execute(approval, {})
    payload: Any = {}
    for _ in range(150):
        payload = {"x": payload}
    with pytest.raises(Exception, match="nested deeper than 100 levels"):
        engine.signal(run.id, "approval", payload)
    assert engine.get(run.id).status.value == "suspended"  # type: ignore[union-attr]


# -- the CLI (real argv bytes, as a shell passes them) ----------------------------------------
def _cli(tmp_path: Path, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "FLUX_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
        "FLUX_WORKFLOWS": "cli_workflows",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
    }
    cmd: list[str | bytes] = [sys.executable, "-m", "fluxcelery", *args]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=60)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: b"--input=@" + _file(p, b'{"n": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
         b"nested too deeply"),
        (lambda p: b"--input=@" + _file(p, b'{"n": ' + b"[" * 900 + b"]" * 900 + b"}"),
         b"nested deeper than 100 levels"),
        (lambda p: b'--input={"n": ' + b"9" * 5000 + b"}", b"more than 4300 digits"),
        (lambda p: b'--input={"n": "\xff"}', b"not valid UTF-8 (byte 0xff"),
        (lambda p: b"--input=@" + _file(p, b'{"n": "\xff"}'), b"not UTF-8 (byte 0xff"),
        (lambda p: b'--input={"n": NaN}', b"NaN is not a JSON number"),
    ],
    ids=["nest-5000", "nest-900", "digits-5000", "argv-not-utf8", "file-not-utf8", "nan"],
)  # fmt: skip
def test_cli_input_errors_are_usage_errors_that_say_why(
    tmp_path: Path, make: Any, message: bytes
) -> None:
    result = _cli(tmp_path, "--json", "run", cli_order.name, make(tmp_path), "--local")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(b"error: ") and message in lines[0]
    assert json.loads(result.stdout)["error"]["code"] != "internal_error"
    assert b"Traceback" not in result.stderr


def _file(tmp_path: Path, data: bytes) -> bytes:
    path = tmp_path / "input.json"
    path.write_bytes(data)
    return str(path).encode()


def test_cli_arguments_that_are_not_utf8_are_named(tmp_path: Path) -> None:
    result = _cli(tmp_path, "show", b"run-\xff\xfe")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        b"error: argument 2 (run-\\xff\\xfe) is not valid UTF-8 (byte 0xff at character 4)"
    )
