"""The Cosmos DB side of the control plane: the task key route and the connection template.

A ``profile: cosmos`` resource is reached by the stock SDK with the task's token in the
endpoint path and a *task key* (derived from the token's ``jti``, never the account key) as
the master key. :func:`connection_template` is the ``azure_cosmos`` Connection the secrets
backend fills in; ``POST /v1/cosmos-key`` (:func:`task_key_handler`) gives it the task key
of a token this deployment holds.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lockgate.config import HttpResource
from lockgate.control.context import ControlContext
from lockgate.control.offers import offer_of
from lockgate.control.token import Handler
from lockgate.credentials import cosmos as sig
from lockgate.errors import AuthenticationError
from lockgate.gateway.http.profiles.cosmos import TOKEN_SEGMENT

ROUTE = "/v1/cosmos-key"
KEY_PLACEHOLDER = "{lockgate_cosmos_key}"


def connection_template(resource: HttpResource, base_url: str) -> dict[str, Any]:
    """An ``azure_cosmos`` connection: endpoint with the token prefix, the task key."""
    s = resource.cosmos
    fields = {
        "database_name": s.database,
        "collection_name": s.container,
        "partition_key": default_partition_key(s.partition_key),
    }
    extra = {k: v for k, v in fields.items() if v}
    return {
        "conn_type": "azure_cosmos",
        "login": f"{base_url.rstrip('/')}/{TOKEN_SEGMENT}/{{lockgate_token}}/",
        "password": KEY_PLACEHOLDER,
        "extra": extra,
    }


def default_partition_key(configured: str | None) -> str | None:
    """The ``partition_key`` extra for ``cosmos.partition_key``: a *value*, or nothing.

    ``AzureCosmosDBHook`` sends that extra as the partition key value of every call that
    names none (point reads, queries, deletes). A container's partition key *path*
    (``/region``; Cosmos DB paths always start with ``/``) is no value: sent as one, every
    read without an explicit key matched no document and the hook answered ``None``. So a
    path is not handed out (the hook then asks for the key: "Partition key must be
    specified"); a value (``eu``) is.
    """
    if not configured or configured.startswith("/"):
        return None
    return configured


def task_key_handler(ctx: ControlContext) -> Handler:
    """``POST /v1/cosmos-key``: the task key of a token, for the deployment that holds it.

    The deployment authenticates as for ``/v1/token`` and sends ``token``; the token must be
    valid, for a ``profile: cosmos`` resource, and minted for this deployment.
    """

    async def handle(deployment: str, body: dict[str, str]) -> web.Response:
        try:
            claims = ctx.verifier.verify_any_audience(str(body.get("token", "")))
        except AuthenticationError as exc:
            return await ctx.refuse(
                400, "invalid_token", str(exc.reason),
                reason=f"token_{exc.reason}", route=ROUTE, deployment=deployment,
            )  # fmt: skip
        resource = ctx.config.resource(str(claims.aud))
        if resource is None or not offer_of(resource).task_keys or claims.deployment != deployment:
            return await ctx.refuse(
                400, "invalid_target", "not a Cosmos token of yours",
                reason="not_own_cosmos_token", route=ROUTE, deployment=deployment,
                jti=claims.jti,
            )  # fmt: skip
        secret = sig.task_key_secret(ctx.master_key, resource.name)
        return web.json_response(
            {"key": sig.derive_task_key(secret, claims.jti), "jti": claims.jti},
            headers={"Cache-Control": "no-store"},
        )

    return ctx.deployment_route(ROUTE, handle)
