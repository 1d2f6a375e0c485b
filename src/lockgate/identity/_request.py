"""Parsing and validation of token-service request bodies, and the OAuth2 error.

Rules: bodies are small (:data:`MAX_BODY`, the route enforces it while reading),
form-encoded or JSON, and a field may appear once (RFC 6749 §3.2). Airflow ids are checked
against Airflow's own shapes so a principal (``airflow:dep/dag/task``) can never be
ambiguous: dag and task ids may not hold ``/``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from lockgate.config import Deployment, LockgateConfig
from lockgate.identity.model import TaskIdentity

MAX_BODY = 16 * 1024
# Used with fullmatch only: "$" also matches before a final newline, and "finance_daily\n"
# would be another DAG to a block, a revocation or an exact policy glob, yet match "finance_*".
_ID_RE = re.compile(r"[\w.-]{1,250}", re.ASCII)  # Airflow's KEY_REGEX, bounded
_RUN_ID_RE = re.compile(r"[^\x00-\x1f\x7f]{1,250}")
_JTI_RE = re.compile(r"[0-9a-f]{32}")
_V = TypeVar("_V")


class OAuthError(Exception):
    """An OAuth2 error answer. ``reason`` is the metrics/audit slug; ``body`` extra JSON."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        *,
        reason: str,
        body: dict[str, Any] | None = None,
        basic_challenge: bool = False,
        **fields: Any,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description
        self.reason = reason
        self.body = body or {}
        self.basic_challenge = basic_challenge
        self.fields = fields  # for the audit event only, never secrets

    def payload(self) -> dict[str, Any]:
        """The JSON answer: ``{error, error_description}`` and the extra ``body``."""
        return {"error": self.error, "error_description": self.description, **self.body}


def invalid_request(description: str) -> OAuthError:
    return OAuthError(400, "invalid_request", description, reason="invalid_request")


def parse_body(ctype: str, raw: bytes) -> dict[str, str]:
    """A body's fields as strings; JSON ints are accepted and turned into strings."""
    if len(raw) > MAX_BODY:
        raise invalid_request("request body too large")
    if ctype == "application/json":
        try:
            data = json.loads(raw, object_pairs_hook=_fields_once)
        except (ValueError, RecursionError):  # RecursionError: a deeply nested body
            raise invalid_request("body is not valid JSON") from None
        if not isinstance(data, dict):
            raise invalid_request("body must be a JSON object")
        out: dict[str, str] = {}
        for k, v in data.items():
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, str | int):
                raise invalid_request(f"field {k[:40]!r} must be a string or an integer")
            out[k] = str(v)
        return out
    if ctype == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise invalid_request("body is not UTF-8") from None
        return _fields_once(pairs)
    raise invalid_request("expected application/x-www-form-urlencoded or application/json")


def _fields_once(pairs: list[tuple[str, _V]]) -> dict[str, _V]:
    """The fields of a form or a JSON object, each named once (RFC 6749 §3.2)."""
    out: dict[str, _V] = {}
    for k, v in pairs:
        if k in out:
            raise invalid_request(f"field {k[:40]!r} given more than once")
        out[k] = v
    return out


def _int_field(body: dict[str, str], name: str, default: int | None, lo: int, hi: int) -> int:
    raw = body.get(name)
    if raw is None or raw == "":
        if default is None:
            raise invalid_request(f"missing field {name!r}")
        return default
    if not re.fullmatch(r"-?[0-9]{1,9}", raw):
        raise invalid_request(f"field {name!r} must be an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise invalid_request(f"field {name!r} must be between {lo} and {hi}")
    return value


def _str_field(body: dict[str, str], name: str, pattern: re.Pattern[str]) -> str:
    value = body.get(name)
    if not value:
        raise invalid_request(f"missing field {name!r}")
    if not pattern.fullmatch(value):
        raise invalid_request(f"field {name!r} has an invalid value")
    return value


def task_request(
    config: LockgateConfig, deployment: str, body: dict[str, str]
) -> tuple[TaskIdentity, str, int | None]:
    """(identity, resource name, requested ttl) from a /v1/token body."""
    resource = body.get("resource")
    conn_id = body.get("conn_id")
    if bool(resource) == bool(conn_id):
        raise invalid_request("give exactly one of 'resource' or 'conn_id'")
    if conn_id:
        found = config.resource_for_conn_id(conn_id)
        if found is None:
            raise OAuthError(
                404, "unknown_resource", "no resource has this conn_id", reason="unknown_resource"
            )
        resource = found.name
    assert resource is not None
    identity = TaskIdentity(
        deployment=deployment,
        dag_id=_str_field(body, "dag_id", _ID_RE),
        task_id=_str_field(body, "task_id", _ID_RE),
        run_id=_str_field(body, "run_id", _RUN_ID_RE),
        try_number=_int_field(body, "try_number", None, 0, 100_000),
        map_index=_int_field(body, "map_index", -1, -1, 10_000_000),
    )
    requested = body.get("requested_ttl")
    ttl = None if not requested else _int_field(body, "requested_ttl", None, 1, 86_400)
    return identity, resource, ttl


def revoke_target(body: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """("jti" | "dag" | "task_try", fields) from a /v1/revoke body."""
    if body.get("jti"):
        if not _JTI_RE.fullmatch(body["jti"]):
            raise invalid_request("field 'jti' has an invalid value")
        return "jti", {"jti": body["jti"]}
    dag_id = _str_field(body, "dag_id", _ID_RE)
    if not body.get("task_id"):
        target: dict[str, Any] = {"dag_id": dag_id}
        if body.get("run_id"):
            target["run_id"] = _str_field(body, "run_id", _RUN_ID_RE)
        return "dag", target
    return "task_try", {
        "dag_id": dag_id,
        "task_id": _str_field(body, "task_id", _ID_RE),
        "run_id": _str_field(body, "run_id", _RUN_ID_RE),
        "try_number": _int_field(body, "try_number", None, 0, 100_000),
        "map_index": _int_field(body, "map_index", -1, -1, 10_000_000),
    }


def valid_airflow_id(value: str) -> bool:
    """A dag or task id as Airflow shapes them (no ``/``, no newline at its end)."""
    return _ID_RE.fullmatch(value) is not None


def valid_run_id(value: str) -> bool:
    return _RUN_ID_RE.fullmatch(value) is not None


def may_act_for(deployment: Deployment, dag_id: str) -> bool:
    return any(fnmatch.fnmatchcase(dag_id, pattern) for pattern in deployment.dags)
