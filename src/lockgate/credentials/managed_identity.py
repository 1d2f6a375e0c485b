"""The gateway's own Azure managed identity: one token request, two host protocols.

Chosen by the environment, as azure-identity does:

- **App Service / Functions / Container Apps** (``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER``
  set): ``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<resource>`` with
  ``X-IDENTITY-HEADER``; the answer carries ``expires_on`` (epoch seconds).
- **IMDS** (VMs, AKS; otherwise): ``GET http://169.254.169.254/metadata/identity/oauth2/token
  ?api-version=2018-02-01&resource=<resource>`` with ``Metadata: true``; the answer carries
  ``expires_in`` (``expires_on`` accepted too). The host may be overridden by the
  credential's ``endpoint`` or ``AZURE_POD_IDENTITY_AUTHORITY_HOST``.

``client_id`` selects a user-assigned identity. Refresh timing follows the OAuth2 rule
(``refresh_before``, capped at half the lifetime). Errors are
:class:`~lockgate.errors.CredentialError` naming the credential and HTTP status; neither
the identity header nor the token appears in a message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import aiohttp

from lockgate.config import ManagedIdentityCredential
from lockgate.credentials.oauth2 import AccessToken
from lockgate.errors import CredentialError

IMDS = "http://169.254.169.254/metadata/identity/oauth2/token"
TIMEOUT = aiohttp.ClientTimeout(total=10)


def request_for(
    cfg: ManagedIdentityCredential, env: Mapping[str, str]
) -> tuple[str, dict[str, str], dict[str, str]]:
    """(url, query, headers) of the token request ``cfg`` makes in environment ``env``."""
    resource = cfg.resource.removesuffix("/.default")
    endpoint, header = env.get("IDENTITY_ENDPOINT"), env.get("IDENTITY_HEADER")
    if endpoint and header and cfg.endpoint is None:
        query = {"api-version": "2019-08-01", "resource": resource}
        if cfg.client_id:
            query["client_id"] = cfg.client_id
        return endpoint, query, {"X-IDENTITY-HEADER": header, "Metadata": "true"}
    url = cfg.endpoint or IMDS
    if cfg.endpoint is None and env.get("AZURE_POD_IDENTITY_AUTHORITY_HOST"):
        url = (
            env["AZURE_POD_IDENTITY_AUTHORITY_HOST"].rstrip("/") + "/metadata/identity/oauth2/token"
        )
    query = {"api-version": "2018-02-01", "resource": resource}
    if cfg.client_id:
        query["client_id"] = cfg.client_id
    return url, query, {"Metadata": "true"}


async def fetch_mi_token(
    session: aiohttp.ClientSession,
    cfg: ManagedIdentityCredential,
    *,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> AccessToken:
    url, query, headers = request_for(cfg, os.environ if env is None else env)
    started = clock()
    try:
        async with session.get(
            url, params=query, headers=headers, timeout=TIMEOUT, allow_redirects=False
        ) as resp:
            status = resp.status
            try:
                body = await resp.json(content_type=None)
            except (ValueError, RecursionError):  # RecursionError: [[[[...]]]]
                body = None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CredentialError(
            f"credential {cfg.name!r}: managed identity endpoint unreachable ({type(exc).__name__})"
        ) from None
    if status != 200 or not isinstance(body, dict):
        raise CredentialError(
            f"credential {cfg.name!r}: managed identity endpoint failed (HTTP {status})"
        )
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise CredentialError(f"credential {cfg.name!r}: no access_token in the answer")
    try:
        if body.get("expires_in") is not None:
            lifetime = float(body["expires_in"])
        else:
            lifetime = float(body["expires_on"]) - started
    except (KeyError, TypeError, ValueError):
        raise CredentialError(
            f"credential {cfg.name!r}: the answer says nothing usable about expiry"
        ) from None
    lifetime = max(lifetime, 1.0)
    lead = min(float(cfg.refresh_before), lifetime / 2)
    return AccessToken(token, started + lifetime, started + lifetime - lead)


__all__ = ["IMDS", "fetch_mi_token", "request_for"]
