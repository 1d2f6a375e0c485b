"""The schemas of the control API's OpenAPI document: request fields and answer bodies.

Each mirrors what a handler reads or writes (:mod:`lockgate.control.token` and its siblings,
:func:`lockgate.identity.parse_body`, ``task_request`` and ``revoke_target``); the document
itself (paths, security, examples) is :mod:`lockgate.control.openapi`.
"""

from __future__ import annotations

from typing import Any

from lockgate.identity.signing_key import ALGORITHMS as SIGNING_ALGORITHMS

Schema = dict[str, Any]


def ref(name: str) -> Schema:
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
        "properties": {"connections": {"type": "array", "items": ref("CatalogEntry")}},
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
            "poll": {
                "type": "boolean",
                "description": "Poll tokens offered (/v1/poll-token) (Databricks, ARM).",
            },
            "trigger": _string(
                "task: a deferred operator's trigger gets a token of the deferred task try "
                "(plain http).",
                enum=["task"],
            ),
            "cosmos_key": {"type": "boolean", "description": "Task key needed (/v1/cosmos-key)."},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "trigger_extra": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "ARM: added to a trigger's connection extra, {lockgate_dag_run} "
                "= <dag_id>/<run_id>: managed_identity_client_id lockgate-run:<dag_id>/<run_id> "
                "makes /msi/token narrow the poll token to that DAG run.",
            },
            "upstream_ca": _string("PEM CA of the database (public)."),
        },
    },
    "DbRoleResponse": {
        "type": "object",
        "description": "The role, and where to log in: contact_points and keyspace (cql) or "
        "host, port, database and TLS settings (postgres).",
        "required": ["username", "password", "expires_at", "expires_in", "grants", "jti"],
        "properties": {
            "username": {"type": "string"},
            "password": {"type": "string"},
            "expires_at": {"type": "number"},
            "expires_in": {"type": "integer"},
            "grants": {"type": "array", "items": {"type": "string"}},
            "principal": {"type": "string"},
            "jti": {"type": "string"},
            "contact_points": {
                "type": "array",
                "items": {"type": "string"},
                "description": "cql: where to connect (host:port).",
            },
            "keyspace": {"type": ["string", "null"], "description": "cql: the keyspace."},
            "host": _string("postgres: the database server."),
            "port": {"type": "integer", "description": "postgres: its port."},
            "database": _string("postgres: the database."),
            "sslmode": _string("postgres: libpq sslmode, as the gateway connects."),
            "sslrootcert": _string("postgres: CA file for verify-full (system: the OS store)."),
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
            "principal": _string("airflow:<deployment>/<dag_id or @triggerer>/@poll"),
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
                    "required": ["kty", "kid", "alg", "use"],
                    "description": "A public key (RFC 7517/7518): OKP Ed25519 (crv, x), RSA "
                    "(n, e) or EC P-256 (crv, x, y); the verifier accepts it only for its alg.",
                    "properties": {
                        "kty": {"type": "string", "enum": ["OKP", "RSA", "EC"]},
                        "crv": {"type": "string", "enum": ["Ed25519", "P-256"]},
                        "x": {"type": "string"},
                        "y": {"type": "string"},
                        "n": {"type": "string"},
                        "e": {"type": "string"},
                        "kid": {"type": "string"},
                        "alg": {"type": "string", "enum": list(SIGNING_ALGORITHMS)},
                        "use": {"type": "string", "enum": ["sig"]},
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
            "id_token_signing_alg_values_supported": {
                "type": "array",
                "items": {"type": "string", "enum": list(SIGNING_ALGORITHMS)},
                "description": "Every algorithm Lockgate signs with (signing.algorithms, those "
                "signing.audiences maps to, those federated credentials need).",
            },
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
