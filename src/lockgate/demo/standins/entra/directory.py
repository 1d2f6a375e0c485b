"""What the test tenant holds for sign-in: app registrations, people, the authorize
requests that passed, issued codes and browser sessions; and the error answer of its token
endpoint. Shared by the browser side (:mod:`.authcode`) and the token side
(:mod:`.code_grant`).

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

__all__ = [
    "AuthorizationRequest", "BrowserSession", "IssuedCode", "RegisteredApp", "TestUser",
    "oauth_error",
]  # fmt: skip

GRAPH = "https://graph.microsoft.com"
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
CODE_TTL = 600  # seconds an authorization code (and a pending sign-in) lives
ID_TOKEN_TTL = 3600
LOCKOUT_AFTER = 10  # wrong passwords in a row (the service's smart lockout threshold)
SESSION_COOKIE = "ESTSAUTH"
PKCE_VALUE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 §4.1
_AADSTS = re.compile(r"AADSTS(\d+)")


def oauth_error(status: int, error: str, description: str) -> web.Response:
    """A token endpoint error as the service words it (the AADSTS number in error_codes)."""
    codes = [int(c) for c in _AADSTS.findall(description)] or [0]
    return web.json_response(
        {"error": error, "error_description": description, "error_codes": codes,
         "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ"), "trace_id": str(uuid.uuid4()),
         "correlation_id": str(uuid.uuid4()),
         "error_uri": f"https://login.microsoftonline.com/error?code={codes[0]}"},
        status=status,
    )  # fmt: skip


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def guid(*parts: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256("|".join(parts).encode()).digest()[:16]))


@dataclass
class RegisteredApp:
    """An app registration that signs people in (web platform; public when no secret)."""

    client_id: str
    redirect_uris: tuple[str, ...]
    secret: str | None = field(default=None, repr=False)
    app_roles: tuple[str, ...] | None = None  # None: every role value a user holds
    require_pkce: bool = True
    name: str = ""

    def roles_of(self, user: TestUser) -> list[str]:
        held = list(user.roles)
        return held if self.app_roles is None else [r for r in held if r in self.app_roles]


@dataclass
class TestUser:
    username: str
    password: str = field(repr=False)
    name: str
    roles: tuple[str, ...]
    oid: str
    failed_attempts: int = 0


@dataclass(frozen=True)
class AuthorizationRequest:
    """An authorize request that passed every check."""

    app: RegisteredApp
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str
    response_mode: str
    prompt: str | None
    login_hint: str
    max_age: int | None
    client_info: bool


@dataclass
class IssuedCode:
    """What a code (or a refresh token) stands for: the sign-in it came from."""

    request: AuthorizationRequest
    user: TestUser
    auth_time: int
    session_id: str
    expires: float
    redeemed: bool = False
    revoked: bool = False


@dataclass
class BrowserSession:
    username: str
    auth_time: int
    session_id: str


class Refused(Exception):
    """An authorize fault answered at the redirect URI."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


def resource_of(scopes: tuple[str, ...]) -> tuple[str, list[str]]:
    """The one resource the non-OIDC scopes name (Graph for bare names or none), and the
    resource scopes in full; more than one resource is AADSTS28000, as the service says."""
    full = [s if "/" in s or ":" in s else f"{GRAPH}/{s}" for s in scopes if s not in OIDC_SCOPES]
    resources = {s.rsplit("/", 1)[0] for s in full}
    if len(resources) > 1:
        raise Refused(
            "invalid_scope",
            "AADSTS28000: Provided value for the input parameter scope is not valid because "
            "it contains more than one resource.",
        )
    return (resources.pop() if resources else GRAPH), full or [f"{GRAPH}/User.Read"]
