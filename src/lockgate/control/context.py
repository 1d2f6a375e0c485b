"""What every control route works with: typed collaborators and the deployment door.

:class:`ControlContext` bundles the config, the token service, verifier, issuer, mint
policy, the audit sink, the master key (Cosmos DB task keys), the listener ports (the
catalog points at the ports actually bound) and the dynamic roles. Its methods are the
one flow every deployment-called route starts with (:meth:`ControlContext.deployment_route`
wraps a handler in the first):

* :meth:`ControlContext.authenticate` reads the body and authenticates the deployment as
  ``/v1/token`` does (:meth:`TokenService.authenticate`); a refusal there is recorded and
  counted (action ``authenticate``, the route named) and answered;
* :meth:`ControlContext.refuse` audits a later refusal (``decision: deny`` and a reason
  slug), then answers it in the OAuth2 error shape.

Minting is the token service's in every route: :meth:`TokenService.authorize` (or, for the
poll token's own rules, ``mint_policy``) gives a grant, :meth:`TokenService.issue` mints it
and writes its ``token_issued`` record before anything is handed out
(:meth:`TokenService.record_issued` alone when the route must create something first, as
``/v1/db-role`` does its role).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from lockgate.config import ForwardProxyConfig, ListenerConfig, LockgateConfig
from lockgate.control.token import Handler, error_response, read_body
from lockgate.gateway.dynamic_roles import DbRoles
from lockgate.identity import OAuthError, TokenIssuer, TokenService, TokenVerifier
from lockgate.identity.model import MintDecision, TaskIdentity

EventSink = Callable[..., Awaitable[None]]  # (event_kind, /, **fields): the audit
# (deployment, body) of an authenticated request -> the answer
DeploymentHandler = Callable[[str, dict[str, str]], Awaitable[web.Response]]
# (identity, resource, requested ttl) -> decision: control.mint.MintPolicy or a test double
MintDecider = Callable[[TaskIdentity, str, "int | None"], MintDecision]


def public_host(listener: ListenerConfig | ForwardProxyConfig) -> str:
    """The host a client dials for ``listener``: its ``advertise`` name (a load balancer's
    in front of several replicas), else the bound address (a wildcard is localhost)."""
    if listener.advertise:
        return listener.advertise
    return "localhost" if listener.host in ("0.0.0.0", "::") else listener.host


class ListenerPorts(Protocol):
    """The ports the gateway's listeners are bound to (0 until they are), read when a
    catalog is asked for, so ``port: 0`` listeners are named by the port they got."""

    @property
    def control_port(self) -> int: ...

    @property
    def http_port(self) -> int: ...

    @property
    def cql_port(self) -> int: ...

    @property
    def postgres_port(self) -> int: ...

    @property
    def forward_proxy_port(self) -> int: ...

    @property
    def mounted_ports(self) -> Mapping[str, int]: ...


@dataclass(slots=True)
class ControlContext:
    """The routes' collaborators. ``config`` is replaced (never mutated) when the catalog
    changes live, so a route reads it once per request."""

    config: LockgateConfig
    tokens: TokenService
    verifier: TokenVerifier
    issuer: TokenIssuer
    mint_policy: MintDecider
    audit: EventSink
    master_key: bytes
    ports: ListenerPorts
    db_roles: DbRoles | None = None

    async def authenticate(
        self, request: web.Request, route: str
    ) -> tuple[str, dict[str, str]] | web.Response:
        """(deployment, body) of a control request, or the (already recorded) refusal."""
        audit: dict[str, Any] = {"remote": request.remote, "route": route}
        try:
            body = await read_body(request)
            deployment, _proof = await self.tokens.authenticate(
                body, request.headers.get("Authorization"), request.remote, audit
            )
        except OAuthError as exc:
            audit["action"] = "authenticate"
            await self.tokens.refused(exc, audit)
            return error_response(exc)
        return deployment, body

    def deployment_route(self, route: str, handler: DeploymentHandler) -> Handler:
        """A route that only an authenticated deployment reaches: ``handler(deployment,
        body)`` runs once :meth:`authenticate` let the request through."""

        async def handle(request: web.Request) -> web.Response:
            authenticated = await self.authenticate(request, route)
            if isinstance(authenticated, web.Response):
                return authenticated
            return await handler(*authenticated)

        return handle

    async def refuse(
        self,
        status: int,
        error: str,
        description: str,
        *,
        reason: str,
        route: str,
        **fields: Any,
    ) -> web.Response:
        """Audit a refusal of a deployment-authenticated control route, then answer it.
        Every refusal is recorded with ``decision: deny`` and its reason slug."""
        await self.audit("token_denied", **fields, route=route, reason=reason)
        return error_response(OAuthError(status, error, description, reason=reason))
