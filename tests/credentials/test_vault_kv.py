"""A field of a HashiCorp Vault / OpenBao KV v2 secret, read through the broker after an
AppRole or JWT login, against the test Vault: rotation, namespaces, token renewal and
re-login, refusals that say what to grant and never carry a secret."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.demo.standins.vault import FakeVault, JwtRole
from lockgate.demo.standins.vault import start as start_vault
from lockgate.errors import CredentialError

READ_ORDERS = [("secret/data/orders/*", {"read"})]
ISSUER = "https://lockgate.example"


@pytest.fixture
async def vault() -> AsyncIterator[FakeVault]:
    v = FakeVault(policies={"orders-read": READ_ORDERS}, namespaces={"", "team-a"})
    runner = await start_vault(v)
    yield v
    await runner.cleanup()


class Issuer:
    """Lockgate's signing key as Vault's jwt auth sees it: a JWKS at a URL."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.url = ""
        self.signed: list[dict[str, Any]] = []

    def sign(self, claims: dict[str, Any], alg: str) -> str:
        self.signed.append(claims)
        return jwt.encode(claims, self.key, algorithm=alg, headers={"kid": "k1"})

    async def jwks(self, request: web.Request) -> web.Response:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return web.json_response({"keys": [jwk | {"kid": "k1", "alg": "RS256", "use": "sig"}]})


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    i = Issuer()
    app = web.Application()
    app.router.add_get("/jwks", i.jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    i.url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
    yield i
    await runner.cleanup()


def _config(tmp_path: Path, vault: FakeVault, auth: dict[str, Any], **kv: Any) -> LockgateConfig:
    return LockgateConfig.model_validate({
        "data_dir": str(tmp_path), "issuer": ISSUER,
        "resources": [{"name": "orders-api", "kind": "http", "upstream": "http://127.0.0.1:1",
                       "credential": "orders-key"}],
        "credentials": [{"name": "orders-key", "type": "vault_kv", "address": vault.base_url,
                         "path": "orders/api", "auth": auth, **kv}],
    })  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _broker(
    tmp_path: Path,
    config: LockgateConfig,
    *,
    clock: Callable[[], float] = time.time,
    signer: Any = None,
) -> CredentialBroker:
    store = CredentialStore(tmp_path / "c.db", b"k" * 32)
    return CredentialBroker(config, store, clock=clock, assertion_signer=signer)


async def test_approle_secret_id_file_rotation_and_overlap(
    tmp_path: Path, vault: FakeVault
) -> None:
    role_id, secret_id = vault.add_approle("gateway", policies=["orders-read"])
    secret_id_file = tmp_path / "secret-id"
    secret_id_file.write_text(secret_id + "\n")
    vault.put("orders/api", {"value": "key-one", "other": "x"})
    clock = Clock()
    auth = {"method": "approle", "role_id": role_id, "secret_id_file": str(secret_id_file)}
    broker = _broker(tmp_path, _config(tmp_path, vault, auth, ttl=60, overlap=120), clock=clock)
    try:
        first = await broker.upstream_secret("orders-key")
        assert first is not None and first.value == "key-one"
        assert broker.vault_status()["orders-key"].vault_version == "1"
        vault.put("orders/api", {"value": "key-two"})
        clock.offset = 61
        second = await broker.upstream_secret("orders-key")
        assert (
            second.value == "key-two" and broker.vault_status()["orders-key"].vault_version == "2"
        )
        fallback = await broker.fallback_secret("orders-key", second)
        assert fallback is not None and fallback.value == "key-one"
        assert vault.logins == 1  # the token lives an hour: no new login per fetch
        paths = [r.path for r in vault.requests]
        assert paths.count("/v1/auth/approle/login") == 1
        assert paths.count("/v1/secret/data/orders/api") == 2
    finally:
        await broker.close()


async def test_approle_secret_id_from_the_store(tmp_path: Path, vault: FakeVault) -> None:
    role_id, secret_id = vault.add_approle("gateway", policies=["orders-read"])
    vault.put("orders/api", {"password": "pw-one"})
    auth = {"method": "approle", "role_id": role_id}
    broker = _broker(tmp_path, _config(tmp_path, vault, auth, field="password"))
    try:
        with pytest.raises(CredentialError, match="lockgate creds set orders-key"):
            await broker.upstream_secret("orders-key")
        broker._store.set("orders-key", "wrong-secret-id")
        broker._vaults.clear()
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        text = str(err.value)
        assert "HTTP 400, invalid role or secret ID" in text and "wrong-secret-id" not in text
        broker._store.rotate("orders-key", secret_id)
        broker._vaults.clear()
        assert (await broker.upstream_secret("orders-key")).value == "pw-one"
    finally:
        await broker.close()


async def test_token_renewed_then_logged_in_again(tmp_path: Path, vault: FakeVault) -> None:
    role_id, secret_id = vault.add_approle(
        "gateway", policies=["orders-read"], token_ttl=30, token_max_ttl=45
    )
    (tmp_path / "sid").write_text(secret_id)
    vault.put("orders/api", {"value": "key-one"})
    clock = Clock()
    vault.clock = clock
    auth = {"method": "approle", "role_id": role_id, "secret_id_file": str(tmp_path / "sid")}
    broker = _broker(tmp_path, _config(tmp_path, vault, auth, ttl=5), clock=clock)
    try:
        await broker.upstream_secret("orders-key")
        clock.offset = 21  # two thirds of the 30 s lease gone: renewed
        await broker.upstream_secret("orders-key")
        paths = [r.path for r in vault.requests]
        assert paths.count("/v1/auth/token/renew-self") == 1 and vault.logins == 1
        # The token's max TTL caps the next renewal: a fresh login instead.
        clock.offset = 45
        await broker.upstream_secret("orders-key")
        assert vault.logins == 2
        # Revoked behind our back: a 403 on the read logs in again, once.
        vault.revoke_all_tokens()
        clock.offset = 51
        assert (await broker.upstream_secret("orders-key")).value == "key-one"
        assert vault.logins == 3
    finally:
        await broker.close()


async def test_policy_without_read_and_missing_field(tmp_path: Path, vault: FakeVault) -> None:
    role_id, secret_id = vault.add_approle("gateway", policies=["orders-read"])
    (tmp_path / "sid").write_text(secret_id)
    vault.put("billing/api", {"value": "x"})
    vault.put("orders/api", {"token": "t"})
    auth = {"method": "approle", "role_id": role_id, "secret_id_file": str(tmp_path / "sid")}
    broker = _broker(tmp_path, _config(tmp_path, vault, auth, path="billing/api"))
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        assert "HTTP 403, permission denied" in str(err.value)
        assert "allow read on secret/data/billing/api" in str(err.value)
    finally:
        await broker.close()
    broker = _broker(tmp_path, _config(tmp_path, vault, auth))
    try:
        with pytest.raises(CredentialError, match=r"no string field 'value' \(fields: token\)"):
            await broker.upstream_secret("orders-key")
    finally:
        await broker.close()


async def test_pinned_version_and_namespace(tmp_path: Path, vault: FakeVault) -> None:
    role_id, secret_id = vault.add_approle("gateway", policies=["orders-read"])
    (tmp_path / "sid").write_text(secret_id)
    vault.put("orders/api", {"value": "ns-one"}, namespace="team-a")
    vault.put("orders/api", {"value": "ns-two"}, namespace="team-a")
    auth = {"method": "approle", "role_id": role_id, "secret_id_file": str(tmp_path / "sid")}
    config = _config(tmp_path, vault, auth, namespace="team-a", version=1)
    broker = _broker(tmp_path, config)
    try:
        assert (await broker.upstream_secret("orders-key")).value == "ns-one"
        assert {r.namespace for r in vault.requests} == {"team-a"}
        assert vault.requests[-1].path == "/v1/secret/data/orders/api"
    finally:
        await broker.close()


async def test_jwt_login_signed_by_lockgate(
    tmp_path: Path, vault: FakeVault, issuer: Issuer
) -> None:
    vault.jwks_url, vault.bound_issuer = issuer.url, ISSUER
    vault.jwt_roles["lockgate"] = JwtRole(
        bound_audiences=["vault.example"], bound_subject="lockgate:credential:orders-key",
        policies=["orders-read"],
    )  # fmt: skip
    vault.put("orders/api", {"value": "key-one"})
    auth = {"method": "jwt", "role": "lockgate", "audience": "vault.example"}
    config = _config(tmp_path, vault, auth)
    assert "RS256" in config.signing_algorithms()  # a key is kept for the login's JWTs
    broker = _broker(tmp_path, config, signer=issuer.sign)
    try:
        assert (await broker.upstream_secret("orders-key")).value == "key-one"
        claims = issuer.signed[-1]
        assert claims["iss"] == ISSUER and claims["aud"] == "vault.example"
        assert claims["exp"] - claims["iat"] == 300
    finally:
        await broker.close()
    vault.jwt_roles["lockgate"].bound_subject = "someone-else"
    broker = _broker(tmp_path, config, signer=issuer.sign)
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        assert "jwt login (auth/jwt, role lockgate)" in str(err.value)
        assert "HTTP 400, error validating token: invalid subject (sub) claim" in str(err.value)
    finally:
        await broker.close()
    broker = _broker(tmp_path, config)  # no signing keys in this process
    try:
        with pytest.raises(CredentialError, match="needs the gateway's signing keys"):
            await broker.upstream_secret("orders-key")
    finally:
        await broker.close()


async def test_vault_down_then_grace(tmp_path: Path, vault: FakeVault) -> None:
    role_id, secret_id = vault.add_approle("gateway", policies=["orders-read"])
    (tmp_path / "sid").write_text(secret_id)
    vault.put("orders/api", {"value": "key-one"})
    clock = Clock()
    auth = {"method": "approle", "role_id": role_id, "secret_id_file": str(tmp_path / "sid")}
    broker = _broker(tmp_path, _config(tmp_path, vault, auth, ttl=60, grace=100), clock=clock)
    try:
        await broker.upstream_secret("orders-key")
        vault.available = False
        clock.offset = 61
        assert (await broker.upstream_secret("orders-key")).value == "key-one"
        clock.offset = 161
        with pytest.raises(CredentialError, match="HTTP 503"):
            await broker.upstream_secret("orders-key")
    finally:
        await broker.close()


async def test_a_refused_login_names_no_role_id_nor_secret_id(
    tmp_path: Path, vault: FakeVault
) -> None:
    role_id, secret_id = vault.add_approle("gateway", policies=["orders-read"])
    (tmp_path / "sid").write_text("not-the-secret-id")
    auth = {"method": "approle", "role_id": role_id, "secret_id_file": str(tmp_path / "sid")}
    broker = _broker(tmp_path, _config(tmp_path, vault, auth))
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        text = str(err.value)
        assert text == (
            "credential 'orders-key': Vault refused the approle login (auth/approle) "
            "(HTTP 400, invalid role or secret ID): check the role and its bindings"
        )
        assert role_id not in text and secret_id not in text
    finally:
        await broker.close()
