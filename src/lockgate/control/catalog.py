"""``POST /v1/catalog``: what the secrets backend turns into an Airflow Connection, per
conn_id, for a deployment that proves who it is.

Each entry names the resource and carries a connection template that points at this
gateway's listeners (the ports actually bound, so ``port: 0`` in tests works);
``{lockgate_token}`` and ``{lockgate_ca_file}`` are filled in on the Airflow worker. ARM
resources get the managed-identity endpoint, ``dynamic_roles`` cql resources a direct login,
Cosmos DB resources the task key flag, Databricks resources the poll flag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from lockgate.control import cosmos_key
from lockgate.identity import db_roles as db_role_route
from lockgate.identity import managed_identity as msi
from lockgate.identity.service import OAuthError

if TYPE_CHECKING:
    from lockgate.server import Gateway


def public_host(host: str) -> str:
    """The host a client dials for a listener bound to ``host`` (a wildcard is localhost)."""
    return "localhost" if host in ("0.0.0.0", "::") else host


def catalog_entries(gateway: Gateway, deployment: str) -> list[dict[str, Any]]:
    """Every resource with a ``conn_id``, as the secrets backend reads it."""
    out = []
    for r in gateway.config.resources:
        if not r.conn_id:
            continue
        if getattr(r, "profile", None) == "arm":  # identity endpoint + forward proxy
            out.append(msi.catalog_entry(gateway, r))
            continue
        if r.kind == "cql" and gateway.db_roles is not None and gateway.db_roles.serves(r.name):
            out.append(db_role_route.catalog_entry(r))  # the task logs in directly
            continue
        connection = connection_template(gateway, r)
        if connection is not None:
            extras: dict[str, Any] = (
                {"poll": True} if getattr(r, "profile", None) == "databricks" else {}
            )
            if getattr(r, "profile", None) == "cosmos":
                extras["cosmos_key"] = True  # the backend fetches the task key too
            out.append(
                {"conn_id": r.conn_id, "resource": r.name, "kind": r.kind,
                 "connection": connection, **extras}
            )  # fmt: skip
    return out


def connection_template(gateway: Gateway, r: Any) -> dict[str, Any] | None:
    """The Airflow Connection fields for resource ``r`` through ``gateway``; None for a
    resource no listener serves."""
    listeners = gateway.config.listeners
    if r.kind == "http" and getattr(r, "profile", None) == "cosmos":
        if r.listen is not None:
            port = gateway.mounted_ports.get(r.name) or r.listen.port
            base = f"{r.listen.scheme}://{public_host(r.listen.host)}:{port}"
        else:
            http = listeners.http
            host = public_host(http.host)
            base = f"{http.scheme}://{host}:{gateway.http_port or http.port}/{r.name}"
        return cosmos_key.connection_template(r, base)
    if r.kind == "http" and getattr(r, "listen", None) is not None:
        return _mounted_template(r, gateway.mounted_ports.get(r.name))
    if r.kind == "http":
        http = listeners.http
        base = f"{http.scheme}://{public_host(http.host)}:{gateway.http_port or http.port}"
        return {
            "conn_type": "http",
            "host": f"{base}/{r.name}",
            "extra": {"Authorization": "Bearer {lockgate_token}"},
        }
    cql = listeners.cql
    if r.kind == "cql" and cql is not None:
        extra: dict[str, Any] = {"protocol_version": 4}
        if cql.tls:
            extra["ssl_options"] = {"ca_certs": "{lockgate_ca_file}", "cert_reqs": 2}
        return {
            "conn_type": "cassandra",
            "host": public_host(cql.host),
            "port": gateway.cql_port or cql.port,
            "login": r.name,
            "password": "{lockgate_token}",
            "schema": r.keyspace or "",
            "extra": extra,
        }
    return None


def _mounted_template(resource: Any, port: int | None) -> dict[str, Any]:
    """A resource served at the root of its own listener. For ``profile: databricks`` that
    is a ``databricks`` connection in PAT mode (empty login, the Lockgate token as password),
    which the stock ``DatabricksHook`` sends as ``Authorization: Bearer <token>`` to
    ``<schema>://<host>:<port>/api/...``."""
    listen = resource.listen
    scheme = "https" if listen.tls else "http"
    host = public_host(listen.host)
    port = port or listen.port
    if resource.profile == "databricks":
        return {
            "conn_type": "databricks",
            "host": host,
            "port": port,
            "schema": scheme,
            "login": "",
            "password": "{lockgate_token}",
        }
    return {
        "conn_type": "http",
        "host": f"{scheme}://{host}:{port}",
        "extra": {"Authorization": "Bearer {lockgate_token}"},
    }


def catalog_handler(gateway: Gateway) -> Any:
    """The ``/v1/catalog`` handler bound to ``gateway``."""

    async def handle(request: web.Request) -> web.Response:
        try:
            deployment, _body = await gateway.token_service.authenticate_deployment(
                request, "/v1/catalog"
            )
        except OAuthError as exc:
            return exc.response()
        return web.json_response({"connections": catalog_entries(gateway, deployment)})

    return handle
