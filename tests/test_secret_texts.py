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
    # Longest first; short values ("123") and booleans are not texts worth masking.
    assert found == ["4242424242", "tok_live_9", "hunter22"]
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
