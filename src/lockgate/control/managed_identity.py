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
- One identity selector is understood: ``client_id=lockgate-run:<dag_id>/<run_id>`` with
  a deployment-wide *poll token* (task ``@poll``) as the header. The Data Factory trigger's
  Azure credential reads the header from the triggerer's environment, which every trigger
  of the process shares, but takes ``client_id`` from its own connection's
  ``managed_identity_client_id`` extra: the secrets backend puts the trigger's DAG run
  there. The answer is then a new poll token narrowed to that DAG run (ids checked as
  ``/v1/poll-token`` checks them, delegation, policy, rate limit, recorded before it is
  handed out, living no longer than the header's token), so a trigger reads and cancels
  only the pipeline runs of its own DAG run. Any other ``client_id`` (or ``object_id``,
  ``mi_res_id``, ``principal_id``), or this one with a task's token, is refused.
- Refusals are ``{"error", "error_description"}`` with 400/401, never echoing the header.
  Each is audited (``denied`` for a bad request, ``auth_failed`` for a bad header; decision
  ``deny``, action ``authenticate``, ``route`` ``/msi/token`` in the detail, a reason slug),
  with the token's jti, deployment and DAG when its signature verified, as the engines do.

:func:`catalog_entry` builds what the secrets backend turns into the ``azure_data_factory``
connection (no secret in it) plus the environment it exports in the task process, and the
``trigger_extra`` a trigger's lookup adds to the connection (the DAG-run ``client_id``).
"""

from __future__ import annotations

import hmac
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from lockgate import _log, metrics
from lockgate.config import HttpResource, LockgateConfig
from lockgate.control.context import ControlContext, public_host
from lockgate.control.poll_token import issue_poll_token
from lockgate.control.token import Handler
from lockgate.errors import AuthenticationError
from lockgate.gateway.http.profiles.databricks import DEPLOYMENT_WIDE, POLL_TASK
from lockgate.identity import valid_airflow_id, valid_run_id
from lockgate.identity.model import Claims

log = _log.get("control.managed_identity")

API_VERSIONS = frozenset({"2019-08-01", "2017-09-01"})
PATH = "/msi/token"
TOKEN_PLACEHOLDER = "{lockgate_token}"  # noqa: S105 - a template marker, not a secret
#: ``client_id`` prefix that narrows a poll token to a DAG run: ``lockgate-run:<dag>/<run>``
RUN_CLIENT_ID = "lockgate-run:"
#: what the secrets backend replaces with ``<dag_id>/<run_id>`` in ``trigger_extra``
DAG_RUN_PLACEHOLDER = "{lockgate_dag_run}"
#: what the provider's async hook also needs before it passes ``managed_identity_client_id``
#: on (a tenant for workload identity, which the identity endpoint does not use)
TENANT_FALLBACK = "lockgate"
_OTHER_SELECTORS = ("object_id", "mi_res_id", "principal_id")


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


def run_scope(client_id: str) -> tuple[str, str] | None:
    """(dag_id, run_id) that ``client_id`` ``lockgate-run:<dag_id>/<run_id>`` names, or None
    when it is not of that form or either id is not one Airflow makes."""
    if not client_id.startswith(RUN_CLIENT_ID):
        return None
    dag_id, slash, run_id = client_id.removeprefix(RUN_CLIENT_ID).partition("/")
    if not slash or not valid_airflow_id(dag_id) or not valid_run_id(run_id):
        return None
    return dag_id, run_id


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
        client_ids = q.getall("client_id", [])
        scope = run_scope(client_ids[0]) if len(client_ids) == 1 else None
        if any(k in q for k in _OTHER_SELECTORS) or (client_ids and scope is None):
            # One identity per task: a user-assigned selector would be ignored, so refuse it.
            return await _refuse(
                ctx, 400, "invalid_request",
                f"identity selectors are not supported (but client_id={RUN_CLIENT_ID}"
                "<dag_id>/<run_id> with a poll token)", "identity_selector",
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
        if scope is not None:
            return await _narrowed(ctx, q.get("resource"), resource, claims, token, scope)
        log.info(
            "managed identity token served",
            extra={"fields": {"resource": resource, "principal": claims.sub, "jti": claims.jti}},
        )
        return _answer(token, claims, q.get("resource"))

    return handle


def _answer(token: str, claims: Claims, audience: str | None) -> web.Response:
    """The App Service protocol's answer carrying ``token``."""
    return web.json_response(
        {
            "access_token": token,
            "expires_on": int(claims.exp),
            "resource": audience,
            "token_type": "Bearer",
            "client_id": claims.sub,
        },
        headers={"Cache-Control": "no-store"},
    )


async def _narrowed(
    ctx: ControlContext,
    audience: str | None,
    resource: str,
    claims: Claims,
    token: str,
    scope: tuple[str, str],
) -> web.Response:
    """The answer to ``client_id=lockgate-run:<dag_id>/<run_id>``: a poll token of the
    header's deployment narrowed to that DAG run (the header's own when it is narrowed to
    exactly that run already)."""
    dag_id, run_id = scope
    if claims.task_id != POLL_TASK:
        return await _refuse(
            ctx, 400, "invalid_request", "a DAG-run client_id is served for a poll token only",
            "identity_selector", resource, claims,
        )  # fmt: skip
    if claims.dag_id != DEPLOYMENT_WIDE:
        if (claims.dag_id, claims.run_id) == scope:
            return _answer(token, claims, audience)
        return await _refuse(
            ctx, 401, "invalid_client", "the poll token is narrowed to another DAG run",
            "other_dag_run", resource, claims,
        )  # fmt: skip
    target = ctx.config.resource(resource)
    assert isinstance(target, HttpResource)  # resource_for() only names http resources
    issued = await issue_poll_token(
        ctx, claims.deployment, target, dag_id, run_id, route=PATH,
        max_ttl=max(1, int(claims.exp - time.time())),  # never outlives the header's token
    )  # fmt: skip
    if isinstance(issued, web.Response):
        return issued
    log.info(
        "managed identity poll token narrowed to a DAG run",
        extra={"fields": {"resource": resource, "principal": issued.principal,
                          "jti": issued.claims.jti, "from_jti": claims.jti}},
    )  # fmt: skip
    return _answer(issued.token, issued.claims, audience)


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
    # A trigger's lookup adds these to the extra: the provider's async hook then passes the
    # client_id to its managed identity credential, which sends it on /msi/token.
    trigger_extra = {
        "managed_identity_client_id": RUN_CLIENT_ID + DAG_RUN_PLACEHOLDER,
        "workload_identity_tenant_id": arm.tenant_id or TENANT_FALLBACK,
    }
    return {
        "conn_id": resource.conn_id,
        "resource": resource.name,
        "kind": resource.kind,
        "connection": {"conn_type": "azure_data_factory", "extra": extra},
        "env": env,
        "trigger_extra": trigger_extra,
    }


__all__ = [
    "DAG_RUN_PLACEHOLDER",
    "PATH",
    "RUN_CLIENT_ID",
    "audience_map",
    "catalog_entry",
    "msi_handler",
    "resource_for",
    "run_scope",
]
