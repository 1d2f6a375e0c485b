"""An attacker's pass over the console's OIDC sign-in: forged ID tokens, a code from another
sign-in, and a provider that answers discovery and its keys badly (huge, slow, redirecting,
insecure, naming another issuer); then a provider on a private CA (``ca_file``).

Token forgeries go through the whole sign-in (``make_console`` of
:mod:`tests.console.test_auth`); a misbehaving provider is met by the
:class:`~lockgate.console.oidc.OidcClient` alone.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from lockgate.config import load_config
from lockgate.config.console import ConsoleOidc
from lockgate.console import oidc as oidc_module
from lockgate.console.auth import OIDC
from lockgate.console.oidc import DISCOVERY_MAX_AGE, OidcClient, SignInRefused, pkce_pair
from lockgate.tlsgen import write_dev_tls
from tests.console import _oidc_provider as idp
from tests.console.test_attack_auth import console_subapp
from tests.console.test_auth import Console, make_console, provider_answer

__all__ = ["make_console"]  # the fixture, shared with the sign-in tests

_ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC_KEY = ec.generate_private_key(ec.SECP256R1())

Tamper = Callable[[dict[str, Any], dict[str, Any]], str]


def _claims(**changes: Any) -> Tamper:
    def tamper(claims: dict[str, Any], header: dict[str, Any]) -> str:
        return idp.sign({**claims, **changes}, header)

    return tamper


def _without(name: str) -> Tamper:
    def tamper(claims: dict[str, Any], header: dict[str, Any]) -> str:
        return idp.sign({k: v for k, v in claims.items() if k != name}, header)

    return tamper


def _attacker_signed(**header: Any) -> Tamper:
    """Signed with a key of the attacker's, the header pointing wherever it likes."""

    def tamper(claims: dict[str, Any], _: dict[str, Any]) -> str:
        return jwt.encode(claims, _ATTACKER_KEY, algorithm="RS256", headers=header)

    return tamper


def _id_token(issuer: str, audience: str) -> str:
    """A sound ID token (nonce ``n``) of the test provider's key."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": "s", "nonce": "n", "iat": now,
              "exp": now + 60}  # fmt: skip
    return idp.sign(claims, {"kid": idp.KID})


def _attacker_jwk() -> dict[str, Any]:
    return json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(_ATTACKER_KEY.public_key()))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_without("nonce"), "wrong_nonce"),
        (_claims(nonce=""), "wrong_nonce"),
        (_without("sub"), "id_token_missing_claims"),
        (_without("exp"), "id_token_missing_claims"),
        (_claims(nbf=int(time.time()) + 3600), "id_token_not_yet_valid"),
        (_claims(iat=int(time.time()) + 3600), "id_token_not_yet_valid"),
        (lambda claims, header: idp.sign({**claims, "iss": claims["iss"] + "/"}, header),
         "id_token_wrong_issuer"),
        (_claims(aud=idp.CLIENT_ID, azp="another-client"), "id_token_wrong_azp"),
        (_claims(aud=[idp.CLIENT_ID, "graph"]), "id_token_wrong_azp"),
        (_claims(aud=[]), "id_token_missing_claims"),
        (_attacker_signed(kid=idp.KID), "id_token_bad_signature"),
        (_attacker_signed(kid="attacker", jku="https://evil.example/keys"), "unknown_kid"),
        (_attacker_signed(kid="attacker", x5u="https://evil.example/cert.pem"), "unknown_kid"),
        (_attacker_signed(kid=idp.KID, jwk=_attacker_jwk()), "id_token_bad_signature"),
        (lambda claims, header: jwt.encode(claims, _EC_KEY, algorithm="ES256",
                                           headers={"kid": idp.KID}), "unsupported_alg"),
        (lambda claims, header: "a.b.c", "id_token_malformed"),
    ],
    ids=["no-nonce", "empty-nonce", "no-sub", "no-exp", "nbf-future", "iat-future",
         "iss-trailing-slash", "azp-other", "aud-list-no-azp", "aud-empty",
         "kid-of-another-key", "jku", "x5u", "embedded-jwk", "es256-not-pinned", "garbage"],
)  # fmt: skip
async def test_a_forged_id_token_is_refused(make_console: Any, tamper: Tamper, reason: str) -> None:
    c: Console = await make_console()
    c.provider.user["roles"] = ["Lockgate.Admin"]
    c.provider.tamper = tamper
    r = await c.oidc_sign_in()
    assert r.status == 403
    assert not await c.signed_in()
    assert c.audit.records[-1].reason == reason


async def test_a_token_valid_for_long_still_signs_in_for_the_session_ttl_only(
    make_console: Any,
) -> None:
    c: Console = await make_console(session_ttl=0.5)
    c.provider.tamper = _claims(exp=int(time.time()) + 10 * 365 * 86400)
    assert (await c.oidc_sign_in()).status == 200
    assert await c.signed_in()
    await asyncio.sleep(0.7)
    assert not await c.signed_in()


async def test_a_code_from_another_sign_in_is_refused(make_console: Any) -> None:
    """Code injection: the attacker's own code pasted into the victim's callback (with the
    victim's state) fails PKCE at the provider and the nonce here."""
    c: Console = await make_console()
    victim = await c.client.get("/console/auth/start", allow_redirects=False)
    victim_back = parse_qs((await provider_answer(victim.headers["Location"])).query)
    async with aiohttp.ClientSession() as attacker:  # another browser's sign-in
        started = await attacker.get(c.client.make_url("/console/auth/start"),
                                     allow_redirects=False)  # fmt: skip
        attacker_back = parse_qs((await provider_answer(started.headers["Location"])).query)
    r = await c.client.get(
        "/console/auth/callback",
        params={"code": attacker_back["code"][0], "state": victim_back["state"][0]},
    )
    assert r.status == 403 and c.audit.records[-1].reason == "token_refused"
    assert not await c.signed_in()


# -- a provider that answers badly -----------------------------------------------------------
class BadProvider:
    """Discovery and keys answered by ``discovery`` / ``keys`` (a test sets them)."""

    def __init__(self) -> None:
        self.url = ""
        self.discovery: Callable[[BadProvider], Any] = lambda p: web.json_response(p.doc())
        self.keys: Callable[[BadProvider], Any] = lambda p: web.json_response({"keys": []})
        self.fetches = 0

    def doc(self, **changes: Any) -> dict[str, Any]:
        return {"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/keys",
                **changes}  # fmt: skip

    def app(self) -> web.Application:
        async def discovery(_: web.Request) -> web.StreamResponse:
            self.fetches += 1
            answer = self.discovery(self)
            return await answer if asyncio.iscoroutine(answer) else answer  # type: ignore[no-any-return]

        async def keys(_: web.Request) -> web.StreamResponse:
            answer = self.keys(self)
            return await answer if asyncio.iscoroutine(answer) else answer  # type: ignore[no-any-return]

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/keys", keys)
        return app


@pytest.fixture
async def bad_provider() -> AsyncIterator[tuple[BadProvider, OidcClient]]:
    provider = BadProvider()
    server = TestServer(provider.app())
    await server.start_server()
    provider.url = str(server.make_url("")).rstrip("/")
    client = OidcClient(ConsoleOidc(issuer=provider.url, client_id="c"), "http://127.0.0.1/cb")
    yield provider, client
    await client.close()
    await server.close()


async def _slow(provider: BadProvider) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response(provider.doc())


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (lambda p: web.json_response({**p.doc(), "pad": "x" * 600_000}), "discovery_failed"),
        (lambda p: _redirect("https://evil.example/.well-known/openid-configuration"),
         "discovery_failed"),
        (_slow, "discovery_failed"),
        (lambda p: web.Response(text="<html>not json</html>"), "discovery_failed"),
        (lambda p: web.json_response(["a list"]), "discovery_failed"),
        (lambda p: web.Response(text="[" * 100_000), "discovery_failed"),
        (lambda p: web.json_response(p.doc(issuer="https://evil.example")),
         "discovery_wrong_issuer"),
        (lambda p: web.json_response(p.doc(issuer=None)), "discovery_wrong_issuer"),
        (lambda p: web.json_response(p.doc(jwks_uri="http://evil.example/keys")),
         "discovery_insecure"),
        (lambda p: web.json_response(p.doc(token_endpoint="http://evil.example/token")),
         "discovery_insecure"),
        (lambda p: web.json_response(p.doc(authorization_endpoint=None)),
         "discovery_insecure"),
    ],
    ids=["huge", "redirect", "slow", "html", "not-an-object", "deep", "other-issuer",
         "no-issuer", "jwks-http-off-host", "token-http-off-host", "no-endpoint"],
)  # fmt: skip
async def test_a_bad_discovery_answer_refuses_the_sign_in(
    bad_provider: tuple[BadProvider, OidcClient], monkeypatch: pytest.MonkeyPatch,
    answer: Any, reason: str,
) -> None:  # fmt: skip
    monkeypatch.setattr(oidc_module, "_TIMEOUT", aiohttp.ClientTimeout(total=0.5))
    provider, client = bad_provider
    provider.discovery = answer
    began = time.monotonic()
    with pytest.raises(SignInRefused) as refused:
        await client.authorize_url(state="s", nonce="n", challenge=pkce_pair()[1])
    assert refused.value.reason == reason
    assert time.monotonic() - began < 3


@pytest.mark.parametrize(
    "keys",
    [
        lambda p: web.json_response({"keys": [{"kty": "oct", "kid": idp.KID, "k": "c2VjcmV0"}]}),
        lambda p: web.json_response(
            {"keys": [{**_attacker_jwk(), "kid": idp.KID, "d": "cHJpdmF0ZQ"}]}
        ),
        lambda p: web.json_response({"keys": [{}], "pad": "x" * 600_000}),
        lambda p: _redirect("https://evil.example/keys"),
        lambda p: web.json_response({"keys": "not a list"}),
    ],
    ids=["symmetric-key", "private-key", "huge", "redirect", "not-a-list"],
)
async def test_a_bad_key_set_verifies_nothing(
    bad_provider: tuple[BadProvider, OidcClient], keys: Any
) -> None:
    provider, client = bad_provider
    provider.keys = keys
    token = _id_token(provider.url, "c")
    with pytest.raises(SignInRefused) as refused:
        await client.verify(token, nonce="n")
    assert refused.value.reason == "unknown_kid"


async def test_a_key_of_another_type_than_the_tokens_alg_is_refused(
    bad_provider: tuple[BadProvider, OidcClient],
) -> None:
    """The kid names an EC key; the token says RS256: no key-type confusion."""
    provider, client = bad_provider
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(_EC_KEY.public_key()))
    provider.keys = lambda p: web.json_response({"keys": [{**ec_jwk, "kid": idp.KID}]})
    token = _id_token(provider.url, "c")
    with pytest.raises(SignInRefused) as refused:
        await client.verify(token, nonce="n")
    assert refused.value.reason == "key_mismatch"


@pytest.mark.parametrize(
    "issuer",
    ["http://idp.example.com", "http://127.0.0.1.evil.example", "http://localhost.evil.example",
     "http://evil.example@127.0.0.1.evil.example", "ftp://idp.example.com", "idp.example.com",
     "//idp.example.com"],
)  # fmt: skip
def test_an_issuer_in_clear_off_this_machine_is_refused(issuer: str) -> None:
    with pytest.raises(ValidationError):
        ConsoleOidc(issuer=issuer, client_id="c")


# -- a provider on a private CA --------------------------------------------------------------
@pytest.fixture
async def private_ca_provider(tmp_path: Path) -> AsyncIterator[tuple[idp.Provider, Path]]:
    paths = write_dev_tls(tmp_path / "tls")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(paths["cert"], paths["key"])
    provider = idp.Provider()
    server = TestServer(provider.app())
    await server.start_server(ssl=server_tls)
    provider.url = f"https://127.0.0.1:{server.port}"
    yield provider, paths["ca"]
    await server.close()


async def test_a_provider_on_a_private_ca_signs_in_with_ca_file(
    private_ca_provider: tuple[idp.Provider, Path],
) -> None:
    """Discovery, the authorize URL, the code exchange and the keys all over TLS checked
    against ``ca_file`` alone."""
    provider, ca = private_ca_provider
    redirect = "https://127.0.0.1/console/auth/callback"
    settings = ConsoleOidc(issuer=provider.url, client_id=idp.CLIENT_ID, ca_file=ca)
    client = OidcClient(settings, redirect)
    try:
        verifier, challenge = pkce_pair()
        target = await client.authorize_url(state="st", nonce="nn", challenge=challenge)
        async with (
            aiohttp.ClientSession() as browser,
            browser.get(target, allow_redirects=False,
                        ssl=ssl.create_default_context(cafile=str(ca))) as answer,
        ):  # fmt: skip
            code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
        who = await client.sign_in(code=code, verifier=verifier, nonce="nn")
        assert (who.subject, who.role) == ("oid-ann", "operator")
    finally:
        await client.close()


async def test_without_ca_file_a_private_ca_is_not_trusted(
    private_ca_provider: tuple[idp.Provider, Path], tmp_path: Path
) -> None:
    provider, _ = private_ca_provider
    client = OidcClient(ConsoleOidc(issuer=provider.url, client_id=idp.CLIENT_ID), "https://x/cb")
    other_ca = write_dev_tls(tmp_path / "other")["ca"]
    trusting_another = OidcClient(
        ConsoleOidc(issuer=provider.url, client_id=idp.CLIENT_ID, ca_file=other_ca), "https://x/cb"
    )
    unreadable = OidcClient(
        ConsoleOidc(issuer=provider.url, client_id=idp.CLIENT_ID, ca_file=tmp_path / "none.pem"),
        "https://x/cb",
    )
    for refused_client in (client, trusting_another, unreadable):
        try:
            with pytest.raises(SignInRefused) as refused:
                await refused_client.authorize_url(state="s", nonce="n", challenge="c")
            assert refused.value.reason == "discovery_failed"
        finally:
            await refused_client.close()


async def test_keys_fetched_once_discovery_went_stale_do_not_hang(make_console: Any) -> None:
    """Discovery an hour old when the keys must be fetched again (the code exchange
    straddling the hour): both share one lock, and the sign-in must not wait on itself."""
    c: Console = await make_console()
    assert (await c.oidc_sign_in()).status == 200
    client = console_subapp(c)[OIDC]
    assert client is not None
    client._provider_at -= DISCOVERY_MAX_AGE
    client._keys_ok_at -= DISCOVERY_MAX_AGE
    token = _id_token(c.provider.url, idp.CLIENT_ID)
    claims = await asyncio.wait_for(client.verify(token, nonce="n"), timeout=5)
    assert claims["sub"] == "s"


def test_a_relative_ca_file_is_read_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "lockgate.yaml").write_text(
        "console:\n  oidc:\n    issuer: https://idp.example.com\n    client_id: c\n"
        "    ca_file: certs/idp-ca.pem\n"
    )
    config = load_config(tmp_path / "lockgate.yaml")
    assert config.console.oidc is not None
    assert config.console.oidc.ca_file == tmp_path / "certs" / "idp-ca.pem"
