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
    # The service names login.windows.net/<tenant> (a 401 Key Vault answered, quoted in
    # https://github.com/Azure/azure-sdk-for-go/issues/723 and
    # https://github.com/Azure-Samples/azure-sdk-for-js-keyvault-secrets-get-nodejs-managedid/issues/4).
    assert challenge == (
        f'Bearer authorization="https://login.windows.net/{env["entra"].tenant}", '
        'resource="https://vault.azure.net"'
    )
    assert r.json()["error"]["code"] == "Unauthorized"
    r = requests.get(f"{base}/secrets/x", headers={"Authorization": "Bearer forged"},
                     verify=ca, timeout=10)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["code"] == "BadParameter"

    # An api-version the service does not know: 400 BadParameter naming the latest one
    # (https://github.com/Azure/azure-sdk-for-python/issues/28595: "The specified version
    # (7.3) is not recognized. Consider using the latest supported version (7.1).").
    r = requests.get(f"{base}/secrets/x?api-version=9.9", verify=ca, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "BadParameter"
    assert "The specified version (9.9) is not recognized" in r.json()["error"]["message"]


def test_a_disabled_latest_version_is_refused_not_skipped(env: dict[str, Any]) -> None:
    # Reading the latest version when it is disabled is 403 Forbidden / SecretDisabled: Key
    # Vault does not serve the newest enabled one instead. Sources: the answer to GET
    # secrets/<name>/?api-version=7.4 (no version) in
    # https://github.com/Azure/azure-sdk-for-js/issues/25759 ({"error": {"code": "Forbidden",
    # "message": "Operation get is not allowed on a disabled secret.", "innerError": {"code":
    # "SecretDisabled"}}}) and https://github.com/Azure/azure-powershell/issues/14740.
    from azure.core.exceptions import HttpResponseError

    vault: FakeKeyVault = env["vault"]
    client = _client(env)
    v1 = vault.set_secret("half-rotated", "old")
    v2 = vault.set_secret("half-rotated", "new")
    vault.disable("half-rotated", v2)
    with pytest.raises(HttpResponseError) as disabled:
        client.get_secret("half-rotated")
    assert disabled.value.status_code == 403 and disabled.value.error.code == "Forbidden"
    assert "disabled secret" in disabled.value.error.message
    assert disabled.value.error.innererror == {"code": "SecretDisabled"}
    assert client.get_secret("half-rotated", v1).value == "old"
    listed = {
        p.version: p.enabled for p in client.list_properties_of_secret_versions("half-rotated")
    }
    assert listed == {v1: True, v2: False}


def test_expired_and_not_yet_valid_versions_are_still_served(env: dict[str, Any]) -> None:
    # exp and nbf are not enforced on get: "A secret's get operation will work for
    # not-yet-valid and expired secrets, outside the nbf / exp window"
    # (https://learn.microsoft.com/en-us/azure/key-vault/secrets/about-secrets, "Date-time
    # controlled operations"; seen so by https://github.com/Azure/AzureKeyVault/issues/19).
    import time
    from datetime import UTC, datetime

    vault: FakeKeyVault = env["vault"]
    client = _client(env)
    now = int(time.time())
    vault.set_secret("expired-key", "stale", expires=now - 3600)
    got = client.get_secret("expired-key")
    assert got.value == "stale"
    assert got.properties.expires_on == datetime.fromtimestamp(now - 3600, UTC)
    vault.set_secret("future-key", "early", not_before=now + 3600)
    got = client.get_secret("future-key")
    assert got.value == "early" and got.properties.not_before is not None
    vault.writers = {"reader"}
    updated = client.update_secret_properties(
        "future-key", got.properties.version, expires_on=datetime.fromtimestamp(now + 60, UTC)
    )
    assert updated.expires_on == datetime.fromtimestamp(now + 60, UTC)


def test_access_policy_and_firewall_refusals(env: dict[str, Any]) -> None:
    # A vault on access policies refuses with 403 Forbidden / AccessDenied "... does not have
    # secrets get permission on key vault ..." (answers quoted in
    # https://github.com/Azure/azure-libraries-for-net/issues/1067 and
    # https://github.com/MicrosoftDocs/azure-docs/issues/57072); its firewall with 403
    # Forbidden / ForbiddenByFirewall "Client address is not authorized and caller is not a
    # trusted service." (https://github.com/MicrosoftDocs/azure-devops-docs/issues/8581,
    # https://learn.microsoft.com/en-us/azure/key-vault/general/rest-error-codes, HTTP 403).
    from azure.core.exceptions import HttpResponseError

    vault: FakeKeyVault = env["vault"]
    vault.set_secret("policy-held", "p")
    client = _client(env)
    try:
        vault.access_policies = {"someone-else": {"get"}}
        with pytest.raises(HttpResponseError) as denied:
            client.get_secret("policy-held")
        assert denied.value.status_code == 403
        assert denied.value.error.innererror == {"code": "AccessDenied"}
        assert "does not have secrets get permission on key vault" in denied.value.error.message
        vault.access_policies = {"reader": {"get"}}
        assert client.get_secret("policy-held").value == "p"
        vault.allowed_addresses = {"10.1.2.3"}
        with pytest.raises(HttpResponseError) as walled:
            client.get_secret("policy-held")
        assert walled.value.status_code == 403
        assert walled.value.error.innererror == {"code": "ForbiddenByFirewall"}
        assert walled.value.error.message.startswith("Client address is not authorized")
    finally:
        vault.access_policies = vault.allowed_addresses = None
