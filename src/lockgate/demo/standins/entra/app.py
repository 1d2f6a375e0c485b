"""An Entra ID (v2.0) token endpoint for apps (the client-credentials grant) and sign-in of
people (the authorization code flow with PKCE, :mod:`.authcode`), written from Microsoft's
public protocol reference.

Routes (tenant = the one configured; any other tenant is 400 ``invalid_tenant``):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` — OIDC discovery (what MSAL reads
  with ``disable_instance_discovery=True``);
- ``GET /{tenant}/discovery/v2.0/keys`` — JWKS of the RS256 signing key;
- ``GET /{tenant}/oauth2/v2.0/authorize``, ``POST /{tenant}/login`` (the sign-in form),
  ``GET /{tenant}/oauth2/v2.0/logout`` and ``grant_type=authorization_code`` at the token
  endpoint: apps registered with :meth:`FakeEntra.register_app`, people added with
  :meth:`FakeEntra.add_user` (see :mod:`.authcode` for what is checked);
- ``POST /{tenant}/oauth2/v2.0/token`` — ``grant_type=client_credentials`` with
  ``scope=<resource>/.default`` and either ``client_secret`` or a ``client_assertion``
  (``urn:ietf:params:oauth:client-assertion-type:jwt-bearer``): an RS256/PS256 JWT whose
  ``x5t`` (or ``x5t#S256``) names a certificate registered for the client, ``aud`` the token
  endpoint, ``iss`` = ``sub`` = client id, unexpired, ``jti`` not seen before.

  A ``client_assertion`` whose ``iss`` and ``sub`` are not the client id (an outside
  issuer's token, even one whose header carries ``x5t``) is a workload identity federation
  assertion instead, checked against the app's federated identity
  credentials (see :mod:`.federation`; the issuer's discovery is fetched over https, trusting
  ``federation_ca``).

Issued access tokens are RS256 JWTs: ``aud`` the resource, ``iss``
``https://sts.windows.net/{tenant}/``, ``appid``/``azp`` the client, ``tid``, ``exp``.
Secrets, certificates and federated identity credentials can be added and withdrawn while
running (rotation). ``token_requests`` records each token request (secrets, assertions,
codes, code verifiers and refresh tokens replaced by ``<redacted>``; an assertion's header
and claims kept, which are not secret).

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lockgate.demo.standins._serving import serve_stand_in

from .authcode import AuthCodeFlow
from .directory import RegisteredApp, TestUser, oauth_error
from .federation import (
    ENTRA_EXCHANGE_AUDIENCE,
    MAX_FEDERATED_CREDENTIALS,
    FederatedIdentityCredential,
    FederationRefusal,
    check_federated_assertion,
)
from .issuer_keys import IssuerKeys

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_REDACTED = ("client_secret", "client_assertion", "code", "code_verifier", "refresh_token")


@dataclass
class TokenRequest:
    """One token request as received, without its secret or assertion."""

    form: dict[str, str]
    assertion_header: dict[str, Any] | None
    assertion_claims: dict[str, Any] | None
    status: int = 0
    error: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class FakeEntra:
    tenant: str = "contoso-tenant"
    token_ttl: int = 3600
    client_secrets: dict[str, set[str]] = field(default_factory=dict)
    client_certs: dict[str, list[x509.Certificate]] = field(default_factory=dict)
    base_url: str = ""
    token_calls: int = 0
    refusals: list[str] = field(default_factory=list)
    issued: list[dict[str, Any]] = field(default_factory=list)  # claims of issued tokens
    federated_credentials: dict[str, list[FederatedIdentityCredential]] = field(
        default_factory=dict
    )
    federation_ca: Path | str | None = None  # CA the outside issuers' https is checked with
    clock_skew: int = 300  # seconds of leeway on an assertion's exp and nbf
    max_assertion_lifetime: int = 24 * 3600
    token_requests: list[TokenRequest] = field(default_factory=list)
    # The CA a client of this endpoint trusts when it is served over https (resource servers
    # that check its tokens fetch the key set with it): set by whoever serves it.
    ca_file: Path | str | None = None

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)
        self._jtis: set[str] = set()
        self.issuer_keys = IssuerKeys(self.federation_ca)
        self.sign_in = AuthCodeFlow(self)

    # -- sign-in of people (the authorization code flow, see :mod:`.authcode`) -------------
    def register_app(
        self,
        client_id: str,
        redirect_uris: list[str] | tuple[str, ...],
        secret: str | None = None,
        app_roles: list[str] | tuple[str, ...] | None = None,
        *,
        require_pkce: bool = True,
        name: str = "",
    ) -> RegisteredApp:
        """An app that signs people in: confidential with ``secret`` (or a certificate in
        ``client_certs``), public without; ``app_roles`` the role values it defines (None:
        every role a user holds reaches its ``roles`` claim)."""
        return self.sign_in.register_app(
            client_id, redirect_uris, secret, app_roles, require_pkce=require_pkce, name=name
        )

    def add_user(
        self,
        username: str,
        password: str,
        *,
        name: str | None = None,
        roles: list[str] | tuple[str, ...] = (),
        oid: str | None = None,
    ) -> TestUser:
        """A person of the tenant; ``roles`` are the app role values assigned to them."""
        return self.sign_in.add_user(username, password, name=name, roles=roles, oid=oid)

    def revoke_sign_in_sessions(self, username: str) -> int:
        """End the person's browser sessions and refresh tokens (Graph's
        ``revokeSignInSessions``); how many refresh tokens there were."""
        return self.sign_in.revoke_sign_in_sessions(username)

    # -- federated identity credentials (what ``az ad app federated-credential`` manages) --
    def add_federated_credential(
        self,
        client_id: str,
        *,
        issuer: str,
        subject: str,
        audiences: list[str] | tuple[str, ...] = (ENTRA_EXCHANGE_AUDIENCE,),
        name: str | None = None,
    ) -> FederatedIdentityCredential:
        """Trust ``issuer``'s tokens for ``subject`` as the app ``client_id``."""
        held = self.federated_credentials.setdefault(client_id, [])
        if len(held) >= MAX_FEDERATED_CREDENTIALS:
            raise ValueError(
                f"an application holds at most {MAX_FEDERATED_CREDENTIALS} federated credentials"
            )
        credential = FederatedIdentityCredential(
            name or f"fic-{len(held) + 1}-{secrets.token_hex(3)}", issuer, subject,
            tuple(audiences),
        )  # fmt: skip
        if any(c.name == credential.name for c in held):
            raise ValueError(f"the app already has a federated credential named {name!r}")
        if any((c.issuer, c.subject) == (issuer, subject) for c in held):
            raise ValueError("issuer and subject are already trusted by another credential")
        held.append(credential)
        return credential

    def remove_federated_credential(self, client_id: str, name: str) -> None:
        held = self.federated_credentials.get(client_id, [])
        kept = [c for c in held if c.name != name]
        if len(kept) == len(held):
            raise KeyError(name)
        self.federated_credentials[client_id] = kept

    def trust_issuer_ca(self, ca_file: Path | str | None) -> None:
        """Check outside issuers' https with ``ca_file`` from now on (keys fetched anew)."""
        self.federation_ca = ca_file
        self.issuer_keys = IssuerKeys(ca_file)

    @property
    def issuer(self) -> str:
        return f"https://sts.windows.net/{self.tenant}/"

    @property
    def authority(self) -> str:
        return self.base_url

    @property
    def jwks_uri(self) -> str:
        return f"{self.base_url}/{self.tenant}/discovery/v2.0/keys"

    def principal_id(self, client_id: str) -> str:
        """The object id (``oid``) of the app's service principal, a stable GUID."""
        return str(uuid.UUID(bytes=hashlib.sha256(client_id.encode()).digest()[:16]))

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/{self.tenant}/oauth2/v2.0/token"

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """Check an access token this endpoint issued (what an upstream such as ARM does)."""
        return jwt.decode(
            token, self.key.public_key(), algorithms=["RS256"], audience=audience,
            issuer=self.issuer,
        )  # fmt: skip

    # -- handlers ------------------------------------------------------------------------
    def _tenant_ok(self, request: web.Request) -> bool:
        return request.match_info["tenant"] == self.tenant

    async def discovery(self, request: web.Request) -> web.Response:
        if not self._tenant_ok(request):
            return _err(400, "invalid_tenant", "AADSTS90002: tenant not found")
        base = f"{self.base_url}/{self.tenant}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post", "private_key_jwt", "client_secret_basic"],
                "response_modes_supported": ["query", "fragment", "form_post"],
                "response_types_supported": ["code", "id_token", "token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "claims_supported": [
                    "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "name",
                    "preferred_username", "email", "oid", "tid", "roles", "ver"],
                "request_uri_parameter_supported": False,
                "tenant_region_scope": "EU",
            }
        )  # fmt: skip

    async def keys(self, request: web.Request) -> web.Response:
        nums = self.key.public_key().public_numbers()
        jwk = {
            "kty": "RSA", "use": "sig", "kid": self.kid, "alg": "RS256",
            "n": _b64(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
            "e": _b64(nums.e.to_bytes(3, "big")),
        }  # fmt: skip
        return web.json_response({"keys": [jwk]})

    async def token(self, request: web.Request) -> web.Response:
        self.token_calls += 1
        form = await request.post()
        record = self._record(form)
        answer = await self._token(request, form)
        record.status = answer.status
        if answer.status != 200 and isinstance(answer.body, bytes):
            record.error = json.loads(answer.body).get("error", "")  # this request's own
        return answer

    async def _token(self, request: web.Request, form: Any) -> web.Response:
        if not self._tenant_ok(request):
            return self._refuse(400, "invalid_tenant", "tenant not found")
        if form.get("grant_type") in ("authorization_code", "refresh_token"):
            grant = (
                self.sign_in.redeem
                if form.get("grant_type") == "authorization_code"
                else self.sign_in.refresh
            )
            answer = grant(form, request.headers.get("Authorization", ""))
            if answer.status != 200 and isinstance(answer.body, bytes):
                self.refusals.append(json.loads(answer.body)["error"])
            return answer
        if form.get("grant_type") != "client_credentials":
            return self._refuse(
                400,
                "unsupported_grant_type",
                "only client_credentials, authorization_code and refresh_token",
            )
        client_id = str(form.get("client_id", ""))
        scope = str(form.get("scope", ""))
        if not scope.endswith("/.default") or " " in scope.strip():
            return self._refuse(400, "invalid_scope", "AADSTS1002012: scope must be /.default")
        if "client_assertion" in form and not _is_clients_own(form, client_id):
            try:
                await self._check_federated(client_id, form)
            except FederationRefusal as refusal:
                return self._refuse(refusal.status, refusal.error, refusal.description)
        else:
            why = (
                self._check_assertion(client_id, form)
                if "client_assertion" in form
                else self._check_secret(client_id, str(form.get("client_secret", "")))
            )
            if why is not None:
                return self._refuse(401, "invalid_client", why)
        now = int(time.time())
        claims = {
            "aud": scope.removesuffix("/.default"), "iss": self.issuer, "iat": now, "nbf": now,
            "exp": now + self.token_ttl, "appid": client_id, "azp": client_id,
            "tid": self.tenant, "oid": self.principal_id(client_id),
            "sub": client_id, "ver": "1.0", "uti": secrets.token_urlsafe(12),
        }  # fmt: skip
        self.issued.append(claims)
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        return web.json_response(
            {"token_type": "Bearer", "expires_in": self.token_ttl,
             "ext_expires_in": self.token_ttl, "access_token": token}
        )  # fmt: skip

    def _check_secret(self, client_id: str, secret: str) -> str | None:
        known = self.client_secrets.get(client_id, set())
        if not secret or not any(hmac.compare_digest(secret, s) for s in known):
            return "AADSTS7000215: Invalid client secret provided."
        return None

    def check_client_assertion(self, client_id: str, form: Any) -> str | None:
        """Why a certificate credential's ``client_assertion`` fails (None: it passes)."""
        return self._check_assertion(client_id, form)

    def _check_assertion(self, client_id: str, form: Any) -> str | None:
        if form.get("client_assertion_type") != ASSERTION_TYPE or "client_secret" in form:
            return "AADSTS700024: unsupported client assertion"
        assertion = str(form.get("client_assertion", ""))
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return "AADSTS700023: malformed assertion"
        cert = None
        # MSAL pads its thumbprints; RFC 7515 says base64url without padding: accept both.
        x5t = str(header.get("x5t", "")).rstrip("=")
        x5t256 = str(header.get("x5t#S256", "")).rstrip("=")
        for c in self.client_certs.get(client_id, []):
            der = c.public_bytes(serialization.Encoding.DER)
            sha1 = _b64(hashlib.sha1(der).digest())  # noqa: S324 - the x5t header is SHA-1
            if x5t == sha1 or x5t256 == _b64(hashlib.sha256(der).digest()):
                cert = c
        if cert is None:
            return "AADSTS700027: the certificate (x5t) is not registered for the client"
        try:
            claims = jwt.decode(
                assertion, cert.public_key(), algorithms=["RS256", "PS256"],  # type: ignore[arg-type]
                audience=self.token_url, options={"require": ["exp", "aud", "iss", "sub", "jti"]},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            return f"AADSTS700027: assertion rejected ({type(exc).__name__})"
        if claims["iss"] != client_id or claims["sub"] != client_id:
            return "AADSTS700021: iss and sub must be the client id"
        if claims["jti"] in self._jtis:
            return "AADSTS700028: assertion replayed"
        self._jtis.add(claims["jti"])
        return None

    async def _check_federated(self, client_id: str, form: Any) -> None:
        if form.get("client_assertion_type") != ASSERTION_TYPE or "client_secret" in form:
            raise FederationRefusal(
                400, "invalid_request", "AADSTS700024: unsupported client assertion"
            )
        if client_id not in self.federated_credentials and client_id not in self.client_certs:
            raise FederationRefusal(
                400, "unauthorized_client",
                f"AADSTS700016: Application with identifier '{client_id}' was not found in "
                f"the directory '{self.tenant}'.",
            )  # fmt: skip
        await check_federated_assertion(
            str(form.get("client_assertion", "")),
            self.federated_credentials.get(client_id, []),
            self.issuer_keys,
            own_issuers=(self.issuer, self.base_url or self.issuer),
            clock_skew=self.clock_skew,
            max_lifetime=self.max_assertion_lifetime,
        )

    def _record(self, form: Any) -> TokenRequest:
        assertion = str(form.get("client_assertion", ""))
        header = claims = None
        if assertion:
            try:
                header = jwt.get_unverified_header(assertion)
                claims = jwt.decode(assertion, options={"verify_signature": False})
            except jwt.PyJWTError:
                pass
        shown = {k: "<redacted>" if k in _REDACTED else str(v) for k, v in form.items()}
        record = TokenRequest(shown, header, claims)
        self.token_requests.append(record)
        return record

    def _refuse(self, status: int, error: str, description: str) -> web.Response:
        self.refusals.append(error)
        return _err(status, error, description)


def _is_clients_own(form: Any, client_id: str) -> bool:
    """A certificate credential's assertion is the client's own: its ``iss`` and ``sub`` are
    the client id. Any other is a federated token, whatever its header names: an outside
    issuer's token may carry ``x5t`` too (GitHub Actions' tokens do, beside ``kid``)."""
    try:
        claims = jwt.decode(
            str(form.get("client_assertion", "")), options={"verify_signature": False}
        )
    except jwt.PyJWTError:
        return True  # malformed: the certificate path refuses it as such
    return client_id in (claims.get("iss"), claims.get("sub"))


_err = oauth_error  # every error of this endpoint is worded one way


def make_app(entra: FakeEntra) -> web.Application:
    app = web.Application()
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", entra.discovery)
    app.router.add_get("/{tenant}/discovery/v2.0/keys", entra.keys)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", entra.token)
    app.router.add_get("/{tenant}/oauth2/v2.0/authorize", entra.sign_in.authorize)
    app.router.add_post("/{tenant}/login", entra.sign_in.login)
    app.router.add_get("/{tenant}/oauth2/v2.0/logout", entra.sign_in.logout)
    return app


async def start(entra: FakeEntra, port: int = 0, ssl_context: Any = None) -> web.AppRunner:
    """Serve on 127.0.0.1 (HTTPS when ``ssl_context``); sets ``entra.base_url``."""
    return await serve_stand_in(entra, make_app(entra), port, ssl_context)
