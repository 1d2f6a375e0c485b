"""``POST /v1/db-role``: a per-task database role for clients that cannot use the gateway.

Strategy: the request is a ``/v1/token`` request (same client authentication, task
coordinates, delegation, attestation and mint policy, through
:meth:`TokenService.authorize`), for a resource with ``dynamic_roles: true`` (``kind: cql``
or ``kind: postgres``). Instead of returning the token, the route mints it only for its
claims (jti, exp) and asks that resource's role set (through
:class:`lockgate.gateway.dynamic_roles.DbRoles`) for a role granted exactly what policy
allows. The task then logs in to the database directly with the role's username and password
(Cassandra: the contact points; PostgreSQL: the resource's host, port and database, TLS as
the gateway itself connects). The role lives as long as the token would have: the sweeper
drops it at expiry, a revocation (the Airflow listener at task end, ``/v1/revoke`` or the
CLI) drops it at once.

Rules:

- Deny by default: a principal that may mint but is granted nothing on any table gets a 403,
  not an empty role. Any refusal is audited exactly like a refused token.
- The audit record (``token_issued``) names the role and its grants, never the password; an
  audit failure drops the role again and answers 503, as for tokens.
- A resource taken out of the catalog or changed while its role was being made gets no role:
  503 (retry against the new catalog), recorded as ``resource_removed`` or
  ``resource_changed`` as the engines record a login they refuse for the same cause.
- The catalog entry (:func:`catalog_entry`) is an Airflow Connection straight to the
  database with placeholders for the role; for a PostgreSQL resource verified against its
  own CA file it carries that CA (a certificate, public) for the worker to verify with.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from lockgate import _log
from lockgate.config import CqlResource, PostgresResource
from lockgate.control.context import ControlContext
from lockgate.control.token import Handler, error_response, read_body
from lockgate.errors import CredentialError, UpstreamError
from lockgate.gateway.cql.upstream import split_host_port
from lockgate.gateway.dynamic_roles import NoGrants, RoleCredential, RoleSet, RolesRetired
from lockgate.identity import Claims, OAuthError

log = _log.get("control.db_role")

ROUTE = "/v1/db-role"
MODE = "dynamic_role"
USER_PLACEHOLDER = "{lockgate_role_user}"
PASSWORD_PLACEHOLDER = "{lockgate_role_password}"  # noqa: S105 - a template marker
UPSTREAM_CA_PLACEHOLDER = "{lockgate_upstream_ca_file}"


def connection_template(r: CqlResource | PostgresResource) -> dict[str, Any]:
    """An Airflow Connection pointing straight at the database, the role left to fill in.

    Cassandra: Airflow's Connection has one port, so every contact point is taken to listen
    on the first one's port (CassandraHook splits ``host`` on commas). PostgreSQL: libpq's
    sslmode as the gateway connects (``verify-full`` with the resource's CA, or the system
    store when it names none).
    """
    if isinstance(r, PostgresResource):
        extra: dict[str, Any] = {"sslmode": r.tls}
        if r.tls == "verify-full":
            extra["sslrootcert"] = UPSTREAM_CA_PLACEHOLDER if r.ca_file is not None else "system"
        return {
            "conn_type": "postgres",
            "host": r.host,
            "port": r.port,
            "login": USER_PLACEHOLDER,
            "password": PASSWORD_PLACEHOLDER,
            "schema": r.database,
            "extra": extra,
        }
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


def catalog_entry(r: CqlResource | PostgresResource) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "conn_id": r.conn_id,
        "resource": r.name,
        "kind": r.kind,
        "mode": MODE,
        "connection": connection_template(r),
    }
    if isinstance(r, PostgresResource) and r.tls == "verify-full" and r.ca_file is not None:
        try:  # the worker verifies the server with it (a certificate: nothing secret)
            entry["upstream_ca"] = r.ca_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            # Without it the worker's libpq finds no CA and refuses: it fails closed.
            log.error("upstream CA file unreadable", extra={"fields": {
                "resource": r.name, "error": type(exc).__name__}})  # fmt: skip
    return entry


def db_role_handler(ctx: ControlContext) -> Handler:
    """``POST /v1/db-role`` over the control plane's collaborators (404 without roles)."""
    service = ctx.tokens

    async def handle(request: web.Request) -> web.Response:
        if ctx.db_roles is None:
            raise web.HTTPNotFound()
        audit: dict[str, Any] = {"remote": request.remote}
        try:
            body = await read_body(request)
            grant = await service.authorize(body, request.headers.get("Authorization"), audit)
            await service.take_mint(grant.deployment.name)  # before any role is created
            resource = grant.resource
            roles = ctx.db_roles.roles.get(resource.name)
            if roles is None:
                raise OAuthError(
                    400,
                    "invalid_target",
                    "resource does not offer dynamic roles",
                    reason="not_dynamic_roles",
                    body={"resource": resource.name},
                )
            _token, claims = service.issuer.mint(grant.identity, resource.name, grant.ttl)
            cred = await _issue(roles, claims, ctx)
        except OAuthError as exc:
            await service.refused(exc, audit)
            return error_response(exc)
        grants = [f"{perm} ON {target}" for perm, target in cred.grants]
        try:  # the record names the role and its grants, never the password
            detail = {**audit, "dynamic_role": cred.username, "grants": grants}
            if cred.skipped:  # allowed by name, withheld for what it would reach
                detail["skipped_grants"] = list(cred.skipped)
            await service.record_issued(grant, claims, detail)
        except OAuthError as exc:
            # No audit record, no role: drop it before anyone could log in with it.
            with contextlib.suppress(Exception):
                await roles.revoke(cred.username)
            return error_response(exc)
        ctx.db_roles.issued(resource.name, cred, claims)
        return web.json_response(
            {
                "username": cred.username,
                "password": cred.password,
                "expires_at": cred.expires_at,
                "expires_in": grant.ttl,
                **roles.details(),  # where to log in: contact points, host/port/database
                "grants": grants,
                "principal": claims.sub,
                "jti": claims.jti,
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    return handle


async def _issue(roles: RoleSet, claims: Claims, ctx: ControlContext) -> RoleCredential:
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
    except RolesRetired:
        # Before the generic upstream failure (it is one): the audit says why, and the
        # catalog read now (``config`` is replaced on a change) tells removed from changed.
        name = roles.resource.name
        removed = all(r.name != name for r in ctx.config.resources)
        raise OAuthError(
            503,
            "temporarily_unavailable",
            "the resource was removed" if removed else "the resource changed; try again",
            reason="resource_removed" if removed else "resource_changed",
            principal=claims.sub,
            body={"resource": name},
        ) from None
    except (UpstreamError, CredentialError, OSError) as exc:
        # The upstream message may echo a statement; say only what kind of failure it was.
        log.error("dynamic role not created", extra={"fields": {
            "resource": roles.resource.name, "error": type(exc).__name__}})  # fmt: skip
        raise OAuthError(
            503,
            "temporarily_unavailable",
            "database unavailable",
            reason="upstream_unavailable",
        ) from None
