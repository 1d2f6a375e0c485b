"""``credentials:`` entries whose value lives in Azure Key Vault or HashiCorp Vault: what the
file must say, and the errors that name the field when it does not."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from lockgate.config import LockgateConfig
from lockgate.config.credentials import KeyVaultCredential, VaultKvCredential

ENTRA = "https://login.microsoftonline.com/t/oauth2/v2.0/token"


def _load(*credentials: dict[str, Any], **extra: Any) -> LockgateConfig:
    return LockgateConfig.model_validate({"credentials": list(credentials), **extra})


def _kv_reader(**kw: Any) -> dict[str, Any]:
    return {"name": "kv-reader", "type": "managed_identity", "resource": "https://vault.azure.net",
            **kw}  # fmt: skip


def _key_vault(**kw: Any) -> dict[str, Any]:
    return {"name": "orders-key", "type": "azure_key_vault",
            "vault_url": "https://contoso.vault.azure.net/", "secret": "orders-api-key",
            "identity": "kv-reader", **kw}  # fmt: skip


def _error(*credentials: dict[str, Any], **extra: Any) -> str:
    with pytest.raises(ValidationError) as err:
        _load(*credentials, **extra)
    return str(err.value)


def test_key_vault_defaults_and_where_it_is_held() -> None:
    cfg = _load(_kv_reader(), _key_vault())
    cred = cfg.credential("orders-key")
    assert isinstance(cred, KeyVaultCredential)
    assert (cred.ttl, cred.overlap, cred.version) == (300, 600, None)
    assert cred.vault_url == "https://contoso.vault.azure.net"
    assert cred.held_at == "https://contoso.vault.azure.net/secrets/orders-api-key"
    pinned = _load(_kv_reader(), _key_vault(version="4387e9f3d6e14c459867679a90fd0f79"))
    held = pinned.credential("orders-key")
    assert isinstance(held, KeyVaultCredential)
    assert held.held_at.endswith("/orders-api-key/4387e9f3d6e14c459867679a90fd0f79")


@pytest.mark.parametrize(
    ("identity", "accepted"),
    [
        (_kv_reader(), True),
        (_kv_reader(resource="https://vault.azure.net/"), True),
        ({"name": "kv-reader", "type": "oauth2_client_credentials", "token_url": ENTRA,
          "client_id": "c", "scope": "https://vault.azure.net/.default"}, True),
        ({"name": "kv-reader", "type": "federated", "provider": "entra", "token_url": ENTRA,
          "client_id": "c", "scope": "https://vault.azure.net/.default"}, True),
        (_kv_reader(resource="https://management.azure.com"), False),
        ({"name": "kv-reader", "type": "oauth2_client_credentials", "token_url": ENTRA,
          "client_id": "c"}, False),
    ],
)  # fmt: skip
def test_key_vault_identity_audience(identity: dict[str, Any], accepted: bool) -> None:
    if accepted:
        _load(identity, _key_vault())
    else:
        text = _error(identity, _key_vault())
        assert "credentials[1].identity" in text and "Key Vault refuses" in text


def test_key_vault_identity_must_be_a_token_credential() -> None:
    text = _error(_key_vault())
    assert "credentials[0].identity: unknown credential 'kv-reader'" in text
    text = _error({"name": "kv-reader", "type": "static"}, _key_vault())
    assert "'kv-reader' is a static credential" in text and "managed_identity" in text


def test_vault_urls_must_not_cross_a_network_in_clear() -> None:
    text = _error(_kv_reader(), _key_vault(vault_url="http://contoso.vault.azure.net"))
    assert "vault_url" in text and "must be https" in text
    _load(_kv_reader(), _key_vault(vault_url="http://127.0.0.1:8443"))
    text = _error({"name": "v", "type": "vault_kv", "address": "http://vault.internal:8200",
                   "path": "a/b", "auth": {"method": "approle", "role_id": "r"}})  # fmt: skip
    assert "address" in text and "must be https" in text


def test_vault_kv_defaults_and_auth_methods() -> None:
    cfg = _load({"name": "v", "type": "vault_kv", "address": "https://vault.example:8200",
                 "path": "orders/api", "namespace": "team-a", "version": 3,
                 "auth": {"method": "approle", "role_id": "r",
                          "secret_id_file": "/run/sid"}})  # fmt: skip
    cred = cfg.credential("v")
    assert isinstance(cred, VaultKvCredential)
    assert (cred.mount, cred.field, cred.ttl, cred.overlap) == ("secret", "value", 300, 600)
    assert (
        cred.held_at
        == "https://vault.example:8200/v1/team-a/secret/data/orders/api?version=3#value"
    )
    assert cfg.signing_algorithms() == ["EdDSA"]  # approle signs nothing
    text = _error({"name": "v", "type": "vault_kv", "address": "https://v", "path": "a",
                   "auth": {"method": "kerberos"}})  # fmt: skip
    assert "auth" in text and "approle" in text and "jwt" in text


def test_vault_jwt_login_names_like_a_federated_credential() -> None:
    jwt_cred = {"name": "v", "type": "vault_kv", "address": "https://v", "path": "a",
                "auth": {"method": "jwt", "role": "gw", "audience": "orders-api"}}  # fmt: skip
    resource = {"name": "orders-api", "kind": "http", "upstream": "https://x", "credential": "v"}
    text = _error(jwt_cred, resources=[resource])
    assert "credentials[0].auth.audience: 'orders-api' is also a resource name" in text
    jwt_cred["auth"] = {"method": "jwt", "role": "gw", "audience": "vault", "subject": "airflow:x"}
    assert "credentials[0].auth.subject: 'airflow:' names task principals" in _error(jwt_cred)
    jwt_cred["auth"] = {"method": "jwt", "role": "gw", "audience": "vault", "algorithm": "ES256"}
    assert _load(jwt_cred).signing_algorithms() == ["EdDSA", "ES256"]
