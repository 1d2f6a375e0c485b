"""``POST /v1/poll-token``: a triggerer's token for polling runs a task started.

The deployment authenticates as for ``/v1/token`` and gets a short-lived token whose task is
``@poll``, for a pollable resource: Databricks (``DatabricksExecutionTrigger`` polls
``jobs/runs/get``) or Data Factory over ARM (``AzureDataFactoryTrigger`` reads the pipeline
run and cancels it when its polling fails). The profile lets such a token only *read* runs
(ARM: and cancel them) that this deployment's DAGs started through Lockgate, narrowed to one
DAG run when ``dag_id``/``run_id`` are given; it starts nothing. Policy must still grant
the ``@poll`` principal ``airflow:<deployment>/<dag or *>/@poll`` ``read`` on the runs
(Databricks ``run:*``; ARM the pipelines, plus ``run`` for the trigger's cancel).

:func:`issue_poll_token` is the one way a poll token is made: this route and the identity
endpoint (``/msi/token`` with ``client_id=lockgate-run:<dag_id>/<run_id>``, which narrows
an ARM trigger's deployment-wide token to its DAG run) both go through it.
"""

from __future__ import annotations

from aiohttp import web

from lockgate.config import AnyResource, HttpResource
from lockgate.control.context import ControlContext
from lockgate.control.offers import offer_of
from lockgate.control.token import Handler, error_response
from lockgate.gateway.http.profiles.databricks import ANY_RUN, DEPLOYMENT_WIDE, POLL_TASK
from lockgate.identity import (
    IssuedToken,
    OAuthError,
    TaskGrant,
    TaskIdentity,
    may_act_for,
    valid_airflow_id,
    valid_run_id,
)

ROUTE = "/v1/poll-token"


def pollable(resource: AnyResource | None) -> bool:
    """Whether a deferred operator's trigger polls ``resource`` with a poll token
    (Databricks runs, Data Factory pipeline runs over ARM)."""
    return offer_of(resource).poll_tokens


def poll_token_ttl(resource: HttpResource) -> int:
    """The longest a poll token for ``resource`` may live (its profile's setting)."""
    # the identity-endpoint profile (ARM) keeps its settings under ``arm``, as its catalog
    # entry reads them; Databricks under ``databricks``
    settings = resource.arm if offer_of(resource).identity_endpoint else resource.databricks
    assert settings is not None  # the config refuses an identity-endpoint profile without it
    return settings.poll_token_ttl


async def issue_poll_token(
    ctx: ControlContext,
    deployment: str,
    resource: HttpResource,
    dag_id: str = DEPLOYMENT_WIDE,
    run_id: str = "",
    try_number: int = 0,
    *,
    route: str = ROUTE,
    max_ttl: int | None = None,
) -> IssuedToken | web.Response:
    """A poll token of ``deployment`` for ``resource``, narrowed to DAG run ``dag_id`` /
    ``run_id`` when given (deployment-wide: :data:`DEPLOYMENT_WIDE`), living at most
    ``max_ttl`` too; or the (audited) refusal to answer instead."""
    config = ctx.config
    # Checked as /v1/token checks them: "finance_daily\n" would be delegated (finance_*)
    # and yet not the DAG a block names.
    if (dag_id != DEPLOYMENT_WIDE and not valid_airflow_id(dag_id)) or (
        run_id and not valid_run_id(run_id)
    ):
        return await ctx.refuse(
            400, "invalid_request", "dag_id or run_id has an invalid value",
            reason="invalid_request", route=route, deployment=deployment,
            resource=resource.name,
        )  # fmt: skip
    dep = config.deployment(deployment)
    if dag_id != DEPLOYMENT_WIDE and (dep is None or not may_act_for(dep, dag_id)):
        return await ctx.refuse(
            403, "access_denied", "dag not delegated",
            reason="dag_not_delegated", route=route, deployment=deployment,
            dag_id=dag_id, resource=resource.name,
        )  # fmt: skip
    identity = TaskIdentity(deployment, dag_id, POLL_TASK, run_id or ANY_RUN, try_number)
    ttl_cap = min(poll_token_ttl(resource), max_ttl or poll_token_ttl(resource))
    decision = ctx.mint_policy(identity, resource.name, ttl_cap)
    audit = {
        "deployment": deployment,
        "dag_id": dag_id,
        "task_id": POLL_TASK,
        "run_id": None if identity.run_id == ANY_RUN else identity.run_id,
        "resource": resource.name,
    }
    if not decision.allowed:
        return await ctx.refuse(
            403, "access_denied", decision.reason, reason=decision.reason, route=route,
            principal=identity.principal, rule=decision.rule, **audit,
        )  # fmt: skip
    assert dep is not None  # an authenticated deployment is a configured one
    ttl = max(1, min(decision.ttl, ttl_cap))
    grant = TaskGrant(dep, identity, resource, decision, ttl)
    try:  # one of the deployment's mints, as /v1/token's are
        await ctx.tokens.take_mint(deployment)
    except OAuthError as exc:
        await ctx.tokens.refused(exc, {**audit, "route": route})
        return error_response(exc)
    try:  # minted and recorded as /v1/token's tokens are
        return await ctx.tokens.issue(grant, {**audit, "route": route, "reason": "poll token"})
    except OAuthError as exc:  # the audit failed: no token
        return error_response(exc)


def poll_token_handler(ctx: ControlContext) -> Handler:
    """The ``/v1/poll-token`` handler over the control plane's collaborators."""

    async def handle(deployment: str, body: dict[str, str]) -> web.Response:
        config = ctx.config
        resource = config.resource(body.get("resource", "")) or config.resource_for_conn_id(
            body.get("conn_id", "")
        )
        if not isinstance(resource, HttpResource) or not pollable(resource):
            return await ctx.refuse(
                400, "invalid_target", "not a pollable resource",
                reason="not_pollable", route=ROUTE, deployment=deployment,
            )  # fmt: skip
        try:
            try_number = int(body.get("try_number") or 0)
        except ValueError:
            try_number = 0
        issued = await issue_poll_token(
            ctx, deployment, resource, body.get("dag_id") or DEPLOYMENT_WIDE,
            body.get("run_id", ""), try_number,
        )  # fmt: skip
        if isinstance(issued, web.Response):
            return issued
        return web.json_response(
            {"access_token": issued.token, "token_type": "Bearer", "expires_in": issued.ttl,
             "jti": issued.claims.jti, "principal": issued.principal},
            headers={"Cache-Control": "no-store"},
        )  # fmt: skip

    return ctx.deployment_route(ROUTE, handle)
