"""Secrets stay out of texts too: ``ctx.log`` lines and stored error messages mask the values
found under secret-looking keys of a run's input and data (key-based redaction of trace
metas cannot see a token that a handler puts into a message)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from fluxcelery import FluxEngine, JsonFileTraceSink, NonRetryableError, workflow
from fluxcelery.core.jsoncodec import Redactor

INPUT = {"user": "ann", "payment": {"card_number": "4111111111111111"}, "api_token": "tok_live_9"}


def test_secret_texts_are_the_scalars_under_secret_keys() -> None:
    redactor = Redactor()
    found = redactor.secret_texts(
        {"user": "ann", "password": "hunter22", "card": {"number": 4242424242, "cvc": "123"}},
        {"items": [{"api_token": "tok_live_9"}], "token_count": True},
    )
    # Longest first; booleans are not texts worth masking; a short value ("123") is
    # found too, and masked as a whole token only (below).
    assert found == ["4242424242", "tok_live_9", "hunter22", "123"]
    assert Redactor(keys=()).secret_texts({"password": "hunter22"}) == []
    assert (
        redactor.scrub("card 4242424242, pw hunter22", {"password": "hunter22", "card": 4242424242})
        == "card ***, pw ***"
    )


def test_ctx_log_masks_the_runs_secrets(make_engine: Any, caplog: pytest.LogCaptureFixture) -> None:
    def charge(ctx: Any) -> None:
        ctx.data["session_secret"] = "s3ss10n-abc"
        ctx.log.info("charging card %s", ctx.input["payment"]["card_number"])
        ctx.log.warning("using %(tok)s for %(who)s", {"tok": ctx.input["api_token"], "who": "ann"})
        ctx.log.info(f"session {ctx.data['session_secret']}")

    engine = make_engine()
    with caplog.at_level(logging.INFO, logger="fluxcelery.step"):
        assert engine.execute(workflow("log-secrets").step("charge", charge), INPUT).ok
    lines = [r.getMessage() for r in caplog.records if r.name == "fluxcelery.step"]
    assert lines == ["charging card ***", "using *** for ann", "session ***"]
    record = caplog.records[0]
    assert record.run_id and record.step == "charge"  # type: ignore[attr-defined]
    assert record.funcName == "charge"  # the handler is the caller, not the adapter


def test_error_messages_are_stored_and_traced_without_secrets(
    make_engine: Any, tmp_path: Path
) -> None:
    def charge(ctx: Any) -> None:
        card = ctx.input["payment"]["card_number"]
        raise NonRetryableError(f"card {card} declined (key {ctx.input['api_token']})")

    path = tmp_path / "trace.ndjson"
    engine: FluxEngine = make_engine(trace=[JsonFileTraceSink(path)])
    result = engine.execute(workflow("error-secrets").step("charge", charge), INPUT)
    assert not result.ok
    assert result.error == "NonRetryableError: card *** declined (key ***)"
    assert result.step("charge").error == result.error
    text = path.read_text()
    assert "4111111111111111" not in text and "tok_live_9" not in text
    assert "card *** declined" in text


def test_a_redactor_without_keys_leaves_messages_alone(make_engine: Any) -> None:
    def charge(ctx: Any) -> None:
        raise NonRetryableError(f"card {ctx.input['payment']['card_number']} declined")

    engine = make_engine(redact=())
    result = engine.execute(workflow("no-redaction").step("charge", charge), INPUT)
    assert result.error == "NonRetryableError: card 4111111111111111 declined"


def test_ctx_log_exception_masks_the_traceback_too(
    make_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def charge(ctx: Any) -> None:
        token = ctx.input["api_token"]
        try:
            raise ValueError(f"gateway refused {token}")
        except ValueError:
            ctx.log.exception("charge failed for %s", ctx.input["user"])
        try:
            raise KeyError(token)
        except KeyError as exc:
            ctx.log.error("lookup failed", exc_info=exc)
        ctx.log.warning("no traceback here", exc_info=False)

    engine = make_engine()
    with caplog.at_level(logging.INFO, logger="fluxcelery.step"):
        assert engine.execute(workflow("log-tracebacks").step("charge", charge), INPUT).ok
    records = [r for r in caplog.records if r.name == "fluxcelery.step"]
    assert [r.getMessage() for r in records] == [
        "charge failed for ann",
        "lookup failed",
        "no traceback here",
    ]
    formatted = [logging.Formatter().format(r) for r in records]
    assert "ValueError: gateway refused ***" in formatted[0]
    assert "Traceback (most recent call last)" in formatted[0]
    assert "KeyError: '***'" in formatted[1]
    assert "Traceback" not in formatted[2]
    assert all("tok_live_9" not in text for text in [*formatted, caplog.text])
    assert records[0].funcName == "charge" and records[1].funcName == "charge"
    assert records[0].run_id and records[1].step == "charge"  # type: ignore[attr-defined]


def test_redaction_remembers_keys_within_a_bound() -> None:
    """Each key is looked at once (a run's JSON repeats the same few), and data with ever new
    keys cannot grow what is remembered without end."""
    redactor = Redactor()
    rows = [{"sku": f"A{i}", "Api_Token": f"tok-{i}", f"field_{i}": i} for i in range(5000)]
    masked = redactor({"items": rows, "nested": [[{"PASSWORD": "x"}]]})
    assert masked["items"][4999] == {"sku": "A4999", "Api_Token": "***", "field_4999": 4999}
    assert masked["nested"] == [[{"PASSWORD": "***"}]]
    assert rows[0]["Api_Token"] == "tok-0"  # the input itself is left alone
    assert len(redactor._known) <= 4096
    assert redactor.is_secret("my_secret_field") and not redactor.is_secret("field_1")


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("user_password", True),
        ("passwd", True),
        ("pwd", True),
        ("db_pwd", True),
        ("api_key", True),
        ("apiKey", True),
        ("API-KEY", True),
        ("x_api_key", True),
        ("access_key", True),
        ("accessKeyId", True),
        ("private_key", True),
        ("privateKey", True),
        ("credential", True),
        ("credentials", True),
        ("accesstoken", True),
        ("card", True),
        ("credit_card", True),
        ("cardNumber", True),
        ("card_number", True),
        ("cvv", True),
        ("Authorization", True),
        ("discard", False),
        ("discarded_items", False),
        ("keyboard", False),
        ("order_id", False),
        ("cardinal", False),
    ],
)
def test_default_secret_keys_match_case_and_separator_insensitively(key: str, secret: bool) -> None:
    assert Redactor().is_secret(key) is secret


def test_a_short_secret_is_masked_as_a_whole_token_only() -> None:
    redactor = Redactor()
    text = "pin 123 rejected; order 11234 and A123 kept; 123."
    assert redactor.scrub(text, {"pin_pwd": "123"}) == (
        "pin *** rejected; order 11234 and A123 kept; ***."
    )
    assert redactor.scrub("x 7 y", {"pwd": "7"}) == "x 7 y"  # one character: never


def test_a_secret_from_a_signal_payload_is_masked_in_a_later_error(make_engine: Any) -> None:
    from fluxcelery import wait_for, workflow

    def fail_with_token(ctx: Any) -> None:
        token = ctx.results["approve"]["api_key"]
        raise RuntimeError(f"upstream refused key {token}")

    wf = (
        workflow("signal-secret")
        .step("approve", lambda ctx: wait_for("approved"))
        .step("use", fail_with_token, retries=0)
    )
    engine = make_engine()
    waiting = engine.execute(wf, {})
    result = engine.signal(waiting.id, "approved", {"api_key": "ak-9f8e7d6c"}).get(timeout=10)
    assert result.status.value == "failed"
    assert result.error == "RuntimeError: upstream refused key ***"
    step = result.step("use")
    assert step.traceback is not None and "ak-9f8e7d6c" not in step.traceback
    assert all("ak-9f8e7d6c" not in (e.error or "") for e in engine.traces(run_id=result.id))
