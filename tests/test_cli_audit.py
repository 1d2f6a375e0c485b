"""``lockgate audit`` on shared state: the shared trail of every replica by default, this
replica's chain with ``--local``."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lockgate.audit import AuditRecord
from lockgate.cli import main
from lockgate.config import PostgresStateSettings, load_config
from lockgate.state import State


def test_shared_trail_and_local_chain(
    tmp_path: Path,
    pg_state: Callable[..., PostgresStateSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    config = tmp_path / "lockgate.yaml"
    settings = pg_state(replica_id="gw-1")
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "state": {"postgresql": settings.model_dump(mode="json")},
            }
        )
    )
    st = State(load_config(config))
    try:
        log = st.audit_log()
        try:
            asyncio.run(log.write(AuditRecord(event="token_issued", dag_id="cli_dag")))
        finally:
            log.close()
    finally:
        st.close()
    capsys.readouterr()
    assert main(["-c", str(config), "audit", "search", "--dag", "cli_dag", "--local"]) == 0
    assert "token_issued" in capsys.readouterr().out
    assert main(["-c", str(config), "audit", "verify"]) == 0
    assert "signed checkpoints" in capsys.readouterr().out
    other_replica = ["--dag", "cli_dag", "--replica", "gw-9"]
    assert main(["-c", str(config), "audit", "search", *other_replica]) == 0
    assert "token_issued" not in capsys.readouterr().out


def test_audit_verify_ocsf_checks_an_export_and_names_an_edited_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from lockgate.audit import ocsf
    from lockgate.audit.record import GENESIS, AuditRow, hash_values, sanitize, values

    lines, prev = [], GENESIS
    for seq in (1, 2, 3):
        rec = sanitize(
            AuditRecord("denied", principal="airflow:prod/d/t", resource="orders-api",
                        action="write", object=f"/orders/{seq}", decision="deny"),
            1_767_225_600.0 + seq,
        )  # fmt: skip
        h = hash_values(prev, values(rec), seq)
        row = AuditRow(**rec.to_dict(), seq=seq, prev_hash=prev, hash=h)
        lines.append(json.dumps(ocsf.event(row)))
        prev = h
    export = tmp_path / "audit.ocsf.jsonl"
    export.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", "--ocsf", str(export)]) == 0
    assert "OCSF export intact: 3 events" in capsys.readouterr().out
    edited = json.loads(lines[1])
    edited["status_id"] = 1  # a SIEM would now show the denial as a success
    export.write_text("\n".join([lines[0], json.dumps(edited), lines[2]]) + "\n")
    assert main(["audit", "verify", "--ocsf", str(export)]) == 1
    out = capsys.readouterr().out
    assert f"{export}:2:" in out and "ALTERED" in out


def test_audit_export_names_a_since_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lockgate.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    assert main(["-c", str(config), "audit", "export", "--since", "last tuesday"]) == 2
    err = capsys.readouterr().err
    assert "--since 'last tuesday'" in err and "ISO 8601" in err


def test_audit_search_filters_by_task_try_action_deployment_principal_jti_and_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from lockgate.audit import AuditLog

    config = tmp_path / "lockgate.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    (tmp_path / "data").mkdir()
    log = AuditLog(tmp_path / "data" / "audit.db")
    try:
        for i in range(12):
            log.emit(
                AuditRecord(
                    "denied" if i % 3 == 0 else "allowed", ts=1_767_225_600.0 + 60 * i,
                    deployment=("prod", "stage")[i % 2], dag_id="etl", task_id=f"t{i % 4}",
                    run_id="r1", try_number=1 + i % 3, principal=f"airflow:prod/etl/t{i % 4}",
                    resource="orders", action=("read", "write")[i % 2], object=f"o{i}",
                    decision="deny" if i % 3 == 0 else "allow", jti=f"j{i % 5}",
                    detail={"i": i},
                )
            )  # fmt: skip
        assert log.flush(10)
    finally:
        log.close()

    def search(*flags: str) -> list[int]:
        capsys.readouterr()
        assert main(["-c", str(config), "audit", "search", "--json", *flags]) == 0
        out = capsys.readouterr().out.splitlines()
        return [json.loads(line)["detail"]["i"] for line in out if line.strip()]

    assert search() == list(range(12))  # oldest first, as before
    assert search("--limit", "3") == [9, 10, 11]
    assert search("--task", "t1") == [1, 5, 9]
    assert search("--try", "3") == [2, 5, 8, 11]
    assert search("--action", "write", "--deployment", "stage") == [1, 3, 5, 7, 9, 11]
    assert search("--principal", "airflow:prod/etl/t2", "--jti", "j1") == [6]
    assert search("--since", "2026-01-01T00:05:00", "--until", "1767226080") == [5, 6, 7]
    assert search("--since", "2026-01-01T01:05:00+01:00", "--decision", "deny") == [6, 9]
    assert main(["-c", str(config), "audit", "search", "--until", "noon"]) == 2
    assert "--until 'noon'" in capsys.readouterr().err
