"""``lockgate creds`` and ``/readyz`` with vault-held credentials: ``set``/``rotate`` say to
rotate in the vault (an AppRole secret id is the one thing stored), ``list`` says where each
is held and when it was last fetched, readiness waits for the first fetch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lockgate.cli import main
from lockgate.config import load_config
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.credentials.vaults import Fetched
from lockgate.readiness import Readiness

SECRET_ID = "approle-secret-id-0123456789"


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LOCKGATE_MASTER_KEY", raising=False)
    monkeypatch.delenv("LOCKGATE_CONFIG", raising=False)
    path = tmp_path / "lockgate.yaml"
    path.write_text(
        json.dumps(  # JSON is YAML
            {"data_dir": str(tmp_path / "data"),
             "credentials": [
                 {"name": "kv-reader", "type": "managed_identity",
                  "resource": "https://vault.azure.net"},
                 {"name": "orders-key", "type": "azure_key_vault",
                  "vault_url": "https://contoso.vault.azure.net", "secret": "orders-api-key",
                  "identity": "kv-reader"},
                 {"name": "pg-pw", "type": "vault_kv", "address": "https://vault.example:8200",
                  "path": "pg/app", "field": "password",
                  "auth": {"method": "approle", "role_id": "r-1"}},
                 {"name": "cql-pw", "type": "vault_kv", "address": "https://vault.example:8200",
                  "path": "cql/app", "auth": {"method": "approle", "role_id": "r-1",
                                              "secret_id_file": str(tmp_path / "sid")}}],
             "resources": [
                 {"name": "orders-api", "kind": "http", "upstream": "https://orders.example.com",
                  "credential": "orders-key"}]}
        )
    )  # fmt: skip
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert SECRET_ID not in out + err
    return code, out, err


def test_set_and_rotate_say_rotate_in_the_vault(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for verb in ("set", "rotate"):
        code, out, err = run(capsys, "-c", str(conf), "creds", verb, "orders-key")
        assert code == 2 and out == ""
        assert (
            "held in Azure Key Vault (https://contoso.vault.azure.net/secrets/orders-api-key)"
            in err
        )
        assert "az keyvault secret set --vault-name contoso --name orders-api-key" in err
        code, out, err = run(capsys, "-c", str(conf), "creds", verb, "cql-pw")
        assert code == 2 and "vault kv patch cql/app value=@<path>" in err
    assert not (conf.parent / "data").exists()  # refused before any state was made


def test_approle_secret_id_is_stored_and_list_shows_where(
    conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SID", SECRET_ID)
    code, out, _ = run(capsys, "-c", str(conf), "creds", "set", "pg-pw", "--from-env", "SID")
    assert code == 0 and "the AppRole secret id of credential pg-pw stored" in out
    cfg = load_config(conf)
    store = CredentialStore(cfg.data_dir / "credentials.db", _master_key(cfg.data_dir))
    store.record_fetch("orders-key", "https://contoso.vault.azure.net/secrets/orders-api-key",
                       "4387e9f3d6e14c459867679a90fd0f79", 1_700_000_000.0)  # fmt: skip
    code, out, _ = run(capsys, "-c", str(conf), "creds", "list")
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "version 4387e9f3d6e14c459867679a90fd0f79 fetched" in lines["orders-key"]
    assert (
        "held in Vault: https://vault.example:8200/v1/secret/data/cql/app#value"
        in (lines["cql-pw"])
    )
    assert "not fetched yet" in lines["cql-pw"]
    assert "AppRole secret id version 1" in out
    assert "3 of 4 credentials hold no secret" in out


def _master_key(data_dir: Path) -> bytes:
    from lockgate.credentials import load_or_create_master_key

    return load_or_create_master_key(data_dir)


class _Audit:
    def check_writable(self) -> None:
        return None


class _Policy:
    last_error = None
    loaded_at = 1.0

    class current:  # the attribute readiness reads
        sources = ["p.yaml"]


class _Keys:
    dir = None

    def current(self, alg: str) -> Any:
        return type("K", (), {"kid": "k"})()

    def public_key(self, kid: str) -> object:
        return object()


async def test_readiness_waits_for_the_first_fetch(conf: Path) -> None:
    cfg = load_config(conf)
    store = CredentialStore(cfg.data_dir / "credentials.db", b"k" * 32)
    ready = Readiness(cfg, audit=_Audit(), policy=_Policy(), credentials=store, keys=_Keys())  # type: ignore[arg-type]
    broker = CredentialBroker(cfg, store)
    try:
        report = ready.report(True)
        assert not report.ready
        assert report.checks["credentials"] == (
            "not fetched from the vault yet: orders-key (resource orders-api) from "
            "https://contoso.vault.azure.net/secrets/orders-api-key: no answer yet"
        )

        async def fetched() -> Fetched:
            return Fetched("the-key", "v1")

        vault = broker._vaults.of(cfg.credential("orders-key"))  # type: ignore[arg-type]
        vault._fetch = fetched
        await vault.get()
        assert ready.report(True).checks["credentials"] == "ok"
    finally:
        await broker.close()
