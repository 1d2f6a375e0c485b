"""Deployment-authenticated control routes: authenticate the caller, refuse with a record.

Every control route a deployment calls (``/v1/poll-token``, ``/v1/cosmos-key``,
``/v1/catalog``) starts the same way as ``/v1/token``: read the body and authenticate the
deployment. :func:`authenticate` does it through the token service's public door; a refusal
there is already audited. :func:`refuse` audits a later refusal, then answers it in the
OAuth2 error shape.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lockgate.identity._request import OAuthError


async def refuse(
    gateway: Any,
    status: int,
    error: str,
    description: str,
    *,
    reason: str,
    route: str,
    **fields: Any,
) -> web.Response:
    """Audit a refusal of a deployment-authenticated control route, then answer it (OAuth2
    error shape). Every refusal is recorded with ``decision: deny`` and its reason slug."""
    await gateway.on_token_event("token_denied", **fields, route=route, reason=reason)
    return web.json_response({"error": error, "error_description": description}, status=status)


async def authenticate(
    gateway: Any, request: web.Request, route: str
) -> tuple[str, dict[str, str]] | web.Response:
    """(deployment, body) of a control request, or the (already audited) refusal."""
    try:
        result: tuple[str, dict[str, str]] = await gateway.token_service.authenticate_deployment(
            request, route
        )
    except OAuthError as exc:
        return web.json_response(
            {"error": exc.error, "error_description": exc.description}, status=exc.status
        )
    return result
