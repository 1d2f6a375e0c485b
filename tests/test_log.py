"""Structured logs: one JSON object per line, with JWTs and secret-ish fields redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from lockgate import _log

JWT = (
    "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0"
    ".eyJzdWIiOiJhaXJmbG93OnByb2QvZi90IiwiZXhwIjoxfQ"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMTIzNDU2Nzg5MA"
)
SECRET = "s3cr3t-value-never-logged"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger("lockgate")
    saved = (list(root.handlers), root.level, root.propagate)
    buf = io.StringIO()
    _log.setup("debug", stream=buf)
    try:
        yield buf
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_one_json_object_per_line(stream: io.StringIO) -> None:
    log = _log.get("test")
    log.info("first", extra={"fields": {"dag_id": "finance_daily", "try_number": 2}})
    log.warning("second\nwith a newline")
    entries = lines(stream)
    assert len(entries) == 2  # a newline in a message stays inside its JSON string
    first = entries[0]
    assert first["msg"] == "first" and first["level"] == "info"
    assert first["logger"] == "lockgate.test"
    assert first["dag_id"] == "finance_daily" and first["try_number"] == 2
    ts = str(first["ts"])
    assert ts.endswith("Z") and "T" in ts and len(ts) == len("2026-01-01T00:00:00.000Z")
    assert entries[1]["level"] == "warning" and entries[1]["msg"] == "second\nwith a newline"


def test_level_filter(stream: io.StringIO) -> None:
    _log.setup("warning", stream=stream)
    log = _log.get("test")
    log.info("quiet")
    log.error("loud")
    assert [e["msg"] for e in lines(stream)] == ["loud"]


def test_jwt_in_message_and_fields_is_redacted(stream: io.StringIO) -> None:
    log = _log.get("test")
    log.info("got Bearer %s from task", JWT, extra={"fields": {"note": f"header was {JWT}"}})
    out = stream.getvalue()
    assert JWT not in out and JWT.split(".")[2] not in out
    entry = lines(stream)[0]
    assert entry["msg"] == "got Bearer [redacted] from task"
    assert entry["note"] == "header was [redacted]"


@pytest.mark.parametrize(
    "key",
    [
        "secret",
        "client_secret",
        "password",
        "access_token",
        "Authorization",
        "api_key",
        "credential",
    ],
)
def test_secret_ish_keys_are_redacted(stream: io.StringIO, key: str) -> None:
    _log.get("test").info("x", extra={"fields": {key: SECRET}})
    assert SECRET not in stream.getvalue()
    assert lines(stream)[0][key] == _log.REDACTED


def test_identifiers_are_kept(stream: io.StringIO) -> None:
    fields = {"client_id": "prod", "key_id": "k1", "credential_name": "orders-api-key"}
    _log.get("test").info("x", extra={"fields": fields})
    entry = lines(stream)[0]
    for k, v in fields.items():
        assert entry[k] == v


def test_nested_values_are_redacted(stream: io.StringIO) -> None:
    fields = {
        "request": {"headers": {"authorization": f"Bearer {JWT}", "accept": "*/*"}},
        "tokens": [JWT, "plain"],
        "items": [{"password": SECRET}, JWT],
    }
    _log.get("test").info("x", extra={"fields": fields})
    out = stream.getvalue()
    assert JWT not in out and SECRET not in out
    entry = lines(stream)[0]
    assert entry["request"] == {"headers": {"authorization": "[redacted]", "accept": "*/*"}}
    assert entry["tokens"] == "[redacted]"  # secret-ish key: the whole value goes
    assert entry["items"] == [{"password": "[redacted]"}, "[redacted]"]


def test_exception_text_is_redacted(stream: io.StringIO) -> None:
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        _log.get("test").exception("failed")
    entry = lines(stream)[0]
    assert "ValueError" in str(entry["exc"]) and JWT not in stream.getvalue()


def test_redact_function_directly() -> None:
    assert _log.redact({"password": 1, "n": 2}) == {"password": "[redacted]", "n": 2}
    assert _log.redact(f"x {JWT} y") == "x [redacted] y"
    assert _log.redact("eyJnot.a.jwt") == "eyJnot.a.jwt"  # too short to be a JWT
    assert _log.redact(("a", JWT)) == ["a", "[redacted]"]
    assert _log.redact(42) == 42


def test_fields_cannot_overwrite_the_core_keys(stream: io.StringIO) -> None:
    _log.get("test").info("real", extra={"fields": {"level": "debug", "msg": "forged"}})
    entry = lines(stream)[0]
    assert entry["msg"] == "real" and entry["level"] == "info"
    assert entry["field_msg"] == "forged" and entry["field_level"] == "debug"
