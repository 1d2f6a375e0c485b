"""Hash chain: verify passes on an honest log and catches edits, deletes, reorders, truncation."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from lockgate.audit import AuditLog, AuditReader, AuditRecord


def _fill(tmp_path: Path, n: int = 10, jsonl: bool = False) -> Path:
    db = tmp_path / "audit.db"
    log = AuditLog(db, tmp_path / "audit.jsonl" if jsonl else None)
    for i in range(n):
        log.emit(
            AuditRecord(
                event="allowed" if i % 3 else "denied",
                dag_id=f"dag{i % 2}",
                run_id=f"run{i}",
                decision="allow" if i % 3 else "deny",
                latency_ms=i / 7,
                detail={"i": i, "b": [1, "x"], "a": {"z": 1, "y": 2}},
            )
        )
    assert log.flush(5)
    log.close()
    return db


def _raw(db: Path) -> sqlite3.Connection:
    """A tamperer's connection: triggers dropped, as anyone with write access could."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    return conn


def test_honest_chain_verifies(tmp_path: Path) -> None:
    db = _fill(tmp_path)
    res = AuditReader(db).verify()
    assert res.ok and res.checked == 10 and res.first_bad_seq is None and res.problem is None


def test_triggers_refuse_update_and_delete(tmp_path: Path) -> None:
    db = _fill(tmp_path, 3)
    conn = sqlite3.connect(db, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit SET decision = 'allow' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE seq = 2")


def test_edited_row_detected(tmp_path: Path) -> None:
    db = _fill(tmp_path)
    _raw(db).execute("UPDATE audit SET decision = 'allow', event = 'allowed' WHERE seq = 4")
    res = AuditReader(db).verify()
    assert not res.ok
    assert res.first_bad_seq == 4
    assert res.checked == 3
    assert "edited" in (res.problem or "")


def test_edited_detail_detected(tmp_path: Path) -> None:
    db = _fill(tmp_path)
    _raw(db).execute("""UPDATE audit SET detail = '{"i":99}' WHERE seq = 7""")
    res = AuditReader(db).verify()
    assert (res.ok, res.first_bad_seq) == (False, 7)


def test_deleted_row_detected(tmp_path: Path) -> None:
    db = _fill(tmp_path)
    _raw(db).execute("DELETE FROM audit WHERE seq = 5")
    res = AuditReader(db).verify()
    assert not res.ok
    assert res.first_bad_seq == 5
    assert "missing" in (res.problem or "")


def test_deleted_row_with_renumbering_detected(tmp_path: Path) -> None:
    db = _fill(tmp_path)
    conn = _raw(db)
    conn.execute("DELETE FROM audit WHERE seq = 5")
    conn.execute("UPDATE audit SET seq = seq - 1 WHERE seq > 5")  # close the gap
    conn.execute("UPDATE audit_head SET seq = seq - 1")
    res = AuditReader(db).verify()
    assert (res.ok, res.first_bad_seq) == (False, 5)


def test_reordered_rows_detected(tmp_path: Path) -> None:
    db = _fill(tmp_path)
    conn = _raw(db)
    conn.execute("UPDATE audit SET seq = -1 WHERE seq = 3")
    conn.execute("UPDATE audit SET seq = 3 WHERE seq = 6")
    conn.execute("UPDATE audit SET seq = 6 WHERE seq = -1")
    res = AuditReader(db).verify()
    assert (res.ok, res.first_bad_seq) == (False, 3)


def test_truncated_tail_detected(tmp_path: Path) -> None:
    db = _fill(tmp_path)
    _raw(db).execute("DELETE FROM audit WHERE seq > 7")
    res = AuditReader(db).verify()
    assert not res.ok
    assert res.first_bad_seq == 8
    assert "truncated" in (res.problem or "")


def test_row_appended_behind_the_head_detected(tmp_path: Path) -> None:
    db = _fill(tmp_path, 3)
    conn = _raw(db)
    row = conn.execute("SELECT * FROM audit WHERE seq = 3").fetchone()
    marks = ",".join("?" * len(row))
    conn.execute(f"INSERT INTO audit VALUES ({marks})", (4, *row[1:]))  # noqa: S608
    res = AuditReader(db).verify()
    assert not res.ok and res.first_bad_seq == 4


def test_full_rewrite_needs_an_outside_anchor(tmp_path: Path) -> None:
    """Truncating rows AND head is invisible to the DB alone; the JSONL anchor catches it."""
    db = _fill(tmp_path, 10, jsonl=True)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    anchor = json.loads(lines[-1])
    conn = _raw(db)
    conn.execute("DELETE FROM audit WHERE seq > 8")
    last = conn.execute("SELECT seq, hash FROM audit WHERE seq = 8").fetchone()
    conn.execute("UPDATE audit_head SET seq = ?, hash = ?", last)
    reader = AuditReader(db)
    assert reader.verify().ok  # documented limit: consistent rewrite of the whole DB
    res = reader.verify(anchors=[(anchor["seq"], anchor["hash"])])
    assert not res.ok and res.first_bad_seq == 10


def test_chain_continues_across_reopen_and_second_writer(tmp_path: Path) -> None:
    db = _fill(tmp_path, 5)
    a, b = AuditLog(db), AuditLog(db)  # e.g. the server and a CLI command
    try:
        for i in range(20):
            (a if i % 2 else b).emit(AuditRecord(event="credential_set", reason=str(i)))
            (a if i % 2 else b).flush(5)
    finally:
        a.close()
        b.close()
    res = AuditReader(db).verify()
    assert res.ok and res.checked == 25
    assert AuditReader(db).head()[0] == 25


def test_verify_missing_db_is_empty_and_ok(tmp_path: Path) -> None:
    reader = AuditReader(tmp_path / "nope.db")
    assert reader.verify().ok and reader.tail() == [] and reader.search() == []
    assert not (tmp_path / "nope.db").exists()


def test_stored_rows_hash_as_the_documented_formula(tmp_path: Path) -> None:
    """The chain format an external verifier relies on: hash = sha256(prev_hash ||
    json.dumps([seq, *fields], sort_keys=True, separators=(",", ":"), ensure_ascii=False)),
    and the detail column is the detail's own canonical JSON. Non-ASCII text, escapes,
    nested details, big ints and floats included (they must encode exactly as json.dumps)."""
    import hashlib

    from lockgate.audit.record import RECORD_FIELDS

    db = tmp_path / "audit.db"
    log = AuditLog(db)
    odd = 'é ☃ 😀 "q" \\ \n ,{}[]:'
    log.write_ahead(AuditRecord(event="admitted", principal=odd, detail={"z": odd, "n": 2**62}))
    log.emit(
        AuditRecord(
            event="allowed",
            ts=1700000000.123456,
            latency_ms=1e-7,
            detail={"b": {"y": [1, 2.5, None, True]}, "a": odd},
        )
    )
    assert log.flush(5)
    log.close()
    conn = sqlite3.connect(db)
    cols = ", ".join(RECORD_FIELDS)
    sql = f"SELECT seq, {cols}, prev_hash, hash FROM audit ORDER BY seq"  # noqa: S608 - our names
    rows = conn.execute(sql).fetchall()
    assert len(rows) == 2
    for seq, *vals, prev, h in rows:
        detail = json.loads(vals[-1])
        assert vals[-1] == json.dumps(
            detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        text = json.dumps(
            [seq, *vals[:-1], detail], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        assert hashlib.sha256(prev.encode() + text.encode()).hexdigest() == h
    assert AuditReader(db).verify().ok
