"""The token endpoint's ``grant_type=authorization_code`` and ``refresh_token``: the client
authenticates, the code is redeemed once against its redirect URI and PKCE verifier, and the
answer carries an access token, (scope ``openid``) the ID token and (scope
``offline_access``) a refresh token. See :mod:`.authcode` for the whole flow.

A refresh token (opaque, 90 days, bound to the client) gets new tokens for any one resource
(``scope``; the service's refresh tokens are multi-resource), an ID token without ``nonce``
and a new refresh token; the old one stays valid, as the service's do for web apps.
Revoking a person's sign-in sessions (what Graph's ``revokeSignInSessions`` does) ends
their refresh tokens: AADSTS50173.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import web

from .directory import (
    ID_TOKEN_TTL,
    OIDC_SCOPES,
    PKCE_VALUE,
    AuthorizationRequest,
    IssuedCode,
    Refused,
    RegisteredApp,
    TestUser,
    b64,
    oauth_error,
    resource_of,
)

if TYPE_CHECKING:
    from .app import FakeEntra

__all__ = ["CodeGrant"]

REFRESH_TTL = 90 * 24 * 3600


class CodeGrant:
    """The token side of the flow; :class:`.authcode.AuthCodeFlow` holds the state."""

    entra: FakeEntra
    apps: dict[str, RegisteredApp]
    codes: dict[str, IssuedCode]
    refresh_tokens: dict[str, IssuedCode]  # what each refresh token stands for
    id_tokens: list[dict[str, Any]]

    def pairwise_subject(self, user: TestUser, client_id: str) -> str:
        """``sub``: the same user is another subject to every app (not the ``oid``)."""
        return b64(hashlib.sha256(f"{user.oid}|{client_id}".encode()).digest())

    @property
    def v2_issuer(self) -> str:
        return f"{self.entra.base_url}/{self.entra.tenant}/v2.0"

    def _client_info(self, user: TestUser) -> str:
        return b64(json.dumps({"uid": user.oid, "utid": self.entra.tenant}).encode())

    def revoke_sign_in_sessions(self, username: str) -> int:
        """End every refresh token of ``username``; how many there were."""
        ended = [
            g for g in self.refresh_tokens.values()
            if g.user.username.lower() == username.lower() and not g.revoked
        ]  # fmt: skip
        for grant in ended:
            grant.revoked = True  # kept, so its use is answered as revoked
        return len(ended)

    # -- the token endpoint: grant_type=authorization_code ---------------------------------
    def redeem(self, form: Mapping[str, Any], authorization: str) -> web.Response:
        presented = self._presented(form, authorization, "code")
        if isinstance(presented, web.Response):
            return presented
        app, code = presented
        issued = self.codes.get(code)
        if issued is None or issued.request.app is not app:
            return oauth_error(
                400, "invalid_grant",
                "AADSTS70000: The provided value for the 'code' parameter is not valid.",
            )  # fmt: skip
        if issued.redeemed:
            return oauth_error(
                400, "invalid_grant",
                "AADSTS54005: OAuth2 Authorization code was already redeemed, please retry "
                "with a new valid code or use an existing refresh token.",
            )  # fmt: skip
        issued.redeemed = True  # any attempt uses it up: a guessed verifier gets one try
        if issued.expires < time.time():
            return oauth_error(
                400, "invalid_grant",
                "AADSTS70008: The provided authorization code or refresh token has expired "
                "due to inactivity.",
            )  # fmt: skip
        if form.get("redirect_uri") != issued.request.redirect_uri:
            return oauth_error(
                400, "invalid_grant",
                "AADSTS500112: The reply address does not match the reply address provided "
                "when requesting Authorization code.",
            )  # fmt: skip
        if not _verifier_fits(issued.request, form.get("code_verifier")):
            return oauth_error(
                400, "invalid_grant",
                "AADSTS501481: The Code_Verifier does not match the code_challenge supplied "
                "in the authorization request.",
            )  # fmt: skip
        return self._answer(issued, form)

    # -- the token endpoint: grant_type=refresh_token --------------------------------------
    def refresh(self, form: Mapping[str, Any], authorization: str) -> web.Response:
        presented = self._presented(form, authorization, "refresh_token")
        if isinstance(presented, web.Response):
            return presented
        app, refresh_token = presented
        grant = self.refresh_tokens.get(refresh_token)
        if grant is None:
            return oauth_error(
                400, "invalid_grant",
                "AADSTS9002313: Invalid request. Request is malformed or invalid.",
            )  # fmt: skip
        if grant.revoked:
            return oauth_error(
                400, "invalid_grant",
                "AADSTS50173: The provided grant has expired due to it being revoked, a fresh "
                "auth token is needed.",
            )  # fmt: skip
        if grant.request.app is not app:
            return oauth_error(
                400, "invalid_grant",
                "AADSTS70000: The refresh token was issued to a different client.",
            )  # fmt: skip
        if grant.expires < time.time():
            return oauth_error(
                400, "invalid_grant",
                "AADSTS700082: The refresh token has expired due to inactivity.",
            )  # fmt: skip
        scopes = tuple(str(form.get("scope", "")).split()) or grant.request.scopes
        try:
            resource_of(scopes)
        except Refused as refused:
            return oauth_error(400, refused.error, refused.description)
        # The original sign-in's OIDC scopes hold; the resource is the one asked now. A
        # refreshed ID token carries no nonce (OpenID Connect Core §12.2).
        kept = tuple(s for s in grant.request.scopes if s in OIDC_SCOPES)
        wanted = replace(grant.request, scopes=kept + tuple(s for s in scopes if s not in kept),
                         nonce=None, max_age=None)  # fmt: skip
        return self._answer(replace(grant, request=wanted), form)

    def _answer(self, grant: IssuedCode, form: Mapping[str, Any]) -> web.Response:
        return web.json_response(
            self._tokens(grant, client_info=form.get("client_info") == "1"),
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _presented(
        self, form: Mapping[str, Any], authorization: str, parameter: str
    ) -> tuple[RegisteredApp, str] | web.Response:
        """The registered app the request authenticates as and the grant's ``parameter``
        (the code or refresh token), or the refusal."""
        app = self._client(form, authorization)
        if isinstance(app, web.Response):
            return app
        if parameter not in form:
            return oauth_error(
                400, "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: "
                f"'{parameter}'.",
            )  # fmt: skip
        return app, str(form[parameter])

    def _client(self, form: Mapping[str, Any], authorization: str) -> RegisteredApp | web.Response:
        """The registered app the request authenticates as, or the refusal."""
        client_id, secret = _basic_auth(authorization)
        if client_id and form.get("client_id", client_id) != client_id:
            return oauth_error(
                400, "invalid_request",
                "AADSTS90014: The client id of the Authorization header and of the body differ.",
            )  # fmt: skip
        client_id = client_id or str(form.get("client_id", ""))
        secret = secret if secret is not None else form.get("client_secret")
        app = self.apps.get(client_id)
        if app is None:
            return oauth_error(
                400, "unauthorized_client",
                f"AADSTS700016: Application with identifier '{client_id}' was not found in "
                f"the directory '{self.entra.tenant}'.",
            )  # fmt: skip
        refused = self._authenticate(app, None if secret is None else str(secret), form)
        if refused is not None:
            return oauth_error(401, "invalid_client", refused)
        return app

    def _authenticate(
        self, app: RegisteredApp, secret: str | None, form: Mapping[str, Any]
    ) -> str | None:
        presented = secret is not None or "client_assertion" in form
        if app.secret is None and app.client_id not in self.entra.client_certs:
            if presented:
                return (
                    "AADSTS700025: Client is public so neither 'client_assertion' nor "
                    "'client_secret' should be presented."
                )
            return None
        if "client_assertion" in form:
            return self.entra.check_client_assertion(app.client_id, form)
        if secret is None:
            return (
                "AADSTS7000218: The request body must contain the following parameter: "
                "'client_assertion' or 'client_secret'."
            )
        if app.secret is None or not hmac.compare_digest(secret.encode(), app.secret.encode()):
            return "AADSTS7000215: Invalid client secret provided."
        return None

    def _tokens(self, issued: IssuedCode, *, client_info: bool) -> dict[str, Any]:
        wanted, user = issued.request, issued.user
        now = int(time.time())
        resource, resource_scopes = resource_of(wanted.scopes)
        access_claims = {
            "aud": resource, "iss": self.entra.issuer, "iat": now, "nbf": now,
            "exp": now + self.entra.token_ttl, "appid": wanted.app.client_id,
            "azp": wanted.app.client_id, "tid": self.entra.tenant, "oid": user.oid,
            "sub": self.pairwise_subject(user, resource), "name": user.name,
            "upn": user.username, "scp": " ".join(s.rsplit("/", 1)[-1] for s in resource_scopes),
            "ver": "1.0", "uti": secrets.token_urlsafe(12),
        }  # fmt: skip
        self.entra.issued.append(access_claims)
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join([s for s in wanted.scopes if s in OIDC_SCOPES - {"offline_access"}]
                              + resource_scopes),
            "expires_in": self.entra.token_ttl,
            "ext_expires_in": self.entra.token_ttl,
            "access_token": self._sign(access_claims),
        }  # fmt: skip
        if "openid" in wanted.scopes:
            answer["id_token"] = self._sign(self._id_claims(issued, now))
        if "offline_access" in wanted.scopes:
            refresh_token = secrets.token_urlsafe(96)
            self.refresh_tokens[refresh_token] = replace(issued, expires=now + REFRESH_TTL)
            answer["refresh_token"] = refresh_token
        if client_info:
            answer["client_info"] = self._client_info(user)
        return answer

    def _id_claims(self, issued: IssuedCode, now: int) -> dict[str, Any]:
        wanted, user = issued.request, issued.user
        claims: dict[str, Any] = {
            "aud": wanted.app.client_id, "iss": self.v2_issuer, "iat": now, "nbf": now,
            "exp": now + ID_TOKEN_TTL, "aio": secrets.token_urlsafe(24), "oid": user.oid,
            "rh": "0.test.", "sid": issued.session_id,
            "sub": self.pairwise_subject(user, wanted.app.client_id),
            "tid": self.entra.tenant, "uti": secrets.token_urlsafe(16), "ver": "2.0",
        }  # fmt: skip
        if "profile" in wanted.scopes:
            claims["name"] = user.name
            claims["preferred_username"] = user.username
        if "email" in wanted.scopes and "@" in user.username:
            claims["email"] = user.username
        roles = wanted.app.roles_of(user)
        if roles:
            claims["roles"] = roles  # absent, not empty, when the user holds none
        if wanted.nonce is not None:
            claims["nonce"] = wanted.nonce
        if wanted.max_age is not None:
            claims["auth_time"] = issued.auth_time
        self.id_tokens.append(claims)
        return claims

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims, self.entra.key, algorithm="RS256", headers={"kid": self.entra.kid}
        )


def _verifier_fits(wanted: AuthorizationRequest, verifier: Any) -> bool:
    if wanted.code_challenge is None:
        return True  # no challenge was made (an app registered without require_pkce)
    if not isinstance(verifier, str) or not PKCE_VALUE.match(verifier):
        return False
    derived = (
        b64(hashlib.sha256(verifier.encode()).digest())
        if wanted.code_challenge_method == "S256"
        else verifier
    )
    return hmac.compare_digest(derived, wanted.code_challenge)


def _basic_auth(header: str) -> tuple[str, str | None]:
    """client_secret_basic: (client id, secret) from an HTTP Basic header, else ("", None).
    Both are form-urlencoded before base64 (RFC 6749 §2.3.1)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return "", None
    try:
        client_id, _, secret = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", None
    return unquote_plus(client_id), unquote_plus(secret)
