"""The flat-detail fast path of ``sanitize`` gives what the JSON round trip gives.

The oracle is the round trip itself (redact, ``json.dumps``, UTF-8 with replacement,
``json.loads`` with NaN and Infinity as null, the size cap), written out here as ``sanitize``
did it for every detail."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lockgate._log import redact
from lockgate.audit.record import MAX_DETAIL_BYTES, AuditRecord, canonical_json, sanitize

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def round_trip(detail: dict[Any, Any]) -> dict[str, Any]:
    text = json.dumps(redact(dict(detail)), default=str, ensure_ascii=False)
    out = json.loads(text.encode("utf-8", "replace"), parse_constant=lambda _name: None)
    return {"truncated": True} if len(canonical_json(out)) > MAX_DETAIL_BYTES else out


text = st.one_of(
    st.text(max_size=40),
    st.sampled_from([JWT, f"Bearer {JWT}", "\ud800lone", "x\u00e9\u4e2d", 'a"b\\c\n\x00']),
    st.text(min_size=700, max_size=900),  # long values: the size cap's side
)
keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["ref", "token", "api_key", "client_id", "password", "key_name", "\udc80"]),
)
flat_values = st.one_of(text, st.integers(), st.booleans(), st.none())
other_values = st.one_of(st.floats(), st.lists(st.integers(), max_size=3), st.tuples(text))


@given(st.dictionaries(keys, flat_values, max_size=8))
def test_flat_details_match_the_round_trip(detail: dict[str, Any]) -> None:
    rec = sanitize(AuditRecord(event="allowed", detail=dict(detail)), 1.0)
    assert rec.detail == round_trip(detail)
    assert canonical_json(rec.detail) == canonical_json(round_trip(detail))


@given(st.dictionaries(keys, st.one_of(flat_values, other_values), min_size=1, max_size=6))
def test_any_detail_matches_the_round_trip(detail: dict[str, Any]) -> None:
    rec = sanitize(AuditRecord(event="allowed", detail=dict(detail)), 1.0)
    assert canonical_json(rec.detail) == canonical_json(round_trip(detail))


def test_secrets_never_pass_the_fast_path() -> None:
    rec = sanitize(
        AuditRecord(event="allowed", detail={"ref": JWT, "api_key": "k", "token": 7}), 1.0
    )
    assert rec.detail == {"ref": "[redacted]", "api_key": "[redacted]", "token": "[redacted]"}


WHO = {
    "deployment": "prod", "dag_id": "etl_daily", "task_id": "load", "principal": "p",
    "resource": "dbx", "action": "read", "object": "run:1", "decision": "allow", "jti": "a" * 32,
}  # fmt: skip


def test_a_detail_that_cannot_be_stored_never_hides_who_did_what() -> None:
    # A value no JSON encoder takes (an integer past Python's 4,300-digit limit, a tuple
    # key) costs the record its detail, not its deployment, DAG, object and decision.
    for bad in ({"x": 10**5000}, {"a": {"b": 10**5000}}, {"a": {(1, 2): 1}}):
        rec = sanitize(AuditRecord(event="admitted", **WHO, detail=bad), 1.0)
        assert {k: getattr(rec, k) for k in WHO} == WHO, bad
        assert rec.detail["detail_dropped"] is True
        assert rec.detail["error"] in ("ValueError", "TypeError")
        json.loads(canonical_json(rec.to_dict()))


def test_non_finite_numbers_in_a_detail_are_stored_as_null() -> None:
    # NaN and Infinity are not JSON: a record holding them breaks strict readers of the trail.
    detail = {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": float("-inf")}}
    rec = sanitize(AuditRecord(event="allowed", detail=detail), 1.0)
    assert rec.detail == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    json.loads(canonical_json(rec.detail), parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} in a stored detail")
