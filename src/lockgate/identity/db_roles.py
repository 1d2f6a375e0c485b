"""``POST /v1/db-role``: a per-task Cassandra role for clients that cannot use the gateway.

Strategy: the request is a ``/v1/token`` request (same client authentication, task
coordinates, delegation, attestation and mint policy, through
:meth:`TokenService.authorize`), for a ``kind: cql`` resource with ``dynamic_roles: true``.
Instead of returning the token, the service mints it only for its claims (jti, exp) and asks
that resource's :class:`~lockgate.gateway.cql.roles.DynamicRoles` for a role granted exactly
what policy allows. The task then logs in to the contact points directly with the role's
username and password. The role lives as long as the token would have: the sweeper drops it
at expiry, a revocation (the Airflow listener at task end, ``/v1/revoke`` or the CLI) drops
it at once.

Rules:

- Deny by default: a principal that may mint but is granted nothing on any table gets a 403,
  not an empty role. Any refusal is audited exactly like a refused token.
- The audit record (``token_issued``) names the role and its grants, never the password; an
  audit failure drops the role again and answers 503, as for tokens.
- Roles and their claims live in this process only. A graceful stop drops every live role;
  a crash leaves them until :meth:`DynamicRoles.sweep_orphans` runs (not automatic: another
  replica sharing the cluster would lose its roles).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from lockgate import _log, metrics
from lockgate.config import CqlResource
from lockgate.errors import CredentialError, UpstreamError
from lockgate.gateway.cql.roles import DynamicRoles, NoGrants
from lockgate.gateway.cql.upstream import split_host_port
from lockgate.identity._request import OAuthError, read_body
from lockgate.identity.model import Claims
from lockgate.identity.revocation import RevocationStore

log = _log.get("identity.db_roles")

MODE = "dynamic_role"
USER_PLACEHOLDER = "{lockgate_role_user}"
PASSWORD_PLACEHOLDER = "{lockgate_role_password}"  # noqa: S105 - a template marker
PasswordFor = Callable[[CqlResource], Awaitable[str]]
EventSink = Callable[..., Any]


def connection_template(r: CqlResource) -> dict[str, Any]:
    """An Airflow ``cassandra`` Connection pointing straight at the cluster.

    Airflow's Connection has one port, so every contact point is taken to listen on the
    first one's port (CassandraHook splits ``host`` on commas).
    """
    points = [split_host_port(p) for p in r.contact_points]
    return {
        "conn_type": "cassandra",
        "host": ",".join(dict.fromkeys(h for h, _ in points)),
        "port": points[0][1],
        "login": USER_PLACEHOLDER,
        "password": PASSWORD_PLACEHOLDER,
        "schema": r.keyspace or "",
        "extra": {"protocol_version": 4},
    }


def catalog_entry(r: CqlResource) -> dict[str, Any]:
    return {
        "conn_id": r.conn_id,
        "resource": r.name,
        "kind": r.kind,
        "mode": MODE,
        "connection": connection_template(r),
    }


class DbRoles:
    """The dynamic roles of every ``dynamic_roles: true`` cql resource, and their door."""

    def __init__(
        self,
        resources: Iterable[Any],
        password_for: PasswordFor,
        policy: Any,
        revocations: RevocationStore,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval: float = 15.0,
    ) -> None:
        self.roles: dict[str, DynamicRoles] = {}
        for r in resources:
            if r.kind == "cql" and getattr(r, "dynamic_roles", False):

                async def password(r: CqlResource = r) -> str:
                    return await password_for(r)

                self.roles[r.name] = DynamicRoles(r, password, policy, clock=clock)
        self._revocations = revocations
        self._clock = clock
        self.sweep_interval = sweep_interval
        self._claims: dict[tuple[str, str], Claims] = {}  # (resource, role) -> token claims
        self._task: asyncio.Task[None] | None = None

    def serves(self, resource: str) -> bool:
        return resource in self.roles

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self.roles and self._task is None:
            self._task = asyncio.create_task(self._sweeper(), name="lockgate-db-role-sweeper")

    async def close(self) -> None:
        """Stop sweeping and drop every live role: nothing would ever drop it otherwise."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for roles in self.roles.values():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5.0):
                    await roles.sweep(now=float("inf"))
        self._claims.clear()

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except Exception:  # a sweep failure must not stop the loop
                log.exception("dynamic role sweep failed")

    async def sweep(self) -> list[str]:
        """Drop expired roles and roles whose token was revoked elsewhere (CLI, replica)."""
        dropped: list[str] = []
        for (resource, _role), claims in list(self._claims.items()):
            if self._revocations.is_revoked(claims):
                dropped += await self.roles[resource].revoke_jti(claims.jti)
        for roles in self.roles.values():
            dropped += await roles.sweep()
        self._forget_dropped()
        return dropped

    def _forget_dropped(self) -> None:
        for key in list(self._claims):
            if key[1] not in self.roles[key[0]].issued:
                del self._claims[key]

    # -- revocation hook (TokenService on_revoke) -----------------------------------------
    async def on_revoke(self, kind: str, target: dict[str, Any]) -> list[str]:
        dropped: list[str] = []
        if kind == "jti":
            # Only the revoking deployment's token: a jti is no secret (see revocation.py).
            for (resource, _role), claims in list(self._claims.items()):
                if claims.jti == target["jti"] and claims.deployment == target["deployment"]:
                    dropped += await self.roles[resource].revoke_jti(claims.jti)
        else:
            for roles in self.roles.values():
                dropped += await roles.revoke_matching(
                    target["deployment"],
                    target["dag_id"],
                    run_id=target.get("run_id"),
                    task_id=target.get("task_id"),
                    try_number=target.get("try_number"),
                    map_index=target.get("map_index"),
                )
        self._forget_dropped()
        if dropped:
            log.info("dynamic roles revoked", extra={"fields": {"kind": kind, "roles": dropped}})
        return dropped

    # -- the route ------------------------------------------------------------------------
    def handler(self, service: Any, on_event: EventSink) -> Callable[..., Awaitable[web.Response]]:
        """``POST /v1/db-role`` bound to a TokenService and the audit sink."""

        async def handle(request: web.Request) -> web.Response:
            ctx: dict[str, Any] = {"remote": request.remote}
            try:
                body = await read_body(request)
                grant = await service.authorize(request, body, ctx)
                resource = grant.resource
                roles = self.roles.get(resource.name)
                if roles is None:
                    raise OAuthError(
                        400,
                        "invalid_target",
                        "resource does not offer dynamic roles",
                        reason="not_dynamic_roles",
                        body={"resource": resource.name},
                    )
                _token, claims = service.issuer.mint(grant.identity, resource.name, grant.ttl)
                cred = await self._issue(roles, claims)
            except OAuthError as exc:
                await service._refused(exc, ctx)
                return exc.response()
            grants = [f"{perm} ON {target}" for perm, target in cred.grants]
            try:
                await _maybe_await(
                    on_event(
                        "token_issued",
                        **ctx,
                        jti=claims.jti,
                        ttl=grant.ttl,
                        rule=grant.decision.rule,
                        principal=claims.sub,
                        expires_at=claims.exp,
                        dynamic_role=cred.username,
                        grants=grants,
                    )
                )
            except Exception as exc:
                # No audit record, no role: drop it before anyone could log in with it.
                log.error(
                    "dynamic role not issued: audit failed",
                    extra={"fields": {"error": type(exc).__name__}},
                )
                with contextlib.suppress(Exception):
                    await roles.revoke(cred.username)
                metrics.TOKEN_REJECTIONS.labels(reason="audit_unavailable").inc()
                return OAuthError(
                    503, "temporarily_unavailable", "audit unavailable", reason="audit_unavailable"
                ).response()
            self._claims[(resource.name, cred.username)] = claims
            metrics.TOKENS_ISSUED.labels(deployment=claims.deployment, resource=resource.name).inc()
            fields = {**ctx, "jti": claims.jti, "role": cred.username, "grants": len(grants)}
            log.info("dynamic role issued", extra={"fields": fields})
            return web.json_response(
                {
                    "username": cred.username,
                    "password": cred.password,
                    "expires_at": cred.expires_at,
                    "expires_in": grant.ttl,
                    "contact_points": list(resource.contact_points),
                    "keyspace": resource.keyspace,
                    "grants": grants,
                    "principal": claims.sub,
                    "jti": claims.jti,
                },
                headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
            )

        return handle

    async def _issue(self, roles: DynamicRoles, claims: Claims) -> Any:
        try:
            return await roles.issue(claims, require_grants=True)
        except NoGrants:
            raise OAuthError(
                403,
                "access_denied",
                "policy grants this task nothing on any table of the resource",
                reason="no_grants",
                principal=claims.sub,
                body={"principal": claims.sub, "resource": roles.resource.name,
                      "reason": "no_grants"},
            ) from None  # fmt: skip
        except (UpstreamError, CredentialError, OSError) as exc:
            # The upstream message may echo a statement; say only what kind of failure it was.
            log.error("dynamic role not created", extra={"fields": {
                "resource": roles.resource.name, "error": type(exc).__name__}})  # fmt: skip
            raise OAuthError(
                503, "temporarily_unavailable", "cluster unavailable", reason="upstream_unavailable"
            ) from None


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
