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
