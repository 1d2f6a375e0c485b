"""Cosmos DB shapes: the error body the SDK shows, and the account discovery rewrite."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lockgate.gateway.http.profiles.cosmos.classify import ACCOUNT
from lockgate.gateway.http.profiles.cosmos.classify import json_or_none as _json

Headers = Sequence[tuple[bytes, bytes]]


def header(headers: Headers, name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def db_container(obj: str) -> dict[str, str]:
    if obj == ACCOUNT:
        return {}
    db, _, container = obj.partition("/")
    return {"db": db, "container": container} if container else {"db": db}


def error_body(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """A Cosmos-shaped error around the gateway's own answer: the SDK puts ``message`` in
    its exception text."""
    error = str(body.get("error"))
    if error == "forbidden":
        operation = body.get("operation")
        what = f"{body.get('object')} ({operation})" if operation else body.get("object")
        return {
            "code": "Forbidden",
            "message": f"Lockgate denied {body.get('action')} on {what} for "
            f"{body.get('principal')}: {body.get('reason')}",
            "lockgate": {
                k: body.get(k) for k in ("principal", "action", "resource", "object", "rule")
            },
        }
    if error == "unauthorized":
        reason = body.get("reason")
        message = (
            "Lockgate: the endpoint must carry a task token (/_t/<token>/)"
            if reason == "missing"
            else f"Lockgate refused the request: {reason}"
        )
        return {"code": "Unauthorized", "message": message}
    if error == "throttled":
        return {
            "code": "TooManyRequests",
            "message": f"Lockgate: {body.get('principal')} is over quota {body.get('limit')} "
            f"on {body.get('resource')} ({body.get('kind')}); retry after "
            f"{body.get('retry_after')} s",
            "lockgate": {k: body.get(k) for k in ("principal", "action", "resource", "object",
                                                  "limit", "kind", "retry_after")},
        }  # fmt: skip
    if error == "body_too_large":
        return {"code": "RequestEntityTooLarge", "message": "request body too large"}
    if status >= 500:
        return {"code": "BadGateway", "message": f"Lockgate: {error}"}
    # a classification refusal: its slug is already a Cosmos code (BadRequest, ...)
    return {"code": error, "message": str(body.get("reason") or error)}


def rewrite_discovery(body: bytes, headers: Headers, base: str) -> tuple[Headers, bytes]:
    """The account document with every ``databaseAccountEndpoint`` pointing at ``base``."""
    data = _json(body)
    if not isinstance(data, dict):
        return headers, body

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: base if k == "databaseAccountEndpoint" and isinstance(v, str) else walk(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = json.dumps(walk(data), separators=(",", ":")).encode()
    kept = tuple((k, v) for k, v in headers if k.lower() not in (b"content-encoding", b"etag"))
    return kept, out
