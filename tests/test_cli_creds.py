"""``lockgate creds`` with credentials that hold no secret: ``set``/``rotate`` refuse them
(naming what the cloud must trust instead) and ``list`` says which credentials hold one."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lockgate.cli import main

VALUE = "static-s3cr3t-value-0123456789"


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LOCKGATE_MASTER_KEY", raising=False)
    monkeypatch.delenv("LOCKGATE_CONFIG", raising=False)
    path = tmp_path / "lockgate.yaml"
    path.write_text(
        json.dumps(  # JSON is YAML
            {"data_dir": str(tmp_path / "data"), "issuer": "https://lockgate.example.com",
             "credentials": [
                 {"name": "orders-key", "type": "static"},
                 {"name": "cosmos-fed", "type": "federated", "provider": "entra",
                  "token_url": "https://login.example.com/t/oauth2/v2.0/token",
                  "client_id": "app-1", "scope": "https://acct.documents.azure.com/.default"},
                 {"name": "dbx-fed", "type": "federated", "provider": "databricks",
                  "token_url": "https://dbc-1.example.com/oidc/v1/token",
                  "audience": "acct-123", "subject": "lockgate:prod", "algorithm": "ES256"},
                 {"name": "arm-mi", "type": "managed_identity",
                  "resource": "https://management.azure.com"}],
             "resources": [
                 {"name": "orders-api", "kind": "http", "upstream": "https://orders.example.com",
                  "credential": "orders-key", "conn_id": "orders_api"},
                 {"name": "orders-cosmos", "kind": "http", "upstream": "https://acct.example.com",
                  "credential": "cosmos-fed", "conn_id": "orders_cosmos"},
                 {"name": "dbx", "kind": "http", "upstream": "https://dbc-1.example.com",
                  "credential": "dbx-fed", "conn_id": "dbx"}]}
        )
    )  # fmt: skip
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert VALUE not in out + err
    return code, out, err


def test_set_and_rotate_refuse_what_stores_nothing(
    conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VALUE", VALUE)
    for verb in ("set", "rotate"):
        code, out, err = run(capsys, "-c", str(conf), "creds", verb, "cosmos-fed")
        assert code == 2 and out == ""
        assert "'cosmos-fed' is federated (entra): there is nothing to store" in err
        assert (
            "the cloud must trust issuer https://lockgate.example.com, subject "
            "lockgate:credential:cosmos-fed, audience api://AzureADTokenExchange (RS256)"
        ) in err
    code, _, err = run(capsys, "-c", str(conf), "creds", "set", "dbx-fed", "--from-env", "VALUE")
    assert code == 2 and "subject lockgate:prod, audience acct-123 (ES256)" in err
    code, _, err = run(capsys, "-c", str(conf), "creds", "rotate", "arm-mi")
    assert code == 2 and "'arm-mi' is the host's managed identity" in err
    assert not (conf.parent / "data").exists()  # refused before any state was opened


def test_refused_before_reading_a_value(
    conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.StringIO(VALUE + "\n")
    monkeypatch.setattr("sys.stdin", stdin)
    code, _, _ = run(capsys, "-c", str(conf), "creds", "set", "cosmos-fed")
    assert code == 2 and stdin.tell() == 0  # nothing was read, nothing prompted


def test_list_says_which_credentials_hold_a_secret(
    conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VALUE", VALUE)
    code, out, _ = run(capsys, "-c", str(conf), "creds", "list")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line}  # by first word
    assert "NOT SET" in lines["orders-key"]
    assert lines["cosmos-fed"].split()[1:] == ["federated", "no", "secret", "(federated:", "entra)"]
    assert lines["dbx-fed"].endswith("no secret (federated: databricks)")
    assert lines["arm-mi"].endswith("no secret (managed identity)")
    assert "3 of 4 credentials hold no secret" in out
    assert out.rstrip().endswith("resources served with no stored secret: orders-cosmos, dbx")
    assert run(capsys, "-c", str(conf), "creds", "set", "orders-key", "--from-env", "VALUE")[0] == 0
    code, out, _ = run(capsys, "-c", str(conf), "creds", "list")
    assert "orders-key" in out and "version 1" in out and "NOT SET" not in out
