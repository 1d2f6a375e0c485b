"""The engines' one audit-record builder: the same fields from every protocol."""

from __future__ import annotations

from typing import Any

from lockgate.audit import AuditRecord
from lockgate.gateway.records import RecordBuilder, emit_safely, record

from .fakes import FakeAudit, claims_for

IDENTITY = {
    "deployment": "prod",
    "dag_id": "finance_daily",
    "task_id": "load_orders",
    "run_id": "manual__1",
    "try_number": 1,
    "map_index": -1,
    "principal": "airflow:prod/finance_daily/load_orders",
    "jti": "jti-1",
}


def test_identity_fields_come_from_the_claims() -> None:
    rec = record("denied", claims_for("orders"), "orders", action="read", obj="/x", status=403)
    assert isinstance(rec, AuditRecord)
    got = rec.to_dict()
    assert {k: got[k] for k in IDENTITY} == IDENTITY
    assert (got["resource"], got["action"], got["object"], got["status"]) == (
        "orders",
        "read",
        "/x",
        403,
    )
    assert got["detail"] == {} and got["latency_ms"] is None and got["ts"] == 0.0


def test_without_claims_no_one_is_named() -> None:
    got = record("denied", None, None, reason="bad_signature").to_dict()
    assert all(got[k] is None for k in IDENTITY)
    assert got["reason"] == "bad_signature"


def test_admitted_is_an_allow_without_outcome() -> None:
    rec = RecordBuilder(FakeAudit()).admitted(
        claims_for("ks"), "ks", "write", "ks.t", "allow-ks", "matched", {"n": 1}
    )
    assert (rec.event, rec.decision, rec.rule, rec.reason, rec.detail) == (
        "admitted",
        "allow",
        "allow-ks",
        "matched",
        {"n": 1},
    )
    assert rec.status is None and rec.latency_ms is None and rec.principal is not None


def test_emit_measures_latency_from_t0_on_the_engine_clock() -> None:
    audit = FakeAudit()
    now = [10.0]
    builder = RecordBuilder(audit, clock=lambda: now[0])
    now[0] = 10.0125
    builder.emit(
        "allowed", claims_for("orders"), "orders", 10.0, action="read", obj="/a",
        status=200, decision="allow", rule="r", bytes_in=3, bytes_out=5,
    )  # fmt: skip
    (rec,) = audit.records
    assert (rec.latency_ms, rec.bytes_in, rec.bytes_out, rec.status) == (12.5, 3, 5, 200)


def test_a_failing_sink_is_logged_not_raised(caplog: Any) -> None:
    class Broken:
        def emit(self, rec: AuditRecord) -> None:
            raise RuntimeError("disk gone")

    emit_safely(Broken(), record("denied", None, "orders"))
    RecordBuilder(Broken()).emit("denied", None, "orders", 0.0)
    assert "audit emit failed" in caplog.text
