"""``lockgate policy suggest`` with ``state: postgresql``: the shared trail of every replica,
streamed in batches (a batch of two here, so the rows cross many page edges), against this
replica's local chain alone with ``--local``."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml

from lockgate import cli_policy_usage
from tests.audit.test_reader_iter_rows import _write
from tests.pgserver.fixtures import SharedStateFactory
from tests.test_cli_policy_usage import record, run


def test_suggest_streams_every_replicas_rows(
    tmp_path: Path,
    pg_state: SharedStateFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setattr(cli_policy_usage, "_BATCH", 2)
    settings = pg_state(replica_id="gw-1")
    here = [record("load", f"/orders/{n}", ts=1000.0 + n) for n in range(1, 6)]
    there = [record("report", f"/summary/{n}", ts=1000.0 + n) for n in range(1, 4)]
    there += [record("report", "/admin", dag_id="other", ts=1003.5)]  # another DAG's
    _write(tmp_path / "data" / "audit.db", here, settings, "gw-1")
    _write(tmp_path / "gw-2" / "audit.db", there, settings, "gw-2")
    path = tmp_path / "lockgate.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "state": {"postgresql": settings.model_dump(mode="json")},
            }
        )
    )

    def suggested(*options: str) -> list[tuple[str, list[str]]]:
        capsys.readouterr()
        assert run("-c", str(path), "policy", "suggest", "--dag", "finance", *options) == 0
        rules = yaml.safe_load(capsys.readouterr().out.split("\n---\n")[0])["rules"]
        return sorted((r["principals"][0], r["objects"]) for r in rules)

    assert suggested("--since", "0") == [  # the records are from 1970
        ("airflow:prod/finance/load", ["/orders/*"]),
        ("airflow:prod/finance/report", ["/summary/*"]),
    ]
    # --since: only what the window holds, from both replicas
    assert suggested("--since", "1002.5") == [
        ("airflow:prod/finance/load", ["/orders/*"]),
        ("airflow:prod/finance/report", ["/summary/3"]),
    ]
    assert suggested("--since", "0", "--local") == [("airflow:prod/finance/load", ["/orders/*"])]
