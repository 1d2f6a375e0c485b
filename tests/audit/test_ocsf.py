"""The OCSF export: every event it emits is valid against the official OCSF schema, maps
the record as docs/audit.md says, and carries enough to verify the chain from the export."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from lockgate.audit import AuditRecord, AuditRow
from lockgate.audit import ocsf as ocsf_map
from lockgate.audit.record import GENESIS, RECORD_FIELDS, hash_values, sanitize, values
from lockgate.audit.remote import RemoteAuditLog, WriterProcess
from lockgate.audit.sinks import JsonlSink, Mirrors, OcsfSink, open_mirrors

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
DATASTORES = {"orders-cql": ocsf_map.NOSQL, "orders-pg": ocsf_map.RELATIONAL}
DATASTORES["orders-cosmos"] = ocsf_map.NOSQL
WHO: dict[str, Any] = {
    "deployment": "prod",
    "dag_id": "finance_daily",
    "task_id": "load_orders",
    "run_id": "scheduled__2026-01-01",
    "try_number": 1,
    "map_index": -1,
    "principal": "airflow:prod/finance_daily/load_orders",
    "jti": "tok-1",
}


def _records() -> list[tuple[AuditRecord, int, int]]:
    """(record, expected class_uid, expected activity_id): every kind of record Lockgate
    writes, from every engine and the control plane."""
    req = {**WHO, "resource": "orders-api"}
    return [
        (AuditRecord("admitted", **req, action="read", object="/orders", decision="allow",
                     rule="r1", reason="allowed by r1"), 6003, 2),
        (AuditRecord("allowed", **req, action="write", object="/orders", decision="allow",
                     status=201, latency_ms=3.5, bytes_in=10, bytes_out=20,
                     detail={"ref": "s/1"}), 6003, 3),
        (AuditRecord("allowed", **req, action="run", object="job:1", decision="allow"),
         6003, 1),
        (AuditRecord("denied", **req, action="admin", object="/x", decision="deny",
                     reason="no rule matches"), 6003, 99),
        (AuditRecord("throttled", **req, action="read", object="/orders", decision="deny",
                     reason="throttled", rule="r1",
                     detail={"limit": "q1", "kind": "rate", "retry_after": 0.5}), 6003, 2),
        (AuditRecord("upstream_error", **req, action="read", object="/o", decision="error",
                     reason="upstream_unavailable", status=502), 6003, 2),
        (AuditRecord("admitted", **{**WHO, "resource": "orders-cql"}, action="read",
                     object="ks.orders", decision="allow",
                     detail={"statement": "SELECT * FROM ks.orders WHERE id = ?"}), 6005, 4),
        (AuditRecord("allowed", **{**WHO, "resource": "orders-pg"}, action="write",
                     object="public.orders", decision="allow",
                     detail={"statement": "INSERT INTO orders VALUES ($1)",
                             "command": "INSERT", "tag": "INSERT 0 1"}), 6005, 5),
        (AuditRecord("allowed", **{**WHO, "resource": "orders-cosmos"}, action="read",
                     object="sales/orders", decision="allow",
                     detail={"operation": "query_documents", "db": "sales"}), 6005, 4),
        (AuditRecord("denied", **{**WHO, "resource": "orders-cosmos"}, action="write",
                     object="sales/orders", decision="deny",
                     detail={"operation": "delete_document"}), 6005, 7),
        # a resource added after the sink opened: its statement says datastore
        (AuditRecord("allowed", **{**WHO, "resource": "new-cql"}, action="admin",
                     object="ks", decision="allow", detail={"statement": "DROP TABLE ks.t"}),
         6005, 99),
        (AuditRecord("allowed", **{**WHO, "resource": "orders-pg"}, action="connect",
                     decision="allow", detail={"user": "x", "tls": True}), 3002, 1),
        (AuditRecord("session_ended", **{**WHO, "resource": "orders-cql"}, action="connect",
                     decision="deny", reason="token_revoked"), 3002, 2),
        (AuditRecord("auth_failed", resource="orders-api", decision="deny",
                     reason="expired"), 3002, 1),
        (AuditRecord("token_issued", **{**WHO, "resource": "orders-api"}, decision="allow",
                     rule="mint-r", detail={"ttl": 900, "expires_at": 1.0}), 3003, 1),
        (AuditRecord("credential_rotated", object="orders-api-key"), 6003, 3),
        (AuditRecord("credential_set", object="orders-api-key"), 6003, 1),
        (AuditRecord("key_rotated", object="kid-2", detail={"alg": "EdDSA"}), 6003, 1),
        (AuditRecord("key_retired", object="kid-1"), 6003, 4),
        (AuditRecord("token_revoked", **WHO, object="tok-1"), 6003, 4),
        (AuditRecord("mint_blocked", deployment="prod", object="finance_daily"), 6003, 3),
        (AuditRecord("mint_unblocked", deployment="prod", object="finance_daily"), 6003, 3),
        (AuditRecord("policy_reloaded", reason="applied"), 6003, 3),
        (AuditRecord("config_reloaded", reason="refused"), 6003, 3),
        (AuditRecord("console_signed_in", principal="console:u-1", decision="allow",
                     detail={"name": "ann", "role": "admin", "via": "oidc"}), 3002, 1),
        (AuditRecord("console_sign_in_failed", decision="deny", reason="wrong_nonce",
                     detail={"via": "oidc"}), 3002, 1),
        (AuditRecord("console_signed_out", principal="console:link:ab12cd34",
                     decision="allow", detail={"name": "x", "role": "admin", "via": "link"}),
         3002, 2),
        (AuditRecord("console_link_created", object="link:ab12cd34", detail={"ttl": 900}),
         6003, 1),
        # an operator's action in the console: the actor is a person
        (AuditRecord("token_revoked", principal="console:u-1", object="tok-1",
                     detail={"by": "ann", "role": "operator", "via": "oidc"}), 6003, 4),
    ]  # fmt: skip


def _rows(records: list[AuditRecord]) -> list[AuditRow]:
    """Records as the chain stores them: sanitised, numbered, hash-chained."""
    rows, prev = [], GENESIS
    for seq, rec in enumerate(records, 1):
        rec = sanitize(rec, 1_767_225_600.25 + seq)
        h = hash_values(prev, values(rec), seq)
        rows.append(AuditRow(**rec.to_dict(), seq=seq, prev_hash=prev, hash=h))
        prev = h
    return rows


_SCHEMA = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=ocsf_map.OCSF_VERSION))
_CLASS_NAMES = {
    6003: "api_activity",
    6005: "datastore_activity",
    3002: "authentication",
    3003: "authorize_session",
}


@cache
def _validator(class_uid: int) -> jsonschema.protocols.Validator:
    schema = _SCHEMA.get_class_schema(_CLASS_NAMES[class_uid], ["security_control"])
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _valid(event: dict[str, Any]) -> None:
    assert event["metadata"]["profiles"] == ["security_control"]
    errors = sorted(_validator(event["class_uid"]).iter_errors(event), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]


@pytest.mark.parametrize(
    ("index", "event", "class_uid", "activity"),
    [(i, r.event, c, a) for i, (r, c, a) in enumerate(_records())],
)
def test_every_event_is_valid_ocsf_of_its_class(
    index: int, event: str, class_uid: int, activity: int
) -> None:
    row = _rows([r for r, _, _ in _records()])[index]
    ev = ocsf_map.event(row, DATASTORES)
    _valid(ev)
    assert (ev["class_uid"], ev["activity_id"]) == (class_uid, activity)
    assert ev["type_uid"] == class_uid * 100 + activity
    assert ev["category_uid"] == class_uid // 1000
    # required everywhere (the schema checks them per class; this says what we promise)
    assert ev["metadata"]["version"] == ocsf_map.OCSF_VERSION
    assert ev["metadata"]["product"]["name"] == "Lockgate"
    assert ev["metadata"]["product"]["vendor_name"] == "Lockgate"
    assert ev["time"] == round(row.ts * 1000)
    assert ev["severity_id"] in (1, 2)
    assert ev["status_id"] in (0, 1, 2)
    lockgate = ev["unmapped"]["lockgate"]
    assert (lockgate["seq"], lockgate["hash"], lockgate["prev_hash"]) == (
        row.seq,
        row.hash,
        row.prev_hash,
    )
    assert (lockgate["run_id"], lockgate["try_number"], lockgate["rule"]) == (
        row.run_id,
        row.try_number,
        row.rule,
    )
    if row.principal:
        assert ev["actor"]["user"]["name"] == row.principal
        assert ev["src_endpoint"]["name"] == (row.deployment or "unknown")


def test_status_follows_the_decision() -> None:
    rows = _rows([r for r, _, _ in _records()])
    events = {f"{r.event}{r.action}": ocsf_map.event(r, DATASTORES) for r in reversed(rows)}
    assert events["admittedread"]["status_id"] == 1
    assert events["deniedadmin"]["status"] == "Failure"
    assert events["deniedadmin"]["status_detail"] == "no rule matches"
    assert events["throttledread"]["status_id"] == 2
    assert events["throttledread"]["unmapped"]["lockgate"]["detail"]["limit"] == "q1"
    assert events["upstream_errorread"]["status_code"] == "502"
    assert events["auth_failedNone"]["status_id"] == 2
    assert events["auth_failedNone"]["user"] == {"name": "unknown"}
    assert events["session_endedconnect"]["status_id"] == 1  # the logoff itself succeeded
    assert events["config_reloadedNone"]["status_id"] == 2  # refused: nothing applied
    assert events["policy_reloadedNone"]["status_id"] == 1
    assert events["allowedwrite"]["metadata"]["correlation_uid"] == "s/1"
    assert events["token_issuedNone"]["privileges"] == ["resource:orders-api"]
    minted = events["token_issuedNone"]
    assert minted["session"]["uid"] == minted["actor"]["session"]["uid"]


def test_a_row_that_cannot_be_mapped_still_becomes_a_valid_event() -> None:
    row = _rows([AuditRecord("allowed", resource="x", action="read")])[0]
    row.detail = "not a dict"  # type: ignore[assignment]  # what no writer stores
    row.action = 7  # type: ignore[assignment]
    ev = ocsf_map.event(row)
    _valid(ev)
    assert ev["unmapped"]["lockgate"]["seq"] == 1


def test_datastores_from_the_catalog() -> None:
    class R:
        def __init__(self, name: str, kind: str, profile: str | None = None) -> None:
            self.name, self.kind, self.profile = name, kind, profile

    catalog = [R("a", "http"), R("b", "http", "cosmos"), R("c", "cql"), R("d", "postgres")]
    assert ocsf_map.datastores(catalog) == {
        "b": ocsf_map.NOSQL,
        "c": ocsf_map.NOSQL,
        "d": ocsf_map.RELATIONAL,
    }


def _verify_from_export(lines: list[dict[str, Any]]) -> int:
    """Re-hash the chain from the OCSF export alone; the number of rows checked."""
    prev = GENESIS
    for ev in lines:
        row = ev["unmapped"]["lockgate"]
        assert row["prev_hash"] == prev
        vals = tuple(row[name] for name in RECORD_FIELDS)
        assert hash_values(prev, vals, row["seq"]) == row["hash"], row["seq"]
        prev = row["hash"]
    return len(lines)


def test_the_writer_process_mirrors_every_committed_row_as_ocsf(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    writer = WriterProcess(
        db, tmp_path / "audit.jsonl", ocsf_path=tmp_path / "audit.ocsf.jsonl",
        datastores=DATASTORES,
    )  # fmt: skip
    writer.start()
    log = RemoteAuditLog(db, socket_path=writer.socket_path)
    try:
        records = [r for r, _, _ in _records()]
        records.append(AuditRecord("denied", **WHO, resource="orders-api", reason=f"x {JWT}"))
        for rec in records:
            log.emit(rec)
        assert log.flush(10)
        rows = log.tail(100)
    finally:
        log.close()
        writer.stop()
    text = (tmp_path / "audit.ocsf.jsonl").read_text()
    assert JWT not in text  # sanitised before it is mirrored, as in the chain
    events = [json.loads(line) for line in text.splitlines()]
    jsonl = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["unmapped"]["lockgate"] for e in events] == jsonl  # the same rows, in order
    assert [e["unmapped"]["lockgate"]["hash"] for e in events] == [r.hash for r in rows]
    assert _verify_from_export(events) == len(records)
    for ev in events:
        _valid(ev)
    assert oct(os.stat(tmp_path / "audit.ocsf.jsonl").st_mode & 0o777) == "0o600"


def test_mirrors_are_all_or_nothing(tmp_path: Path) -> None:
    rows = _rows([AuditRecord("allowed", resource="x", action="read")] * 3)
    jsonl = JsonlSink(tmp_path / "a.jsonl")
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")  # the OCSF file's parent is a file: it cannot be written
    both = Mirrors([jsonl, OcsfSink(blocked / "a.ocsf")])
    jsonl.write(rows[:1])
    with pytest.raises(OSError):
        both.write(rows[1:])
    # the JSON-lines file is cut back: a retry writes those rows once, not twice
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 1
    both.close()
    assert open_mirrors(None) is None
    assert isinstance(open_mirrors(tmp_path / "j"), JsonlSink)
    assert isinstance(open_mirrors(None, tmp_path / "o"), OcsfSink)
    assert isinstance(open_mirrors(tmp_path / "j", tmp_path / "o"), Mirrors)


def test_the_config_mirrors_to_the_ocsf_file_and_export_prints_the_same_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from lockgate.cli import main
    from lockgate.config import load_config
    from lockgate.state import State

    config = tmp_path / "lockgate.yaml"
    config.write_text(  # a relative path: next to the configuration file
        yaml.safe_dump({"data_dir": str(tmp_path / "data"), "audit": {"ocsf": "audit.ocsf"}})
    )
    state = State(load_config(config))
    try:
        log = state.audit_log()  # the thread writer
        try:
            for rec, _, _ in _records():
                log.emit(rec)
            assert log.flush(10)
        finally:
            log.close()
    finally:
        state.close()
    mirrored = [json.loads(x) for x in (tmp_path / "audit.ocsf").read_text().splitlines()]
    assert len(mirrored) == len(_records())
    assert _verify_from_export(mirrored) == len(mirrored)
    for ev in mirrored:
        _valid(ev)
    capsys.readouterr()
    assert main(["-c", str(config), "audit", "export", "--format", "ocsf"]) == 0
    exported = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert exported == mirrored
