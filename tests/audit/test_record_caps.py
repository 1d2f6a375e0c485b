"""A record's text fields stay small whatever a client names (a 1 MB quoted CQL identifier)."""

from __future__ import annotations

from lockgate.audit.record import MAX_FIELD_CHARS, AuditRecord, sanitize


def test_a_megabyte_object_is_cut_with_a_digest_that_tells_values_apart() -> None:
    one = sanitize(AuditRecord("denied", object="ks." + "a" * 1_000_000), 1.0)
    two = sanitize(AuditRecord("denied", object="ks." + "a" * 999_999 + "b"), 1.0)
    assert one.object is not None and two.object is not None
    assert len(one.object) <= MAX_FIELD_CHARS and len(two.object) <= MAX_FIELD_CHARS
    assert one.object.startswith("ks.aaa") and "sha256:" in one.object
    assert one.object != two.object


def test_short_fields_are_kept_as_they_are() -> None:
    rec = sanitize(AuditRecord("allowed", object="ks.orders", reason="x" * MAX_FIELD_CHARS), 1.0)
    assert rec.object == "ks.orders"
    assert rec.reason == "x" * MAX_FIELD_CHARS
