"""OAuth2 client-credentials grant (Entra ID, Databricks M2M): one token request.

The stored credential value is the client secret. The request is a form POST with
``grant_type=client_credentials``, ``client_id``, ``scope`` / ``audience`` when configured,
and the secret in the body (``client_secret_post``, what Entra ID documents) or, if the
credential config carries ``token_auth: client_secret_basic``, in HTTP Basic auth.

``token_auth: private_key_jwt`` (Entra ID certificate credentials): the stored value is a
PEM RSA private key followed by its certificate. Each request carries a fresh
``client_assertion`` (RFC 7523): an RS256 JWT with ``aud`` the token URL, ``iss`` = ``sub``
= the client id, a random ``jti``, a 10-minute ``exp``, and the certificate's SHA-1
thumbprint in ``x5t`` (what Entra ID matches; ``x5t#S256`` too). The key never leaves.

Errors become :class:`~lockgate.errors.CredentialError` naming the credential and the HTTP
status, plus the RFC 6749 ``error`` code when it is a plain slug and Entra ID's ``AADSTS``
code when there is one. The response body, the secret and the token never appear in a
message. :func:`request_token` (the POST and the answer) serves federation too; it goes
only to an https endpoint, or over plain http to this machine (:func:`check_transport`).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lockgate._urls import private_channel
from lockgate.config import OAuth2ClientCredential
from lockgate.errors import CredentialError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_TTL = 600
_ERROR_SLUG = re.compile(r"^[a-z_]{1,64}$")
_AADSTS = re.compile(r"AADSTS\d{1,9}\b")
_DEFAULT_EXPIRES_IN = 3600  # when the endpoint does not say
_MAX_EXPIRES_IN = 86400  # longer than any access token the clouds issue
TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float
    refresh_at: float  # when to fetch a new one; before expires_at


async def fetch_token(
    session: aiohttp.ClientSession,
    cred: OAuth2ClientCredential,
    client_secret: str,
    *,
    clock: Callable[[], float] = time.time,
) -> AccessToken:
    """Request an access token for ``cred`` with ``client_secret``."""
    form = {"grant_type": "client_credentials"}
    headers: dict[str, str] = {}
    method = getattr(cred, "token_auth", "client_secret_post")
    if method == "private_key_jwt":
        form["client_id"] = cred.client_id
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = client_assertion(
            client_secret, cred.client_id, cred.token_url, now=clock(), name=cred.name
        )
    elif method == "client_secret_basic":
        pair = f"{cred.client_id}:{client_secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    else:
        form["client_id"] = cred.client_id
        form["client_secret"] = client_secret
    if cred.scope:
        form["scope"] = cred.scope
    if cred.audience:
        form["audience"] = cred.audience
    return await request_token(
        session,
        cred.token_url,
        form,
        name=cred.name,
        refresh_before=cred.refresh_before,
        headers=headers,
        clock=clock,
    )


async def request_token(
    session: aiohttp.ClientSession,
    url: str,
    form: Mapping[str, str],
    *,
    name: str,
    refresh_before: float,
    headers: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    refused_hint: str = "",
) -> AccessToken:
    """POST ``form`` to the token endpoint ``url`` and read ``{access_token, expires_in}``.

    Shared by every grant that answers the RFC 6749 way (client credentials, RFC 8693
    token exchange). ``refused_hint`` ends the message of a 400/401/403 (what to check)."""
    check_transport(url, name)
    started = clock()
    try:
        async with session.post(
            url,
            data=dict(form),
            headers={"Accept": "application/json", **(headers or {})},
            timeout=TIMEOUT,
            allow_redirects=False,  # never replay a secret to wherever a redirect points
        ) as resp:
            status = resp.status
            body: dict[str, object] = {}  # a body that is not a JSON object names nothing
            try:
                decoded: object = await resp.json(content_type=None)
            except (ValueError, RecursionError, aiohttp.ContentTypeError):  # [[[[...]]]]
                decoded = None
            if isinstance(decoded, dict):
                body = decoded
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CredentialError(
            f"credential {name!r}: token endpoint unreachable ({type(exc).__name__})"
        ) from None
    if status != 200:
        if status in (400, 401, 403):
            codes = "".join(f", {code}" for code in _error_codes(body))
            raise CredentialError(
                f"credential {name!r}: token endpoint refused the client "
                f"(HTTP {status}{codes}){refused_hint}"
            )
        raise CredentialError(f"credential {name!r}: token endpoint failed (HTTP {status})")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise CredentialError(f"credential {name!r}: token endpoint returned no access_token")
    expires_in = _lifetime(body.get("expires_in", _DEFAULT_EXPIRES_IN))
    # refresh_before larger than the lifetime would refetch on every call: cap it at half
    lead = min(float(refresh_before), expires_in / 2)
    return AccessToken(
        value=token, expires_at=started + expires_in, refresh_at=started + expires_in - lead
    )


def check_transport(url: str, name: str) -> None:
    """Refuse a token endpoint a secret or an assertion would reach in clear: anything but
    https, except plain http to this machine (a sidecar, a test service). Whoever sits on
    the path of a plain http request could replay either at the real endpoint."""
    if private_channel(url):
        return
    parts = urlsplit(url)
    raise CredentialError(
        f"credential {name!r}: token_url must be https (plain http only to this machine), "
        f"not {parts.scheme}://{parts.hostname or ''}: the request carries a secret or a "
        "signed assertion"
    )


def _lifetime(value: object) -> float:
    """Seconds an answer's ``expires_in`` gives its token, within what a token lives: the
    default when it is no number (or NaN, which would make every request fetch again), at
    most a day (inf or 1e12 would keep a token forever), at least a second."""
    try:
        seconds = float(value) if isinstance(value, str | int | float) else math.nan
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds):
        return float(_DEFAULT_EXPIRES_IN)
    return min(max(seconds, 1.0), float(_MAX_EXPIRES_IN))


def _error_codes(body: Mapping[str, object]) -> list[str]:
    """What of an error body may be repeated: the RFC 6749 ``error`` when it is a plain slug,
    and Entra ID's ``AADSTS<n>`` code (from ``error_codes`` or the description's start).
    Never the description itself: it may echo what was sent."""
    codes: list[str] = []
    error = body.get("error")
    if isinstance(error, str) and _ERROR_SLUG.match(error):
        codes.append(error)
    numbers = body.get("error_codes")
    aadsts = None
    if isinstance(numbers, list) and numbers and isinstance(numbers[0], int) and numbers[0] > 0:
        aadsts = f"AADSTS{numbers[0]}"
    else:
        described = body.get("error_description")
        found = _AADSTS.match(described) if isinstance(described, str) else None
        aadsts = found.group(0) if found else None
    if aadsts is not None:
        codes.append(aadsts)
    return codes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def client_assertion(pem: str, client_id: str, audience: str, *, now: float, name: str) -> str:
    """An RS256 client assertion signed with the key in ``pem`` (key + certificate)."""
    data = pem.encode()
    try:
        key = serialization.load_pem_private_key(data, password=None)
        cert = x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE-----") :])
    except (ValueError, TypeError):
        raise CredentialError(
            f"credential {name!r}: expected a PEM private key followed by its certificate"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CredentialError(f"credential {name!r}: Entra ID certificates need an RSA key")
    der = cert.public_bytes(serialization.Encoding.DER)
    headers = {
        "x5t": _b64(hashlib.sha1(der).digest()),  # noqa: S324 - the header Entra ID matches
        "x5t#S256": _b64(hashlib.sha256(der).digest()),
    }
    t = int(now)
    claims = {"aud": audience, "iss": client_id, "sub": client_id, "jti": secrets.token_hex(16),
              "nbf": t, "iat": t, "exp": t + ASSERTION_TTL}  # fmt: skip
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)
