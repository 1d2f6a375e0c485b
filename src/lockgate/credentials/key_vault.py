"""Azure Key Vault: read one secret with the gateway's own Entra ID token.

``GET {vault_url}/secrets/{secret}[/{version}]?api-version=7.4`` with ``Authorization:
Bearer <token>``; the token is the access token of the credential the Key Vault credential's
``identity`` names (managed identity, federated or client credentials, audience
``https://vault.azure.net``), obtained through the broker like any other. The answer is
``{"value", "id": "https://<vault>/secrets/<name>/<version>", "attributes": {...}}``.

A 401 carries a ``WWW-Authenticate: Bearer authorization="...", resource="..."`` (or
``scope="..."``) challenge, which the Azure SDK answers by getting a token for that
resource. Here the audience is fixed by configuration: a challenge naming another resource
is a configuration error said as such; one naming ours means the token was refused
(expired, revoked), so the token is dropped and the request made once more with a fresh
one. Other refusals name the HTTP status and Key Vault's error code (``SecretNotFound``,
``Forbidden``...), never the body, the token or the value.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote

import aiohttp

from lockgate.config.credentials import KeyVaultCredential
from lockgate.credentials.vaults import (
    Fetched,
    SecretWithdrawn,
    json_answer,
    safe_code,
    secret_like,
)
from lockgate.errors import CredentialError

API_VERSION = "7.4"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_PLAIN_URL = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._-]+)*/?")
_VERSION = re.compile(r"[0-9A-Za-z]{1,64}")
_HEX_VERSION = re.compile(r"[0-9a-f]{32}")


class BearerToken(Protocol):
    @property
    def value(self) -> str: ...

    @property
    def version(self) -> int: ...


#: The identity's token (the broker's ``upstream_secret(identity)``).
TokenSource = Callable[[], Awaitable[BearerToken]]
#: Drop a refused token of the identity (the broker's ``invalidate(identity, version)``).
ForgetToken = Callable[[int], None]


def secret_url(cred: KeyVaultCredential) -> str:
    version = f"/{quote(cred.version, safe='')}" if cred.version else ""
    return f"{cred.vault_url}/secrets/{quote(cred.secret, safe='')}{version}"


def challenge(header: str | None) -> dict[str, str]:
    """The parameters of a ``Bearer`` challenge (``authorization``, ``resource``, ``scope``)."""
    if not header or not header.lower().startswith("bearer"):
        return {}
    return {k.lower(): v for k, v in _CHALLENGE_PARAM.findall(header)}


def challenged_audience(params: dict[str, str]) -> str | None:
    """The audience a challenge asks for: ``resource``, or ``scope`` without ``/.default``."""
    audience = params.get("resource") or params.get("scope", "").removesuffix("/.default")
    return audience.rstrip("/") or None


async def fetch_key_vault_secret(
    session: aiohttp.ClientSession,
    cred: KeyVaultCredential,
    token: TokenSource,
    forget: ForgetToken,
    *,
    audience: str,
    clock: Callable[[], float] = time.time,
) -> Fetched:
    """The secret ``cred`` names, read with ``token``'s bearer (one retry after a 401)."""
    url = secret_url(cred)
    for attempt in (1, 2):
        bearer = await token()
        status, body, www_authenticate = await _get(session, url, bearer.value, cred)
        if status == 200:
            return _read_answer(cred, body, bearer.value, clock())
        if status == 401 and attempt == 1:
            asked = challenged_audience(challenge(www_authenticate))
            if asked is not None and asked != audience:
                # No token is asked for another audience; what it named is said when plain.
                named = _plain_audience(asked, bearer.value) or "another resource"
                raise CredentialError(
                    f"credential {cred.name!r}: Key Vault asks for a token for {named}, but "
                    f"identity {cred.identity!r} gets tokens for {audience}"
                )
            forget(bearer.version)  # refused before its expiry: fetch a fresh one
            continue
        raise _refused(cred, status, body, bearer.value)
    raise _refused(cred, 401, {}, "")


async def _get(
    session: aiohttp.ClientSession, url: str, bearer: str, cred: KeyVaultCredential
) -> tuple[int, dict[str, object], str | None]:
    try:
        async with session.get(
            url,
            params={"api-version": API_VERSION},
            headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=cred.timeout),
            allow_redirects=False,  # never replay the token to wherever a redirect points
        ) as resp:
            body = await json_answer(resp, cred.name)
            return resp.status, body, resp.headers.get("WWW-Authenticate")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CredentialError(
            f"credential {cred.name!r}: Key Vault {cred.vault_url} unreachable "
            f"({type(exc).__name__})"
        ) from None


def _plain_audience(asked: str, bearer: str) -> str | None:
    """A challenged audience fit to repeat: a short https URL of plain words, none of them
    a piece of the bearer the request carried."""
    if len(asked) > 100 or not _PLAIN_URL.fullmatch(asked):
        return None
    words = re.split(r"[/.:]+", asked)
    return None if any(secret_like(w, (bearer,)) for w in words) else asked


def _version_of(secret_id: str, bearer: str) -> str:
    """The version segment of a secret's id (32 hex digits in Key Vault), or "" when the
    answer's id ends in anything else."""
    version = secret_id.rstrip("/").rsplit("/", 1)[-1]
    plain = _VERSION.fullmatch(version) and not secret_like(version, (bearer,))
    return version if plain or _HEX_VERSION.fullmatch(version) else ""


def _check_usable(cred: KeyVaultCredential, attributes: dict[str, object], now: float) -> None:
    """Key Vault hands out a disabled, expired or not yet valid version's value on request
    (``exp`` and ``nbf`` are the reader's to enforce): such a value is not used."""
    if attributes.get("enabled") is False:
        raise SecretWithdrawn(f"credential {cred.name!r}: the secret version is disabled")
    expires, not_before = _epoch(attributes.get("exp")), _epoch(attributes.get("nbf"))
    if expires is not None and now >= expires:
        raise SecretWithdrawn(
            f"credential {cred.name!r}: the secret version expired at {_utc(expires)}; set a "
            "new version (or move its expiry)"
        )
    if not_before is not None and now < not_before:
        raise SecretWithdrawn(
            f"credential {cred.name!r}: the secret version is not valid before {_utc(not_before)}"
        )


def _epoch(value: object) -> float | None:
    """Seconds since the epoch of an ``exp``/``nbf`` attribute (an int); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int past any float: forever one way or the other
        return math.inf if value > 0 else -math.inf
    return None if math.isnan(seconds) else seconds


def _utc(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.0f} s past the epoch"


def _read_answer(
    cred: KeyVaultCredential, body: dict[str, object], bearer: str, now: float
) -> Fetched:
    value, secret_id = body.get("value"), body.get("id")
    if not isinstance(value, str) or not isinstance(secret_id, str):
        raise CredentialError(
            f"credential {cred.name!r}: Key Vault's answer carries no secret value and id"
        )
    attributes = body.get("attributes")
    expires = None
    if isinstance(attributes, dict):
        _check_usable(cred, attributes, now)
        expires = _epoch(attributes.get("exp"))
    segments = secret_id.rstrip("/").split("/")
    if len(segments) < 3 or [x.lower() for x in segments[-3:-1]] != [
        "secrets",
        cred.secret.lower(),
    ]:
        # Another secret's answer (a misrouted request, a proxy's cache): never used for this.
        raise CredentialError(
            f"credential {cred.name!r}: Key Vault answered with another secret than {cred.secret!r}"
        )
    version = _version_of(secret_id, bearer)
    if cred.version and version.lower() != cred.version.lower():
        # A pinned version is the operator's choice: another one is never used in its place.
        raise CredentialError(
            f"credential {cred.name!r}: Key Vault answered another version "
            f"({version or 'unnamed'}) than the pinned {cred.version}"
        )
    return Fetched(value, version, expires)


def _refused(
    cred: KeyVaultCredential, status: int, body: dict[str, object], bearer: str
) -> CredentialError:
    error = body.get("error")
    codes = []
    if isinstance(error, dict):
        codes.append(safe_code(error.get("code"), sent=(bearer,)))
        inner = error.get("innererror")
        if isinstance(inner, dict):
            codes.append(safe_code(inner.get("code"), sent=(bearer,)))
    named = "".join(f", {c}" for c in codes if c)
    if "SecretDisabled" in codes:
        return SecretWithdrawn(
            f"credential {cred.name!r}: Key Vault refused reading {cred.held_at} "
            f"(HTTP {status}{named}): that version is disabled; enable it or pin another"
        )
    hint = {
        401: f": identity {cred.identity!r}'s token was refused",
        403: _forbidden_hint(cred, codes),
        404: f": no secret {cred.secret!r}" + (f" version {cred.version}" if cred.version else ""),
    }.get(status, "")
    return CredentialError(
        f"credential {cred.name!r}: Key Vault refused reading {cred.held_at} "
        f"(HTTP {status}{named}){hint}"
    )


def _forbidden_hint(cred: KeyVaultCredential, codes: list[str | None]) -> str:
    """What to fix for a 403, by Key Vault's inner error: its firewall (the gateway's address),
    an access policy (the vault is not on RBAC), else a role."""
    if "ForbiddenByFirewall" in codes:
        return (
            ": the vault's firewall does not let this gateway's address through; allow it "
            "(or reach the vault by a private endpoint or an allowed virtual network)"
        )
    if "AccessDenied" in codes:
        return (
            f": the vault uses access policies: give identity {cred.identity!r} the get "
            "permission on secrets"
        )
    return (
        f": grant identity {cred.identity!r} the Key Vault Secrets User role on the vault or "
        "secret (or a get-secret access policy)"
    )


__all__ = [
    "API_VERSION",
    "challenge",
    "challenged_audience",
    "fetch_key_vault_secret",
    "secret_url",
]
