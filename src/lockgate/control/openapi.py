"""The control API's reference: the OpenAPI 3.1 document of every control-listener route.

The document lives here, in code next to the handlers it describes, and is served
unauthenticated at ``GET /openapi.json`` (like JWKS: it holds no secret and names no
resource). ``docs/control-api.md`` is rendered from it (:mod:`.openapi_markdown`;
``python -m lockgate.control.openapi_markdown`` prints it). Tests keep the three in step:
every route of :func:`lockgate.control.app.control_app` is in the document and vice versa,
the rendered page equals the committed file, and the running service answers as the
document says (schemathesis).

What the document states is what the handlers do: bodies are read by
:func:`lockgate.control.token.read_body` (form or JSON object, each field once, values
strings or integers, at most 16 KiB); deployments authenticate by client secret (Basic or in
the body), a private-key JWT assertion, or an OIDC token exchange (RFC 8693); refusals are
OAuth2 ``{error, error_description}`` bodies with ``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Any

from lockgate import __version__
from lockgate.control.openapi_schemas import SCHEMAS, Schema, ref
from lockgate.identity import MAX_BODY

PATH = "/openapi.json"

# Names the examples use (also the deployment the tests run the examples against).
EXAMPLE_DEPLOYMENT = "prod"
EXAMPLE_RESOURCE = "orders-api"
EXAMPLE_TASK = {
    "dag_id": "finance_daily",
    "task_id": "load_orders",
    "run_id": "scheduled__2026-01-01T00:00:00+00:00",
    "try_number": "1",
}
EXAMPLE_PRINCIPAL = "airflow:prod/finance_daily/load_orders"
EXAMPLE_JTI = "9f1c2e4b7a6d4c3e8b0a1f2e3d4c5b6a"


ERRORS = {
    400: "Malformed request or refused proof (invalid_request, invalid_grant, ...).",
    401: "Client authentication missing or failed (invalid_client).",
    403: "Not delegated, blocked, or denied by policy (access_denied).",
    404: "No such resource (unknown_resource).",
    429: "Over the deployment's mint rate, or cooling down after failed authentications "
    "(temporarily_unavailable; Retry-After says when to retry).",
    503: "Audit, policy, attestation or upstream unavailable (temporarily_unavailable).",
}

NO_STORE_HEADER = {
    "Cache-Control": {"schema": {"type": "string"}, "description": "no-store"},
}
# OpenAPI has no scheme for credentials in the body: the empty requirement stands for the
# body-borne methods of BODY_AUTHENTICATION (also under x-body-authentication).
CLIENT_SECURITY: list[dict[str, list[str]]] = [{"clientSecretBasic": []}, {}]
BODY_AUTHENTICATION: dict[str, dict[str, Any]] = {
    "client_secret_post": {
        "fields": ["client_id", "client_secret"],
        "description": "The deployment name and secret as body fields (not with Basic).",
    },
    "private_key_jwt": {
        "fields": ["client_assertion_type", "client_assertion", "client_id"],
        "description": "RFC 7523: a JWT signed with the deployment's private key; "
        "client_assertion_type urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
    },
    "token_exchange": {
        "fields": ["grant_type", "subject_token", "subject_token_type"],
        "description": "RFC 8693: grant_type urn:ietf:params:oauth:grant-type:token-exchange "
        "and an OIDC token of a trusted issuer (Entra ID, Kubernetes, ...) as subject_token.",
    },
}


Examples = dict[str, tuple[str, Any]]  # name -> (summary, value)


def _examples(examples: Examples) -> Schema:
    return {
        name: {"summary": summary, "value": value} for name, (summary, value) in examples.items()
    }


def _json(schema: Schema, description: str, examples: Examples | None = None) -> Schema:
    media: Schema = {"schema": schema}
    if examples:
        media["examples"] = _examples(examples)
    return {
        "description": description,
        "headers": NO_STORE_HEADER,
        "content": {"application/json": media},
    }


def _errors(*codes: int, examples: dict[int, Examples] | None = None) -> dict[str, Schema]:
    given = examples or {}
    return {str(c): _json(ref("OAuthError"), ERRORS[c], given.get(c)) for c in codes}


def _operation_id(summary: str) -> str:
    return summary.lower().replace(" ", "_")


def _deployment_post(
    summary: str,
    description: str,
    request: str,
    ok: Schema,
    codes: tuple[int, ...],
    examples: Examples,
    ok_examples: Examples | None = None,
) -> Schema:
    """A POST a deployment calls with its client authentication and a form or JSON body."""
    media = {"schema": ref(request), "examples": _examples(examples)}
    return {
        "post": {
            "summary": summary,
            "description": description,
            "operationId": _operation_id(summary),
            "security": CLIENT_SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": media, "application/json": media},
            },
            # every deployment route authenticates, which a failed-authentication cool-down
            # may refuse with 429
            "responses": {
                "200": _json(ok, "Done.", ok_examples),
                **_errors(*sorted({*codes, 429})),
            },
        }
    }


def _get(summary: str, description: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {
        "get": {
            "summary": summary,
            "description": description,
            "operationId": _operation_id(summary),
            "security": [],
            "responses": responses,
            **extra,
        }
    }


def _plain(description: str) -> Schema:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _public_json(schema: Schema, description: str, examples: Examples | None = None) -> Schema:
    media: Schema = {"schema": schema}
    if examples:
        media["examples"] = _examples(examples)
    return {"description": description, "content": {"application/json": media}}


A_TOKEN = "eyJhbGciOiJFZERTQSJ9..."  # noqa: S105 - an elided example, not a token
TOKEN_REQUESTS: Examples = {
    "client_secret": (
        "A task's token, the deployment authenticated with HTTP Basic",
        {"resource": EXAMPLE_RESOURCE, **EXAMPLE_TASK},
    ),
    "token_exchange": (
        "RFC 8693: the deployment proves itself with an OIDC token (workload identity)",
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": "$OIDC_TOKEN",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "conn_id": "orders_api",
            **EXAMPLE_TASK,
        },
    ),
}
TOKEN_ANSWER = {
    "access_token": A_TOKEN,
    "token_type": "Bearer",
    "expires_in": 900,
    "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
    "principal": EXAMPLE_PRINCIPAL,
    "jti": EXAMPLE_JTI,
}
POLICY_DENIED: Examples = {
    "policy_denied": (
        "No rule allows the task this resource",
        {
            "error": "access_denied",
            "error_description": "no rule matches",
            "principal": EXAMPLE_PRINCIPAL,
            "resource": EXAMPLE_RESOURCE,
            "reason": "no rule matches",
        },
    )
}
ROLE_ANSWER = {
    "username": "lg_3f9a1c2b7d6e5f40",
    "password": "<generated>",
    "expires_at": 1767226500.0,
    "expires_in": 900,
    "grants": ["SELECT ON sales.orders"],
    "principal": EXAMPLE_PRINCIPAL,
    "jti": EXAMPLE_JTI,
}


NOT_READY = {
    "ready": False,
    "checks": {
        "started": "ok",
        "audit": "ok",
        "policy": "ok",
        "credentials": "no value stored for orders-api-key (resource orders-api)",
        "signing_keys": "ok",
    },
    "problems": ["credentials: no value stored for orders-api-key (resource orders-api)"],
}


def _paths() -> dict[str, Schema]:
    db_role = _deployment_post(
        "Database role",
        "A /v1/token request for a resource with dynamic_roles: instead of a token, a "
        "database role granted exactly what policy allows, dropped when the token would "
        "expire or is revoked. 404 as text/plain when no resource offers dynamic roles.",
        "TokenRequest",
        ref("DbRoleResponse"),
        (400, 401, 403, 503),
        {"role": ("A role for a task", {"resource": "orders-pg", **EXAMPLE_TASK})},
        {
            "postgres": (
                "A PostgreSQL resource",
                {**ROLE_ANSWER, "host": "db.internal", "port": 5432, "database": "sales",
                 "sslmode": "verify-full", "sslrootcert": "system"},
            ),
            "cql": (
                "A Cassandra resource",
                {**ROLE_ANSWER, "contact_points": ["cass1.internal:9042"], "keyspace": "sales"},
            ),
        },
    )  # fmt: skip
    db_role["post"]["responses"]["404"] = {
        "description": "No such resource, or dynamic roles are not served at all.",
        "content": {
            "application/json": {"schema": ref("OAuthError")},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
    token = _deployment_post(
        "Token",
        "Mint a task's Lockgate token: authenticate the deployment, check delegation, "
        "attestation and mint policy, record token_issued, answer. Also the RFC 8693 "
        "token exchange (grant_type token-exchange with an OIDC subject_token).",
        "TokenRequest",
        ref("TokenResponse"),
        (400, 401, 403, 404, 503),
        TOKEN_REQUESTS,
        {"token": ("The task's token", TOKEN_ANSWER)},
    )
    token["post"]["responses"].update(_errors(403, examples={403: POLICY_DENIED}))
    return {
        "/v1/token": token,
        "/v1/revoke": _deployment_post(
            "Revoke",
            "Revoke this deployment's tokens: one by jti, a DAG (or one run of it), one "
            "task try; or block a DAG from minting (block=true with dag_id alone).",
            "RevokeRequest",
            ref("RevokeResponse"),
            (400, 401, 403),
            {
                "run": (
                    "Every token of one DAG run",
                    {"dag_id": EXAMPLE_TASK["dag_id"], "run_id": EXAMPLE_TASK["run_id"]},
                ),
                "jti": ("One token", {"jti": EXAMPLE_JTI}),
            },
            {"run": ("Done", {"revoked": "dag"})},
        ),
        "/v1/catalog": _deployment_post(
            "Catalog",
            "Every resource with a conn_id, as the secrets backend turns it into an Airflow "
            "Connection pointing at this gateway's listeners.",
            "DeploymentRequest",
            ref("CatalogResponse"),
            (400, 401),
            {"catalog": ("The deployment's catalog", {})},
            {
                "catalog": (
                    "One http resource",
                    {
                        "connections": [
                            {
                                "conn_id": "orders_api",
                                "resource": EXAMPLE_RESOURCE,
                                "kind": "http",
                                "connection": {
                                    "conn_type": "http",
                                    "host": "https://localhost:8443/orders-api",
                                    "extra": {"Authorization": "Bearer {lockgate_token}"},
                                },
                            }
                        ]
                    },
                )
            },
        ),
        "/v1/db-role": db_role,
        "/v1/poll-token": _deployment_post(
            "Poll token",
            "A triggerer's token (task @poll) for a pollable resource (Databricks, Data "
            "Factory over ARM) that may only read runs (ARM: read or cancel pipeline runs) "
            "this deployment's tasks started through Lockgate, narrowed to a DAG run when "
            "dag_id/run_id are given.",
            "PollTokenRequest",
            ref("PollTokenResponse"),
            (400, 401, 403, 503),
            {
                "dag_run": (
                    "Narrowed to one DAG run",
                    {
                        "resource": "databricks",
                        "dag_id": EXAMPLE_TASK["dag_id"],
                        "run_id": EXAMPLE_TASK["run_id"],
                    },
                )
            },
        ),
        "/v1/cosmos-key": _deployment_post(
            "Cosmos key",
            "The task key (derived from the token's jti, never the account key) of a "
            "Cosmos DB token this deployment holds.",
            "CosmosKeyRequest",
            ref("CosmosKeyResponse"),
            (400, 401),
            {"key": ("The key of a task's Cosmos DB token", {"token": A_TOKEN})},
        ),
        "/msi/token": _get(
            "Managed identity token",
            "The App Service managed identity protocol for stock Azure clients: answers the "
            "task's own token (X-IDENTITY-HEADER) when it was minted for the resource that "
            "serves the audience asked for. With client_id=lockgate-run:<dag_id>/<run_id> "
            "and a deployment-wide poll token as the header (a Data Factory trigger in the "
            "triggerer), answers a new poll token narrowed to that DAG run (policy, "
            "delegation and rate limit as /v1/poll-token; no longer-lived than the header).",
            {
                "200": _json(ref("ManagedIdentityToken"), "The token."),
                "400": _json(ref("OAuthError"), "Bad api-version, selector or audience."),
                "401": _json(ref("OAuthError"), "Identity header missing or rejected."),
                "403": _json(ref("OAuthError"), "DAG run poll token refused (policy, delegation)."),
                "429": _json(ref("OAuthError"), ERRORS[429]),
                "503": _json(ref("OAuthError"), "The token could not be recorded."),
            },
            security=[{"identityHeader": []}],
            parameters=[
                {
                    "name": "api-version",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "enum": ["2019-08-01", "2017-09-01"]},
                },
                {
                    "name": "resource",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "examples": ["https://management.azure.com"]},
                },
                {
                    "name": "client_id",
                    "in": "query",
                    "required": False,
                    "description": "Only lockgate-run:<dag_id>/<run_id>, with a poll token.",
                    "schema": {
                        "type": "string",
                        "pattern": "^lockgate-run:[^/]+/.+$",
                        "examples": ["lockgate-run:adf_load_orders/manual__2025-01-01"],
                    },
                },
            ],
        ),
        "/.well-known/jwks.json": _get(
            "JWKS",
            "The public keys that verify Lockgate tokens (current and retiring).",
            {"200": _public_json(ref("Jwks"), "The key set.")},
        ),
        "/.well-known/openid-configuration": _get(
            "OpenID configuration",
            "OIDC discovery metadata of this issuer.",
            {"200": _public_json(ref("Discovery"), "Provider metadata.")},
        ),
        "/healthz": _get(
            "Liveness",
            "The process answers.",
            {"200": _public_json(ref("Health"), "Alive.")},
        ),
        "/readyz": _get(
            "Readiness",
            "May a load balancer send traffic now: listeners started, the audit trail "
            "accepts records, the policy loaded, every credential a resource needs stored, "
            "the signing key loaded. Each check's outcome is in checks; 503 lists the "
            "problems (names only, never a secret). /healthz is liveness only.",
            {
                "200": _public_json(ref("Readiness"), "Ready."),
                "503": _public_json(
                    ref("Readiness"),
                    "Not ready; problems say why.",
                    {"no_credential": ("A credential was never stored", NOT_READY)},
                ),
            },
        ),
        "/metrics": _get(
            "Metrics",
            "Prometheus text exposition.",
            {"200": _plain("Prometheus metrics.")},
        ),
        PATH: _get(
            "OpenAPI document",
            "This document.",
            {"200": _public_json({"type": "object"}, "OpenAPI 3.1 document.")},
        ),
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the control listener."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lockgate control API",
            "version": __version__,
            "description": (
                "Routes of the control listener. Request bodies are "
                f"application/x-www-form-urlencoded or a JSON object (at most {MAX_BODY} "
                "bytes, each field once; JSON values are strings or integers, an integer "
                "read as its decimal string, null as absent). Unknown fields are ignored. "
                "Refusals are OAuth2 error bodies and each is recorded in the audit trail."
            ),
        },
        "paths": _paths(),
        "x-body-authentication": BODY_AUTHENTICATION,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "clientSecretBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "Deployment name and secret (client_secret_basic).",
                },
                "identityHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-IDENTITY-HEADER",
                    "description": "The task's own Lockgate token (IDENTITY_HEADER).",
                },
            },
        },
    }
