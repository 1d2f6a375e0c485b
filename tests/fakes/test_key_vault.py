"""The test Key Vault against the real Azure SDK (azure-keyvault-secrets with azure-identity
against the test Entra ID): the SDK's challenge flow, versions, errors as the service
answers them. The SDK is the oracle for the stand-in the gateway's tests rely on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from lockgate.demo.standins.entra import EntraTrust, FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.entra.thread import LoopThread, server_tls
from lockgate.demo.standins.key_vault import FakeKeyVault
from lockgate.demo.standins.key_vault import start as start_key_vault

pytest.importorskip("azure.keyvault.secrets")
pytest.importorskip("azure.identity")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    ctx, ca = server_tls(tmp_path_factory.mktemp("kv-tls"))
    entra = FakeEntra(client_secrets={"reader": {"s"}, "stranger": {"s"}}, ca_file=ca)
    lt = LoopThread()
    lt.serve(start_entra(entra, 0, ctx))
    vault = FakeKeyVault(EntraTrust.of(entra), tenant=entra.tenant, readers={"reader"})
    lt.serve(start_key_vault(vault, 0, ctx))
    yield {"entra": entra, "vault": vault, "ca": ca}
    lt.stop()


def _client(env: dict[str, Any], client_id: str = "reader") -> Any:
    from azure.identity import ClientSecretCredential
    from azure.keyvault.secrets import SecretClient

    entra: FakeEntra = env["entra"]
    ca: Path = env["ca"]
    cred = ClientSecretCredential(
        entra.tenant, client_id, "s", authority=entra.base_url,
        disable_instance_discovery=True, connection_verify=str(ca),
    )  # fmt: skip
    # The SDK checks that the challenge's resource belongs to the vault's domain; a vault
    # on 127.0.0.1 is not under vault.azure.net.
    return SecretClient(
        env["vault"].base_url, cred, verify_challenge_resource=False, connection_verify=str(ca)
    )


def test_sdk_reads_latest_and_pinned_versions(env: dict[str, Any]) -> None:
    vault: FakeKeyVault = env["vault"]
    v1 = vault.set_secret("orders-api-key", "key-one")
    v2 = vault.set_secret("orders-api-key", "key-two")
    client = _client(env)
    latest = client.get_secret("orders-api-key")
    assert latest.value == "key-two" and latest.properties.version == v2
    assert latest.id == f"{vault.base_url}/secrets/orders-api-key/{v2}"
    assert latest.properties.enabled is True
    assert client.get_secret("orders-api-key", v1).value == "key-one"
    versions = {p.version for p in client.list_properties_of_secret_versions("orders-api-key")}
    assert versions == {v1, v2}
    # The SDK's first request carries no token; the challenge tells it which resource.
    first = next(r for r in vault.requests if r.path.rstrip("/").endswith("/orders-api-key"))
    assert first.status == 401 and first.appid is None


def test_sdk_sees_the_services_errors(env: dict[str, Any]) -> None:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    vault: FakeKeyVault = env["vault"]
    client = _client(env)
    with pytest.raises(ResourceNotFoundError) as missing:
        client.get_secret("no-such-secret")
    assert missing.value.error is not None and missing.value.error.code == "SecretNotFound"
    vault.set_secret("billing-key", "b")
    with pytest.raises(HttpResponseError) as forbidden:
        _client(env, "stranger").get_secret("billing-key")
    assert forbidden.value.status_code == 403 and forbidden.value.error.code == "Forbidden"
    version = vault.set_secret("old-key", "o")
    vault.disable("old-key", version)
    with pytest.raises(HttpResponseError) as disabled:
        client.get_secret("old-key", version)
    assert disabled.value.status_code == 403


def test_sdk_set_secret_adds_a_version(env: dict[str, Any]) -> None:
    vault: FakeKeyVault = env["vault"]
    vault.writers = {"reader"}
    client = _client(env)
    made = client.set_secret("rotated-key", "fresh")
    assert vault.secrets["rotated-key"][-1].version == made.properties.version
    assert client.get_secret("rotated-key").value == "fresh"


def test_challenge_and_api_version_as_the_service_answers(env: dict[str, Any]) -> None:
    base, ca = env["vault"].base_url, str(env["ca"])
    r = requests.get(f"{base}/secrets/x?api-version=7.4", verify=ca, timeout=10)
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer authorization="https://login.microsoftonline.com/')
    assert 'resource="https://vault.azure.net"' in challenge
    r = requests.get(f"{base}/secrets/x", headers={"Authorization": "Bearer forged"},
                     verify=ca, timeout=10)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["code"] == "BadParameter"
