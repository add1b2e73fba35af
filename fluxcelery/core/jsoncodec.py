"""JSON on the wire and in the store: clear errors for bad values, a size limit, redaction."""

from __future__ import annotations

import json
import json.encoder
import math
import re
import sys
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from .errors import PayloadTooLarge, SerializationError

DEFAULT_MAX_BYTES = 1024 * 1024
#: Keys whose values are secrets (SPEC section 7), matched case- and separator-insensitively
#: (``api_key``, ``apiKey``, ``API-KEY``). A word of four letters or fewer matches whole words
#: of a key only (``card`` and ``credit_card``, not ``discard``); a longer one anywhere in it
#: (``accesstoken``).
DEFAULT_REDACT = (
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "authorization",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "credential",
    "card",
    "card_number",
    "cvv",
)
MASK = "***"
#: Secret values this long are masked wherever they appear in a text; shorter ones (a PIN)
#: only as a whole token, so that masking "42" cannot garble "1420"; one character is not
#: masked at all.
MIN_SECRET_CHARS = 4
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_INT64 = 1 << 63  # ints beyond are left to the encoder (it refuses the absurdly long ones)


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def compact_encoder(*, allow_nan: bool) -> Callable[[Any], str]:
    """A compact JSON encoder (non-ASCII kept) made once and reused.

    ``json.dumps`` with options builds a new C encoder on every call, which was half the cost
    of encoding a step row or a trace line; the hot path encodes several values per step. No
    circular-reference bookkeeping either: a value that contains itself ends in
    ``RecursionError``, which ``dumps`` reports like a too deeply nested one.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    try:
        if make is None:
            raise TypeError("no C accelerator")
        chunks = make(
            None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, allow_nan
        )
    except TypeError:  # pragma: no cover - a Python without it, or with another signature
        return json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan, check_circular=False
        ).encode

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


_encode = compact_encoder(allow_nan=False)


def _find_bad_value(value: Any, path: str = "") -> str | None:
    """The path of the first value ``json`` cannot encode, for an error a user can act on."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return (
            None if value == value and value not in (float("inf"), float("-inf")) else path or "$"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}[{key!r}] (keys must be strings)"
            bad = _find_bad_value(item, f"{path}.{key}" if path else key)
            if bad:
                return bad
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            bad = _find_bad_value(item, f"{path}[{i}]")
            if bad:
                return bad
        return None
    return f"{path or '$'} ({type(value).__name__})"


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


def dumps(value: Any, *, what: str = "value", max_bytes: int | None = None) -> str:
    """Compact JSON, or ``SerializationError``/``PayloadTooLarge`` naming ``what``."""
    try:
        text = _encode(value)
    except RecursionError:
        raise SerializationError(
            f"{what} is nested too deeply (or contains itself) to store as JSON"
        ) from None
    except (TypeError, ValueError) as exc:
        where = _find_bad_value(value)
        raise SerializationError(
            f"{what} is not JSON-serializable" + (f" at {where}" if where else f": {exc}")
        ) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no database can store it
        raise SerializationError(
            f"{what} contains text that is not valid Unicode ({exc.reason} at {exc.start})"
        ) from None
    if "\\u0000" in text and _has_nul(value):
        raise SerializationError(
            f"{what} contains a NUL character (\\u0000), which PostgreSQL cannot store"
        )
    if max_bytes is not None and len(text) > max_bytes and len(text.encode()) > max_bytes:
        raise PayloadTooLarge(
            f"{what} is {len(text.encode())} bytes, over the limit of {max_bytes} bytes"
        )
    return text


class JsonTextError(ValueError):
    """Untrusted JSON text that cannot be taken, with the reason a person can act on."""


def _no_constant(name: str) -> Any:
    raise JsonTextError(f"{name} is not a JSON number")


def parse_json_text(data: bytes | str) -> Any:
    """Parse JSON text from outside (CLI arguments, AMQP bodies, HTTP bodies) strictly, the
    same way at every door: ``NaN`` and ``Infinity`` are refused (not JSON, and a schema
    such as ``dict[str, Any]`` would store them as null); every failure is a
    ``JsonTextError`` saying what is wrong, never a ``RecursionError`` or a bare
    ``ValueError`` from deep inside the decoder."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except JsonTextError:
        raise
    except RecursionError:
        raise JsonTextError("nested too deeply (more than about 1,000 levels)") from None
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1].hex()
        raise JsonTextError(f"not UTF-8 (byte 0x{bad} at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise JsonTextError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # an integer longer than Python converts (CVE-2020-10735)
        if "digits" in str(exc):
            limit = sys.get_int_max_str_digits()
            raise JsonTextError(f"a number has more than {limit} digits") from None
        raise JsonTextError(str(exc)) from None


def find_non_finite(value: Any, path: str = "") -> str | None:
    """The path of the first NaN or infinite float in a value (dicts, lists, tuples), or
    None. Schemas that convert them to null on the way out are checked with it first."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        kind = item.__class__
        if kind is float or isinstance(item, float):
            if not math.isfinite(item):
                return where or "$"
        elif isinstance(item, dict):
            stack.extend(
                (v, f"{where}.{k}" if where else str(k)) for k, v in reversed(item.items())
            )
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


#: Input and signal payloads nested deeper than this are refused at the door: real documents
#: stay far below it, and the walks that redact, copy and scrub values recurse.
MAX_DEPTH = 100


def check_depth(value: Any, *, what: str = "value", limit: int = MAX_DEPTH) -> None:
    """``SerializationError`` when ``value`` nests dicts and lists deeper than ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            raise SerializationError(f"{what} is nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def canonical_json(value: Any) -> str:
    """One text per JSON value (sorted keys, no spaces): what "the same content" means for
    run ids derived from a body and for idempotency checks."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps_for_jsonb(value: Any, *, what: str = "value") -> str:
    """``dumps`` for a PostgreSQL ``jsonb`` value: floats of 1e16 and more are spelled out.

    jsonb keeps numbers as ``numeric``, which prints ``1e+16`` back as
    ``10000000000000000``: the float came back as an int (and ``1e300`` as ``10**300``, not
    even equal to it). Spelled with a decimal point (``10000000000000000.0``) it stays a
    float. Only a text with ``e+`` in it (such a float, or those two characters in a string)
    is encoded again, by the slower walk below.
    """
    text = dumps(value, what=what)
    return _spell_large_floats(value) if "e+" in text else text


def _spell_large_floats(value: Any) -> str:
    kind = value.__class__
    if kind is dict:
        items = (f"{_encode(k)}:{_spell_large_floats(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if kind is list or kind is tuple:
        return "[" + ",".join(_spell_large_floats(v) for v in value) + "]"
    if kind is float:
        text = float.__repr__(value)
        return f"{Decimal(text):f}.0" if "e+" in text else text
    return _encode(value)


def roundtrip(value: Any, *, what: str = "value", max_bytes: int | None = None) -> Any:
    """What a value looks like after being stored: the same JSON round trip workers do."""
    # The common results of a step (nothing, a flag, a count, no data yet) are already what
    # the round trip would give: skip the encoder for them.
    kind = value.__class__
    if value is None or kind is bool or (kind is int and -_INT64 <= value < _INT64):
        return value
    if kind is dict and not value:
        return {}
    return json.loads(dumps(value, what=what, max_bytes=max_bytes))


def copy_json(value: Any) -> Any:
    """A private copy of a JSON value (dicts and lists copied, scalars shared: they are
    immutable). Several times faster than ``copy.deepcopy``, which the hot path used."""
    kind = value.__class__
    if kind is dict:
        return {k: copy_json(v) for k, v in value.items()}
    if kind is list:
        return [copy_json(v) for v in value]
    return value


_KNOWN_KEYS = 4096


def _normal(key: str) -> str:
    """A key in lower case without separators: ``API-Key`` and ``api_key`` are ``apikey``."""
    return "".join(ch for ch in key.lower() if ch.isalnum())


def _word_runs(key: str) -> set[str]:
    """Every run of consecutive words of ``key`` (camelCase and separators split words),
    joined: ``creditCardNo`` gives credit, card, no, creditcard, cardno, creditcardno."""
    words = [w.lower() for w in _WORDS.findall(key)]
    return {"".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


class Redactor:
    """Masks values whose key names a secret (``DEFAULT_REDACT``'s rule)."""

    def __init__(self, keys: Iterable[str] = DEFAULT_REDACT) -> None:
        self.keys = tuple(k.lower() for k in keys)
        normal = {_normal(k) for k in self.keys} - {""}
        self._anywhere = tuple(k for k in normal if len(k) > 4)
        self._whole = frozenset(k for k in normal if len(k) <= 4)
        # A run's JSON repeats the same few keys (600 items, 3 keys each): each is looked
        # at once. Bounded, so that data with ever new keys cannot grow it without end.
        self._known: dict[str, bool] = {}

    def is_secret(self, key: str) -> bool:
        known = self._known.get(key)
        if known is None:
            normal = _normal(key)
            known = any(k in normal for k in self._anywhere) or bool(
                self._whole and self._whole & _word_runs(key)
            )
            if len(self._known) < _KNOWN_KEYS:
                self._known[key] = known
        return known

    def secret_texts(self, *values: Any) -> list[str]:
        """The text of every scalar under a secret-looking key in ``values``, longest first
        (so that a secret containing another is masked whole)."""
        found: set[str] = set()

        def walk(value: Any, secret: bool) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    walk(item, secret or (isinstance(key, str) and self.is_secret(key)))
            elif isinstance(value, (list, tuple)):
                for item in value:
                    walk(item, secret)
            elif secret and isinstance(value, (str, int, float)) and not isinstance(value, bool):
                text = str(value)
                if len(text) >= 2:
                    found.add(text)

        if self.keys:
            for value in values:
                walk(value, False)
        return sorted(found, key=lambda text: (-len(text), text))

    def scrub(self, text: str, *values: Any) -> str:
        """``text`` (a log line, an error message) with the secrets found in ``values``
        masked: the key-based redaction cannot see a token that a handler put in a
        message."""
        for secret in self.secret_texts(*values):
            if secret not in text:
                continue
            if len(secret) >= MIN_SECRET_CHARS:
                text = text.replace(secret, MASK)
            else:  # a short secret: as a whole token only
                token = rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])"
                text = re.sub(token, MASK, text)
        return text

    def __call__(self, value: Any) -> Any:
        if not self.keys:
            return value
        if isinstance(value, dict):
            return {
                k: (
                    MASK
                    if isinstance(k, str) and self.is_secret(k)
                    else (self(v) if isinstance(v, (dict, list)) else v)
                )
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self(v) if isinstance(v, (dict, list)) else v for v in value]
        return value
