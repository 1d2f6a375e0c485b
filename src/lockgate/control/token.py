"""The token routes: ``POST /v1/token``, ``POST /v1/revoke``, JWKS and OIDC discovery.

The web side of :class:`lockgate.identity.TokenService`: read the body (small, form or
JSON, no repeated field), hand its fields and the ``Authorization`` header to the service,
answer in JSON. Refusals are OAuth2 ``{error, error_description}`` with ``no-store``, and
every one is recorded by the service before it is answered. :func:`read_body` and
:func:`error_response` are what every other deployment-called route uses too. A mint over
the deployment's rate (:mod:`lockgate.identity.rate_limit`) is refused with 429 and
``Retry-After`` before anything is minted.

A token request may carry the asking task's W3C ``traceparent`` header: the mint's span
(:func:`lockgate.tracing.start_mint`) is its child, and the token carries it (claim
``traceparent``) so every request made with the token joins the task's trace. A header
that is not a valid version-00 trace context is ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lockgate import tracing
from lockgate.identity import MAX_BODY, OAuthError, TokenService, invalid_request, parse_body
from lockgate.identity.client_auth import basic_credentials
from lockgate.identity.service import JWT_TOKEN_TYPE

Handler = Callable[[web.Request], Awaitable[web.Response]]
NO_STORE = {"Cache-Control": "no-store"}


async def read_body(request: web.Request) -> dict[str, str]:
    """The request's fields as strings, read no further than the size cap."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise invalid_request("request body too large")
    return parse_body(request.content_type, await request.content.read(MAX_BODY + 1))


def error_response(exc: OAuthError) -> web.Response:
    """The OAuth2 error answer of a refusal (a Basic challenge when a secret was wrong,
    ``Retry-After`` when over a rate limit)."""
    headers = dict(NO_STORE)
    if exc.basic_challenge:
        headers["WWW-Authenticate"] = 'Basic realm="lockgate"'
    if exc.status == 429:
        headers["Retry-After"] = str(max(1, int(exc.fields.get("retry_after", 1))))
    return web.json_response(exc.payload(), status=exc.status, headers=headers)


def token_handler(service: TokenService) -> Handler:
    """``POST /v1/token``: steps 1-8 of :mod:`lockgate.identity.service`."""

    async def handle(request: web.Request) -> web.Response:
        ctx: dict[str, Any] = {"remote": request.remote}
        traceparent = _traceparent(request)
        span = tracing.NO_SPAN
        try:
            body = await read_body(request)
            span = tracing.start_mint(
                _claimed_deployment(service, body, request.headers.get("Authorization")),
                traceparent=traceparent,
            )
            grant = await service.authorize(body, request.headers.get("Authorization"), ctx)
            await service.take_mint(grant.deployment.name)
        except OAuthError as exc:
            await service.refused(exc, ctx)
            _mint_refused(service, span, exc, ctx)
            return error_response(exc)
        try:
            issued = await service.issue(grant, ctx, traceparent=traceparent)
        except OAuthError as exc:  # the audit failed: nothing more can be recorded
            _mint_refused(service, span, exc, ctx)
            return error_response(exc)
        span.decided("mint", grant.resource.name, "allow", grant.decision.rule, None)
        span.end(status=200)
        return web.json_response(
            {
                "access_token": issued.token,
                "token_type": "Bearer",
                "expires_in": issued.ttl,
                "issued_token_type": JWT_TOKEN_TYPE,
                "principal": issued.principal,
                "jti": issued.claims.jti,
            },
            headers={**NO_STORE, "Pragma": "no-cache"},
        )

    return handle


def _traceparent(request: web.Request) -> str | None:
    """The caller's trace context when it sent one valid ``traceparent``. Two name no one
    trace (W3C trace context treats a duplicated header as invalid): a trace of its own,
    as for a malformed one. Only spans ever read it."""
    sent = request.headers.getall("traceparent", [])
    return tracing.valid_traceparent(sent[0]) if len(sent) == 1 else None


def _claimed_deployment(
    service: TokenService, body: dict[str, str], authorization: str | None
) -> str:
    """The configured deployment the request names (Basic user or ``client_id``), proven or
    not, for the mint's span; "" for any other name: an unknown "client id" may be a secret
    pasted in the wrong field."""
    try:
        basic = basic_credentials(authorization)
    except OAuthError:
        basic = None
    name = basic[0] if basic is not None else body.get("client_id")
    deployment = service.config.deployment(name) if name else None
    return deployment.name if deployment is not None else ""


def _mint_refused(
    service: TokenService, span: tracing.RequestSpan, exc: OAuthError, ctx: dict[str, Any]
) -> None:
    # A configured resource only: a name the catalog does not know may be anything pasted
    # into the field, and spans leave for a backend more people read than the audit trail.
    asked = str(ctx.get("resource", ""))
    resource = asked if asked and service.config.resource(asked) is not None else ""
    span.decided("mint", resource, "deny", exc.fields.get("rule"), exc.reason)
    span.end(status=exc.status)


def revoke_handler(service: TokenService) -> Handler:
    """``POST /v1/revoke``: a deployment revokes its tokens (or blocks a DAG)."""

    async def handle(request: web.Request) -> web.Response:
        ctx: dict[str, Any] = {"remote": request.remote}
        try:
            body = await read_body(request)
        except OAuthError as exc:
            await service.refused(exc, ctx)
            return error_response(exc)
        try:
            kind = await service.revoke(body, request.headers.get("Authorization"), ctx)
        except OAuthError as exc:  # recorded by the service
            return error_response(exc)
        return web.json_response({"revoked": kind}, headers=NO_STORE)

    return handle


def add_token_routes(app: web.Application, service: TokenService) -> None:
    """The token service's routes on ``app``; the service closes with the app."""

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(service.jwks(), headers={"Cache-Control": "public, max-age=60"})

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response(
            service.discovery(), headers={"Cache-Control": "public, max-age=300"}
        )

    async def close(_app: web.Application) -> None:
        await service.close()

    app.router.add_post("/v1/token", token_handler(service))
    app.router.add_post("/v1/revoke", revoke_handler(service))
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.on_cleanup.append(close)
