"""The task-facing managed identity endpoint: ``GET /msi/token`` (App Service protocol).

Why: stock Azure clients (the Data Factory hook's ``DefaultAzureCredential``) cannot be handed
a token, but they ask a managed identity endpoint for one when ``IDENTITY_ENDPOINT`` and
``IDENTITY_HEADER`` are set. Lockgate serves that protocol on its control listener:

    GET /msi/token?api-version=2019-08-01&resource=https://management.azure.com
    X-IDENTITY-HEADER: <IDENTITY_HEADER>

Rules:

- ``IDENTITY_HEADER`` is the task's own Lockgate token for the resource (minted by the
  secrets backend for the task try, audited, revoked when the try ends). It is verified
  like any Lockgate token: signature, issuer, time, revocation, audience.
- ``resource`` names an upstream audience; it must map (through the ``intercept`` hosts of
  an ``http`` resource) to the very resource the token was minted for. A token for one
  resource is never answered for another.
- The answer is that same token — bound to the task's coordinates, ``aud`` the resource —
  with ``expires_on`` (what MSAL requires). Nothing new is minted, so nothing can outlive
  the token the task already holds; the gateway's own Entra credential never leaves.
- Refusals are ``{"error", "error_description"}`` with 400/401, never echoing the header.
  Each is audited (``denied`` for a bad request, ``auth_failed`` for a bad header; decision
  ``deny``, action ``authenticate``, ``route`` ``/msi/token`` in the detail, a reason slug),
  with the token's jti, deployment and DAG when its signature verified, as the engines do.

:func:`catalog_entry` builds what the secrets backend turns into the ``azure_data_factory``
connection (no secret in it) plus the environment it exports in the task process.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from lockgate import _log, metrics
from lockgate.config import HttpResource, LockgateConfig
from lockgate.control.context import ControlContext, public_host
from lockgate.control.token import Handler
from lockgate.errors import AuthenticationError
from lockgate.identity.model import Claims

log = _log.get("control.managed_identity")

API_VERSIONS = frozenset({"2019-08-01", "2017-09-01"})
PATH = "/msi/token"
TOKEN_PLACEHOLDER = "{lockgate_token}"  # noqa: S105 - a template marker, not a secret


def audience_map(config: LockgateConfig) -> dict[str, str]:
    """``host`` of an upstream audience (``https://management.azure.com``) → resource name."""
    out: dict[str, str] = {}
    for r in config.resources:
        for hostport in r.intercept if isinstance(r, HttpResource) else ():
            host, _, port = hostport.rpartition(":")
            if port == "443":
                out[host] = r.name
    return out


def resource_for(audiences: dict[str, str], requested: str) -> str | None:
    """The resource serving audience ``requested`` (a URL, ``/.default`` tolerated)."""
    if not requested:
        return None
    parts = urlsplit(requested.removesuffix("/.default"))
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        return None
    if parts.port not in (None, 443) or parts.path not in ("", "/"):
        return None
    return audiences.get(parts.hostname.lower())


_CLAIM_FIELDS = ("deployment", "dag_id", "task_id", "run_id", "try_number", "map_index", "jti")


async def _refuse(
    ctx: ControlContext,
    status: int,
    error: str,
    description: str,
    reason: str,
    resource: str | None = None,
    claims: Claims | None = None,
) -> web.Response:
    metrics.TOKEN_REJECTIONS.labels(reason=f"msi_{error}").inc()
    fields: dict[str, Any] = {"route": PATH, "action": "authenticate", "reason": reason}
    if resource is not None:
        fields["resource"] = resource
    if claims is not None:  # the signature verified: say whose token it was
        fields.update({k: getattr(claims, k) for k in _CLAIM_FIELDS})
        fields["principal"] = claims.sub
    try:
        event = "proof_rejected" if status == 401 else "token_denied"
        await ctx.audit(event, **fields)
    except Exception as exc:  # nothing is served either way; the refusal stands
        log.error("msi refusal not audited", extra={"fields": {"error": type(exc).__name__}})
    return web.json_response(
        {"error": error, "error_description": description},
        status=status,
        headers={"Cache-Control": "no-store"},
    )


def msi_handler(ctx: ControlContext) -> Handler:
    """``GET /msi/token`` over the control plane's collaborators."""

    async def handle(request: web.Request) -> web.Response:
        q = request.query
        if q.get("api-version") not in API_VERSIONS:
            return await _refuse(
                ctx, 400, "invalid_request", "unsupported api-version", "bad_api_version"
            )
        if any(k in q for k in ("client_id", "object_id", "mi_res_id", "principal_id")):
            # One identity per task: a user-assigned selector would be ignored, so refuse it.
            return await _refuse(
                ctx, 400, "invalid_request", "identity selectors are not supported",
                "identity_selector",
            )  # fmt: skip
        resource = resource_for(audience_map(ctx.config), q.get("resource", ""))
        if resource is None:
            return await _refuse(
                ctx, 400, "invalid_resource", "no Lockgate resource serves this audience",
                "unknown_audience",
            )  # fmt: skip
        headers = request.headers.getall("X-IDENTITY-HEADER", [])
        if len(headers) != 1 or not headers[0]:
            return await _refuse(
                ctx, 401, "invalid_client", "X-IDENTITY-HEADER required",
                "missing_identity_header", resource,
            )  # fmt: skip
        token = headers[0]
        try:
            claims = ctx.verifier.verify(token, resource)
        except AuthenticationError as exc:
            log.info(
                "managed identity request refused",
                extra={"fields": {"resource": resource, "reason": exc.reason}},
            )
            return await _refuse(
                ctx, 401, "invalid_client", f"identity header rejected ({exc.reason})",
                str(exc.reason), resource, exc.claims,
            )  # fmt: skip
        if not hmac.compare_digest(claims.aud, resource):  # verify() checked it; belt and braces
            return await _refuse(
                ctx, 401, "invalid_client", "identity header rejected (wrong_audience)",
                "wrong_audience", resource, claims,
            )  # fmt: skip
        log.info(
            "managed identity token served",
            extra={"fields": {"resource": resource, "principal": claims.sub, "jti": claims.jti}},
        )
        return web.json_response(
            {
                "access_token": token,
                "expires_on": int(claims.exp),
                "resource": q.get("resource"),
                "token_type": "Bearer",
                "client_id": claims.sub,
            },
            headers={"Cache-Control": "no-store"},
        )

    return handle


def catalog_entry(ctx: ControlContext, resource: HttpResource) -> dict[str, Any]:
    """The catalog entry of a ``profile: arm`` resource: an ``azure_data_factory``
    connection without a secret, and ``env`` for the task process (identity endpoint,
    identity header = the task's token, and the forward proxy)."""
    arm = resource.arm
    assert arm is not None  # the config refuses an identity-endpoint profile without it
    extra: dict[str, Any] = {"subscriptionId": arm.subscription_id}
    if arm.tenant_id:
        extra["tenantId"] = arm.tenant_id
    if arm.resource_group:
        extra["resource_group_name"] = arm.resource_group
    if arm.factory:
        extra["factory_name"] = arm.factory
    c = ctx.config.listeners.control
    host = public_host(c)
    control = f"{c.scheme}://{host}:{ctx.ports.control_port or c.port}"
    env = {"IDENTITY_ENDPOINT": control + PATH, "IDENTITY_HEADER": TOKEN_PLACEHOLDER}
    fp = ctx.config.listeners.forward_proxy
    if fp is not None:
        fport = ctx.ports.forward_proxy_port or fp.port
        env["HTTPS_PROXY"] = f"{fp.scheme}://{public_host(fp)}:{fport}"
        env["NO_PROXY"] = host  # the control plane (token service, /msi/token) goes direct
    return {
        "conn_id": resource.conn_id,
        "resource": resource.name,
        "kind": resource.kind,
        "connection": {"conn_type": "azure_data_factory", "extra": extra},
        "env": env,
    }


__all__ = ["PATH", "audience_map", "catalog_entry", "msi_handler", "resource_for"]
