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
from lockgate.identity import MAX_BODY

PATH = "/openapi.json"
Schema = dict[str, Any]

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


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _int_field(description: str, minimum: int, maximum: int, *, optional: bool = True) -> Schema:
    """A field the body may carry as an integer (JSON) or its decimal string (form, JSON);
    an optional one may also be empty (absent)."""
    digits = r"-?[0-9]{1,9}"
    return {
        "description": description,
        "oneOf": [
            {"type": "integer", "minimum": minimum, "maximum": maximum},
            {"type": "string", "pattern": f"^({digits})?$" if optional else f"^{digits}$"},
        ],
    }


AIRFLOW_ID = r"^[A-Za-z0-9_.-]{1,250}$"  # identity._request: Airflow's KEY_REGEX, ASCII
RUN_ID = r"^[^\u0000-\u001f\u007f]{1,250}$"

CLIENT_AUTH_FIELDS: Schema = {
    "client_id": _string("Deployment name (client_secret_post, or with an assertion)."),
    "client_secret": _string("Deployment secret (client_secret_post); not with Basic."),
    "client_assertion_type": _string(
        "private_key_jwt", enum=["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    ),
    "client_assertion": _string("A JWT signed with the deployment's private key."),
    "grant_type": _string(
        "Omitted, client_credentials, or token exchange (then subject_token authenticates).",
        enum=["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"],
    ),
    "subject_token": _string("RFC 8693: an OIDC token from a trusted issuer."),
    "subject_token_type": _string(
        "RFC 8693 subject token type.",
        enum=["urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"],
    ),
}

TASK_FIELDS: Schema = {
    "resource": _string("Resource name (exactly one of resource and conn_id)."),
    "conn_id": _string("Airflow conn_id of the resource (instead of resource)."),
    "dag_id": _string("DAG id; the deployment must be delegated it.", pattern=AIRFLOW_ID),
    "task_id": _string("Task id.", pattern=AIRFLOW_ID),
    "run_id": _string("DAG run id.", pattern=RUN_ID),
    "try_number": _int_field("Task try number.", 0, 100_000, optional=False),
    "map_index": _int_field("Map index of a mapped task (-1: not mapped).", -1, 10_000_000),
    "requested_ttl": _int_field("Wanted lifetime in seconds (capped by policy).", 1, 86_400),
}


def _body_schema(title: str, fields: Schema, required: tuple[str, ...] = ()) -> Schema:
    schema: Schema = {
        "title": title,
        "type": "object",
        "properties": fields,
        # other fields are ignored, but read like every field: a string or an integer
        "additionalProperties": {"type": ["string", "integer", "null"]},
    }
    if required:
        schema["required"] = list(required)
    return schema


def _token_example(**extra: str) -> dict[str, str]:
    return {"resource": EXAMPLE_RESOURCE, **EXAMPLE_TASK, **extra}


SCHEMAS: dict[str, Schema] = {
    "OAuthError": {
        "type": "object",
        "description": "An RFC 6749 error; some refusals add principal, resource or reason.",
        "required": ["error", "error_description"],
        "properties": {
            "error": _string("OAuth2 error code.", examples=["access_denied"]),
            "error_description": _string("Human-readable reason (never a secret)."),
            "principal": _string("The principal refused."),
            "resource": _string("The resource asked for."),
            "reason": _string("Why, as the task should show it."),
        },
    },
    "TokenRequest": _body_schema(
        "TokenRequest",
        {**CLIENT_AUTH_FIELDS, **TASK_FIELDS},
        ("dag_id", "task_id", "run_id", "try_number"),
    ),
    "RevokeRequest": _body_schema(
        "RevokeRequest",
        {
            **CLIENT_AUTH_FIELDS,
            "jti": _string("Revoke this token of the deployment.", pattern=r"^[0-9a-f]{32}$"),
            "dag_id": TASK_FIELDS["dag_id"],
            "run_id": TASK_FIELDS["run_id"],
            "task_id": TASK_FIELDS["task_id"],
            "try_number": TASK_FIELDS["try_number"],
            "map_index": TASK_FIELDS["map_index"],
            "block": _string("true: block the DAG from minting (dag_id alone)."),
            "reason": _string("Free text shown to operators with a block."),
        },
    ),
    "DeploymentRequest": _body_schema("DeploymentRequest", CLIENT_AUTH_FIELDS),
    "PollTokenRequest": _body_schema(
        "PollTokenRequest",
        {
            **CLIENT_AUTH_FIELDS,
            "resource": TASK_FIELDS["resource"],
            "conn_id": TASK_FIELDS["conn_id"],
            "dag_id": _string("Narrow to this DAG (else deployment-wide)."),
            "run_id": _string("Narrow to this DAG run."),
            "try_number": {
                "type": ["string", "integer"],
                "description": "Task try number (recorded; not a number: 0).",
            },
        },
    ),
    "CosmosKeyRequest": _body_schema(
        "CosmosKeyRequest",
        {**CLIENT_AUTH_FIELDS, "token": _string("A Lockgate token this deployment holds.")},
        ("token",),
    ),
    "TokenResponse": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in", "principal", "jti"],
        "properties": {
            "access_token": _string("The Lockgate token (a JWT)."),
            "token_type": _string("Always Bearer.", enum=["Bearer"]),
            "expires_in": {"type": "integer", "minimum": 1},
            "issued_token_type": _string(
                "RFC 8693.", enum=["urn:ietf:params:oauth:token-type:jwt"]
            ),
            "principal": _string("airflow:<deployment>/<dag_id>/<task_id>"),
            "jti": _string("Token id (for revocation)."),
        },
    },
    "RevokeResponse": {
        "type": "object",
        "required": ["revoked"],
        "properties": {
            "revoked": _string("What was done.", enum=["jti", "dag", "task_try", "block"])
        },
    },
    "CatalogResponse": {
        "type": "object",
        "required": ["connections"],
        "properties": {"connections": {"type": "array", "items": _ref("CatalogEntry")}},
    },
    "CatalogEntry": {
        "type": "object",
        "required": ["conn_id", "resource", "kind", "connection"],
        "properties": {
            "conn_id": {"type": "string"},
            "resource": {"type": "string"},
            "kind": _string("Resource kind.", enum=["http", "cql", "postgres"]),
            "connection": {
                "type": "object",
                "description": "Airflow Connection fields; {lockgate_token} etc. are filled "
                "in on the worker.",
            },
            "mode": _string("dynamic_role: log in to the database directly (/v1/db-role)."),
            "poll": {"type": "boolean", "description": "Poll tokens offered (/v1/poll-token)."},
            "cosmos_key": {"type": "boolean", "description": "Task key needed (/v1/cosmos-key)."},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "upstream_ca": _string("PEM CA of the database (public)."),
        },
    },
    "DbRoleResponse": {
        "type": "object",
        "description": "Plus where to log in: contact_points (cql) or host/port/database "
        "(postgres).",
        "required": ["username", "password", "expires_at", "expires_in", "grants", "jti"],
        "properties": {
            "username": {"type": "string"},
            "password": {"type": "string"},
            "expires_at": {"type": "number"},
            "expires_in": {"type": "integer"},
            "grants": {"type": "array", "items": {"type": "string"}},
            "principal": {"type": "string"},
            "jti": {"type": "string"},
        },
    },
    "PollTokenResponse": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in", "jti", "principal"],
        "properties": {
            "access_token": {"type": "string"},
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "expires_in": {"type": "integer", "minimum": 1},
            "jti": {"type": "string"},
            "principal": _string("airflow:<deployment>/<dag_id or *>/@poll"),
        },
    },
    "CosmosKeyResponse": {
        "type": "object",
        "required": ["key", "jti"],
        "properties": {"key": _string("The task key (base64)."), "jti": {"type": "string"}},
    },
    "ManagedIdentityToken": {
        "type": "object",
        "required": ["access_token", "expires_on", "token_type"],
        "properties": {
            "access_token": _string("The task's own token (X-IDENTITY-HEADER), unchanged."),
            "expires_on": {"type": "integer"},
            "resource": {"type": "string"},
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "client_id": _string("The task's principal."),
        },
    },
    "Jwks": {
        "type": "object",
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kty", "kid"],
                    "properties": {
                        "kty": {"type": "string"},
                        "crv": {"type": "string"},
                        "x": {"type": "string"},
                        "kid": {"type": "string"},
                        "alg": {"type": "string"},
                        "use": {"type": "string"},
                    },
                },
            }
        },
    },
    "Discovery": {
        "type": "object",
        "required": ["issuer", "jwks_uri", "token_endpoint"],
        "properties": {
            "issuer": {"type": "string"},
            "jwks_uri": {"type": "string"},
            "token_endpoint": {"type": "string"},
            "revocation_endpoint": {"type": "string"},
            "grant_types_supported": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
    },
    "Readiness": {
        "type": "object",
        "required": ["ready", "checks", "problems"],
        "properties": {
            "ready": {"type": "boolean"},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
}

ERRORS = {
    400: "Malformed request or refused proof (invalid_request, invalid_grant, ...).",
    401: "Client authentication missing or failed (invalid_client).",
    403: "Not delegated, blocked, or denied by policy (access_denied).",
    404: "No such resource (unknown_resource).",
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


def _json(schema: Schema, description: str, example: Any = None) -> Schema:
    media: Schema = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {
        "description": description,
        "headers": NO_STORE_HEADER,
        "content": {"application/json": media},
    }


def _errors(*codes: int) -> dict[str, Schema]:
    return {str(c): _json(_ref("OAuthError"), ERRORS[c]) for c in codes}


def _deployment_post(
    summary: str,
    description: str,
    request: str,
    ok: Schema,
    codes: tuple[int, ...],
    example: dict[str, str],
    ok_example: Any = None,
) -> Schema:
    """A POST a deployment calls with its client authentication and a form or JSON body."""
    media = {"schema": _ref(request), "example": example}
    return {
        "post": {
            "summary": summary,
            "description": description,
            "operationId": summary.lower().replace(" ", "_").replace("'", ""),
            "security": CLIENT_SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": media, "application/json": media},
            },
            "responses": {"200": _json(ok, "Done.", ok_example), **_errors(*codes)},
        }
    }


def _get(summary: str, description: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {
        "get": {
            "summary": summary,
            "description": description,
            "operationId": summary.lower().replace(" ", "_").replace("'", ""),
            "security": [],
            "responses": responses,
            **extra,
        }
    }


def _plain(description: str) -> Schema:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _public_json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


TOKEN_EXAMPLE = {
    "access_token": "eyJhbGciOiJFZERTQSJ9...",
    "token_type": "Bearer",
    "expires_in": 900,
    "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
    "principal": EXAMPLE_PRINCIPAL,
    "jti": EXAMPLE_JTI,
}


def _paths() -> dict[str, Schema]:
    db_role = _deployment_post(
        "Database role",
        "A /v1/token request for a resource with dynamic_roles: instead of a token, a "
        "database role granted exactly what policy allows, dropped when the token would "
        "expire or is revoked. 404 as text/plain when no resource offers dynamic roles.",
        "TokenRequest",
        _ref("DbRoleResponse"),
        (400, 401, 403, 503),
        _token_example(),
    )
    db_role["post"]["responses"]["404"] = {
        "description": "No such resource, or dynamic roles are not served at all.",
        "content": {
            "application/json": {"schema": _ref("OAuthError")},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
    return {
        "/v1/token": _deployment_post(
            "Token",
            "Mint a task's Lockgate token: authenticate the deployment, check delegation, "
            "attestation and mint policy, record token_issued, answer. Also the RFC 8693 "
            "token exchange (grant_type token-exchange with an OIDC subject_token).",
            "TokenRequest",
            _ref("TokenResponse"),
            (400, 401, 403, 404, 503),
            _token_example(),
            TOKEN_EXAMPLE,
        ),
        "/v1/revoke": _deployment_post(
            "Revoke",
            "Revoke this deployment's tokens: one by jti, a DAG (or one run of it), one "
            "task try; or block a DAG from minting (block=true with dag_id alone).",
            "RevokeRequest",
            _ref("RevokeResponse"),
            (400, 401, 403),
            {"dag_id": EXAMPLE_TASK["dag_id"], "run_id": EXAMPLE_TASK["run_id"]},
            {"revoked": "dag"},
        ),
        "/v1/catalog": _deployment_post(
            "Catalog",
            "Every resource with a conn_id, as the secrets backend turns it into an Airflow "
            "Connection pointing at this gateway's listeners.",
            "DeploymentRequest",
            _ref("CatalogResponse"),
            (400, 401),
            {},
        ),
        "/v1/db-role": db_role,
        "/v1/poll-token": _deployment_post(
            "Poll token",
            "A triggerer's token (task @poll) that may only read runs this deployment "
            "started, narrowed to a DAG run when dag_id/run_id are given.",
            "PollTokenRequest",
            _ref("PollTokenResponse"),
            (400, 401, 403, 503),
            {"resource": "databricks", "dag_id": EXAMPLE_TASK["dag_id"]},
        ),
        "/v1/cosmos-key": _deployment_post(
            "Cosmos key",
            "The task key (derived from the token's jti, never the account key) of a "
            "Cosmos DB token this deployment holds.",
            "CosmosKeyRequest",
            _ref("CosmosKeyResponse"),
            (400, 401),
            {"token": "eyJhbGciOiJFZERTQSJ9..."},
        ),
        "/msi/token": _get(
            "Managed identity token",
            "The App Service managed identity protocol for stock Azure clients: answers the "
            "task's own token (X-IDENTITY-HEADER) when it was minted for the resource that "
            "serves the audience asked for.",
            {
                "200": _json(_ref("ManagedIdentityToken"), "The task's token."),
                "400": _json(_ref("OAuthError"), "Bad api-version, selector or audience."),
                "401": _json(_ref("OAuthError"), "Identity header missing or rejected."),
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
            ],
        ),
        "/.well-known/jwks.json": _get(
            "JWKS",
            "The public keys that verify Lockgate tokens (current and retiring).",
            {"200": _public_json(_ref("Jwks"), "The key set.")},
        ),
        "/.well-known/openid-configuration": _get(
            "OpenID configuration",
            "OIDC discovery metadata of this issuer.",
            {"200": _public_json(_ref("Discovery"), "Provider metadata.")},
        ),
        "/healthz": _get(
            "Liveness",
            "The process answers.",
            {"200": _public_json(_ref("Health"), "Alive.")},
        ),
        "/readyz": _get(
            "Readiness",
            "Ready to serve: audit writable, policy loaded, needed credentials and signing "
            "keys present. 503 lists the problems.",
            {
                "200": _public_json(_ref("Readiness"), "Ready."),
                "503": _public_json(_ref("Readiness"), "Not ready; problems say why."),
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
                "Refusals "
                "are OAuth2 error bodies and each is recorded in the audit trail."
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
