"""The test Vault against the real ``hvac`` client (the oracle for the stand-in): AppRole and
JWT logins, KV v2 reads and writes with versions, token renewal and its max TTL, namespaces,
and the errors the service answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from lockgate.demo.standins.entra.thread import LoopThread
from lockgate.demo.standins.vault import FakeVault, JwtRole
from lockgate.demo.standins.vault import start as start_vault

hvac = pytest.importorskip("hvac")

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def _jwks(request: web.Request) -> web.Response:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
    return web.json_response({"keys": [jwk | {"kid": "k1", "alg": "RS256"}]})


async def _start_jwks() -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/jwks", _jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.fixture(scope="module")
def vault() -> Iterator[FakeVault]:
    lt = LoopThread()
    keys = lt.serve(_start_jwks())
    fake = FakeVault(
        jwks_url=f"http://127.0.0.1:{keys.addresses[0][1]}/jwks",
        bound_issuer="https://lockgate.example",
        policies={"app-read": [("secret/data/app/*", {"read"})],
                  "app-write": [("secret/data/app/*", {"read", "create", "update"}),
                                ("secret/metadata/app/*", {"read"})],
                  "app-admin": [("secret/data/app/*", {"read", "create", "update", "delete"}),
                                ("secret/metadata/app/*", {"read"}),
                                ("secret/delete/app/*", {"update"}),
                                ("secret/undelete/app/*", {"update"}),
                                ("secret/destroy/app/*", {"update"})]},
        namespaces={"", "team-a"},
    )  # fmt: skip
    lt.serve(start_vault(fake))
    yield fake
    lt.stop()


def _approle(vault: FakeVault, policies: list[str], **ttls: int) -> Any:
    role_id, secret_id = vault.add_approle(
        f"r{len(vault.approle_roles)}", policies=policies, **ttls
    )
    client = hvac.Client(url=vault.base_url)
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    return client


def test_approle_login_and_kv_v2_versions(vault: FakeVault) -> None:
    writer = _approle(vault, ["app-write"])
    assert writer.is_authenticated()
    writer.secrets.kv.v2.create_or_update_secret(path="app/db", secret={"password": "one"})
    writer.secrets.kv.v2.create_or_update_secret(path="app/db", secret={"password": "two"})
    reader = _approle(vault, ["app-read"])
    latest = reader.secrets.kv.v2.read_secret_version(path="app/db", raise_on_deleted_version=True)
    assert latest["data"]["data"] == {"password": "two"}
    assert latest["data"]["metadata"]["version"] == 2
    first = reader.secrets.kv.v2.read_secret_version(
        path="app/db", version=1, raise_on_deleted_version=True
    )
    assert first["data"]["data"]["password"] == "one"
    meta = writer.secrets.kv.v2.read_secret_metadata(path="app/db")
    assert meta["data"]["current_version"] == 2


def test_errors_as_the_service_answers(vault: FakeVault) -> None:
    role_id, _ = vault.add_approle("bad", policies=["app-read"])
    client = hvac.Client(url=vault.base_url)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid role or secret ID"):
        client.auth.approle.login(role_id=role_id, secret_id="nope")
    # https://github.com/openbao/openbao/blob/main/builtin/credential/approle/path_login.go:
    # "missing role_id", "invalid role or secret ID" for an unknown one, "missing secret_id".
    for role, secret, said in (("", "x", "missing role_id"), ("unknown", "x", "invalid role"),
                               (role_id, "", "missing secret_id")):  # fmt: skip
        with pytest.raises(hvac.exceptions.InvalidRequest, match=said):
            client.auth.approle.login(role_id=role, secret_id=secret)
    reader = _approle(vault, ["app-read"])
    with pytest.raises(hvac.exceptions.Forbidden, match="permission denied"):
        reader.secrets.kv.v2.read_secret_version(path="other/x", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        reader.secrets.kv.v2.create_or_update_secret(path="app/x", secret={"a": "b"})
    with pytest.raises(hvac.exceptions.InvalidPath):
        reader.secrets.kv.v2.read_secret_version(path="app/none", raise_on_deleted_version=True)


def test_jwt_login_checks_audience_subject_and_issuer(vault: FakeVault) -> None:
    vault.jwt_roles["gw"] = JwtRole(
        bound_audiences=["vault"], bound_subject="lockgate:credential:db",
        bound_claims={"env": ["prod"]}, policies=["app-read"],
    )  # fmt: skip
    now = int(time.time())
    claims = {"iss": "https://lockgate.example", "sub": "lockgate:credential:db", "aud": "vault",
              "iat": now, "exp": now + 300, "env": "prod"}  # fmt: skip

    def login(**changes: Any) -> Any:
        token = jwt.encode(claims | changes, KEY, algorithm="RS256", headers={"kid": "k1"})
        client = hvac.Client(url=vault.base_url)
        client.auth.jwt.jwt_login(role="gw", jwt=token)
        return client

    assert login().is_authenticated()
    # Vault's words, in its order (iss, sub, aud, times, then bound claims). Sources:
    # https://github.com/hashicorp/cap/blob/main/jwt/jwt.go (Validator.Validate) and
    # https://github.com/hashicorp/vault-plugin-auth-jwt/blob/main/path_login.go
    # ("error validating token: %s", "error validating claims: %s").
    for changes, said in (
        ({"aud": "other"}, "error validating token: invalid audience (aud) claim: audience "
         "claim does not match any expected audience"),
        ({"sub": "someone"}, "error validating token: invalid subject (sub) claim"),
        ({"iss": "https://evil.example"}, "error validating token: invalid issuer (iss) claim"),
        ({"env": "dev"}, 'error validating claims: claim "env" does not match any associated '
         "bound claim values"),
        ({"exp": now - 3600}, "error validating token: invalid expiration time (exp) claim: "
         "token is expired"),
        ({"nbf": now + 3600}, "error validating token: invalid not before (nbf) claim: token "
         "not yet valid"),
        ({"iat": now + 3600, "nbf": now, "exp": now + 7200},
         "error validating token: invalid issued at (iat) claim: token issued in the future"),
        ({"iss": "https://evil.example", "sub": "someone"}, "invalid issuer"),  # iss first
    ):  # fmt: skip
        with pytest.raises(hvac.exceptions.InvalidRequest) as refused:
            login(**changes)
        assert said in refused.value.json["errors"][0]
    # exp is optional for Vault: iat plus the 150 s expiration leeway stands for it.
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    token = jwt.encode(no_exp, KEY, algorithm="RS256", headers={"kid": "k1"})
    hvac.Client(url=vault.base_url).auth.jwt.jwt_login(role="gw", jwt=token)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="missing role"):
        hvac.Client(url=vault.base_url).auth.jwt.jwt_login(role="", jwt=token)


def test_renew_self_is_capped_by_max_ttl(vault: FakeVault) -> None:
    client = _approle(vault, ["app-read"], token_ttl=60, token_max_ttl=90)
    looked = client.auth.token.lookup_self()["data"]
    assert 0 < looked["ttl"] <= 60 and "app-read" in looked["policies"]
    renewed = client.auth.token.renew_self(increment=600)
    assert renewed["auth"]["lease_duration"] <= 90


def test_namespaces_keep_tokens_apart(vault: FakeVault) -> None:
    role_id, secret_id = vault.add_approle("ns", policies=["app-read"])
    vault.put("app/ns", {"value": "in-team-a"}, namespace="team-a")
    client = hvac.Client(url=vault.base_url, namespace="team-a")
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    read = client.secrets.kv.v2.read_secret_version(path="app/ns", raise_on_deleted_version=True)
    assert read["data"]["data"]["value"] == "in-team-a"
    elsewhere = hvac.Client(url=vault.base_url, token=client.token)  # the root namespace
    with pytest.raises(hvac.exceptions.Forbidden):
        elsewhere.secrets.kv.v2.read_secret_version(path="app/ns", raise_on_deleted_version=True)


def test_a_policys_refusal_is_vaults_multierror_text(vault: FakeVault) -> None:
    # Vault appends the ACL's refusal to a multierror and answers its text; a request with
    # no token or an unknown one is refused with the bare error. Sources:
    # https://github.com/openbao/openbao/blob/main/vault/request_handling.go (checkToken:
    # multierror.Append(retErr, logical.ErrPermissionDenied); fetchACLTokenEntryAndEntity:
    # bare logical.ErrPermissionDenied), and the JSON Vault 1.5 answered in
    # https://github.com/rajanadar/VaultSharp/issues/176:
    # {"errors":["1 error occurred:\n\t* permission denied\n\n"]}
    reader = _approle(vault, ["app-read"])
    with pytest.raises(hvac.exceptions.Forbidden) as denied:
        reader.secrets.kv.v2.read_secret_version(path="other/x", raise_on_deleted_version=True)
    assert denied.value.json["errors"] == ["1 error occurred:\n\t* permission denied\n\n"]
    stranger = hvac.Client(url=vault.base_url, token="hvs.unknown")
    with pytest.raises(hvac.exceptions.Forbidden) as unknown:
        stranger.secrets.kv.v2.read_secret_version(path="app/x", raise_on_deleted_version=True)
    assert unknown.value.json["errors"] == ["permission denied"]


def test_a_deleted_latest_version_is_a_404_with_its_metadata(vault: FakeVault) -> None:
    # KV v2: a soft-deleted (or destroyed) version reads as 404 whose body holds its
    # metadata and data null; reading the latest does not fall back to an older version.
    # Sources: https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2 ("Delete latest
    # version of secret": DELETE /:mount/data/:path, "Undelete secret versions", "Destroy
    # secret versions": POST /:mount/{undelete,destroy}/:path {"versions": [...]}), OpenBao's
    # builtin/logical/kv/path_data.go (pathDataRead: RespondWithStatusCode(resp, 404)), and
    # https://github.com/hashicorp/vault/issues/4935 (no automatic retrieval of the latest
    # version still there). hvac reads such a body with raise_on_deleted_version=False.
    admin = _approle(vault, ["app-admin"])
    kv = admin.secrets.kv.v2
    kv.create_or_update_secret(path="app/rotating", secret={"password": "one"})
    kv.create_or_update_secret(path="app/rotating", secret={"password": "two"})
    kv.delete_latest_version_of_secret(path="app/rotating")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(path="app/rotating", raise_on_deleted_version=True)
    deleted = kv.read_secret_version(path="app/rotating", raise_on_deleted_version=False)
    assert deleted["data"]["data"] is None
    assert deleted["data"]["metadata"]["version"] == 2
    assert deleted["data"]["metadata"]["deletion_time"] != ""
    assert deleted["data"]["metadata"]["destroyed"] is False
    older = kv.read_secret_version(path="app/rotating", version=1, raise_on_deleted_version=True)
    assert older["data"]["data"] == {"password": "one"}
    meta = kv.read_secret_metadata(path="app/rotating")["data"]
    assert meta["current_version"] == 2 and meta["versions"]["2"]["deletion_time"] != ""
    assert set(meta["versions"]["1"]) == {"created_time", "deletion_time", "destroyed"}
    kv.undelete_secret_versions(path="app/rotating", versions=[2])
    back = kv.read_secret_version(path="app/rotating", raise_on_deleted_version=True)
    assert back["data"]["data"] == {"password": "two"}
    kv.destroy_secret_versions(path="app/rotating", versions=[2])
    with pytest.raises(hvac.exceptions.InvalidPath) as destroyed:
        kv.read_secret_version(path="app/rotating", raise_on_deleted_version=True)
    assert destroyed.value.json["data"]["metadata"]["destroyed"] is True
    kv.undelete_secret_versions(path="app/rotating", versions=[2])  # destroyed stays so
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(path="app/rotating", raise_on_deleted_version=False)
    vault.delete("app/rotating", 1, namespace="")  # the operator's `vault kv delete`
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(path="app/rotating", version=1, raise_on_deleted_version=True)
