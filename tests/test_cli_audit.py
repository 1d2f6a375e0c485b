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
