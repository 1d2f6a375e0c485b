"""``POST /v1/catalog``: what the secrets backend turns into an Airflow Connection, per
conn_id, for a deployment that proves who it is.

Each entry names the resource and carries a connection template that points at this
gateway's listeners (the ports actually bound, so ``port: 0`` in tests works);
``{lockgate_token}`` and ``{lockgate_ca_file}`` are filled in on the Airflow worker. What a
profile adds is asked of :func:`lockgate.control.offers.offer_of`, never read from its name:
resources behind the identity endpoint get it (and the forward proxy), resources with task
keys the ``cosmos_key`` flag, pollable ones (Databricks, ARM) the ``poll`` flag;
``dynamic_roles`` cql and postgres resources a direct login to the database
(:func:`.db_role.catalog_entry`). A plain http resource is marked ``"trigger": "task"``: a
deferred ``HttpOperator``'s trigger gets a token of the deferred task try itself, unless the
deployment attests task tries against its Airflow (a deferred try is not "running" there).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lockgate.config import AnyResource, CqlResource, HttpResource, PostgresResource
from lockgate.control import cosmos_key, db_role, managed_identity
from lockgate.control.context import ControlContext, public_host
from lockgate.control.offers import TOKEN, offer_of
from lockgate.control.poll_token import pollable
from lockgate.control.token import Handler

ROUTE = "/v1/catalog"
#: ``trigger`` of an entry whose deferred operator's trigger gets the task try's own token
TRIGGER_AS_TASK = "task"


def catalog_entries(ctx: ControlContext, deployment: str) -> list[dict[str, Any]]:
    """Every resource with a ``conn_id``, as the secrets backend reads it."""
    out = []
    dep = ctx.config.deployment(deployment)
    # A deferred task's trigger runs while the task instance is "deferred", which an
    # attesting deployment's Airflow would not confirm as running: no task token then.
    trigger_tokens = dep is not None and dep.airflow_api is None
    for r in ctx.config.resources:
        if not r.conn_id:
            continue
        offer = offer_of(r)
        if isinstance(r, HttpResource) and offer.identity_endpoint:
            entry = managed_identity.catalog_entry(ctx, r)  # + the forward proxy
            if pollable(r):
                entry["poll"] = True  # the trigger polls pipeline runs (/v1/poll-token)
            out.append(entry)
            continue
        if (
            isinstance(r, CqlResource | PostgresResource)
            and ctx.db_roles is not None
            and ctx.db_roles.serves(r.name)
        ):
            out.append(db_role.catalog_entry(r))  # the task logs in directly
            continue
        connection = connection_template(ctx, r)
        if connection is not None:
            extras: dict[str, Any] = {}
            if offer.poll_tokens:
                extras["poll"] = True  # a triggerer may poll its runs (/v1/poll-token)
            if offer.task_keys:
                extras["cosmos_key"] = True  # the backend fetches the task key too
            elif isinstance(r, HttpResource) and not offer.poll_tokens and trigger_tokens:
                # HttpTrigger sends the task's whole request from the triggerer: it gets a
                # token of the deferred task try itself (docs/airflow.md, "Deferrable")
                extras["trigger"] = TRIGGER_AS_TASK
            out.append(
                {"conn_id": r.conn_id, "resource": r.name, "kind": r.kind,
                 "connection": connection, **extras}
            )  # fmt: skip
    return out


def connection_template(ctx: ControlContext, r: AnyResource) -> dict[str, Any] | None:
    """The Airflow Connection fields for resource ``r`` through this gateway; None for a
    resource no listener serves."""
    listeners, ports = ctx.config.listeners, ctx.ports
    if isinstance(r, HttpResource):
        if r.listen is not None:  # served at the root of its own listener
            port = ports.mounted_ports.get(r.name) or r.listen.port
            scheme, host = r.listen.scheme, public_host(r.listen)
            if offer_of(r).task_keys:
                return cosmos_key.connection_template(r, f"{scheme}://{host}:{port}")
            return offer_of(r).root_connection(scheme, host, port)
        http = listeners.http
        base = f"{http.scheme}://{public_host(http)}:{ports.http_port or http.port}/{r.name}"
        if offer_of(r).task_keys:
            return cosmos_key.connection_template(r, base)
        return {"conn_type": "http", "host": base, "extra": {"Authorization": f"Bearer {TOKEN}"}}
    if isinstance(r, PostgresResource):
        return postgres_connection_template(ctx, r)
    cql = listeners.cql
    if cql is None:
        return None
    extra: dict[str, Any] = {"protocol_version": 4}
    if cql.tls:
        # The stock CassandraHook passes only ``ssl_options`` to the driver (no
        # ``ssl_context``); the driver builds its SSLContext from them. ``check_hostname``
        # makes it verify the gateway's name as well as its CA.
        extra["ssl_options"] = {
            "ca_certs": "{lockgate_ca_file}",
            "cert_reqs": 2,
            "check_hostname": True,
        }
    return {
        "conn_type": "cassandra",
        "host": public_host(cql),
        "port": ports.cql_port or cql.port,
        "login": r.name,
        "password": TOKEN,
        "schema": r.keyspace or "",
        "extra": extra,
    }


def postgres_connection_template(ctx: ControlContext, r: PostgresResource) -> dict[str, Any] | None:
    """An Airflow ``postgres`` Connection to the gateway's PostgreSQL listener: the database
    name selects the resource, the password is the task's token; the user name is not read
    by the gateway (``lockgate`` here). With TLS, libpq verifies the gateway's certificate
    and host name (``sslmode=verify-full``) against the CA file the worker was given."""
    pg = ctx.config.listeners.postgres
    if pg is None:
        return None
    extra: dict[str, Any] = (
        {"sslmode": "verify-full", "sslrootcert": "{lockgate_ca_file}"}
        if pg.tls is not None
        else {"sslmode": "disable"}
    )
    return {
        "conn_type": "postgres",
        "host": public_host(pg),
        "port": ctx.ports.postgres_port or pg.port,
        "login": "lockgate",
        "password": TOKEN,
        "schema": r.name,
        "extra": extra,
    }


def catalog_handler(ctx: ControlContext) -> Handler:
    """The ``/v1/catalog`` handler over the control plane's collaborators."""

    async def handle(deployment: str, _body: dict[str, str]) -> web.Response:
        return web.json_response({"connections": catalog_entries(ctx, deployment)})

    return ctx.deployment_route(ROUTE, handle)
