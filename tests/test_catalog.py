"""``POST /v1/catalog`` on a running gateway: connection templates for a deployment that
proves who it is, and the token endpoint's own OAuth refusal for one that does not."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from lockgate.audit import AuditReader, AuditRow
from lockgate.demo.stack import LocalStack


def post(
    stack: LocalStack, path: str, form: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=str(stack.ca_file))
    req = urllib.request.Request(
        stack.control_url + path, data=urllib.parse.urlencode(form).encode(), headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def test_catalog_points_the_deployment_at_this_gateway(stack: LocalStack) -> None:
    status, _, body = post(
        stack, "/v1/catalog", {"client_id": "prod", "client_secret": stack.deployment_secret}
    )
    assert status == 200
    (entry,) = [c for c in body["connections"] if c["resource"] == "orders-api"]
    assert entry["conn_id"] == "orders_api" and entry["kind"] == "http"
    assert entry["connection"]["host"] == f"{stack.http_url}/orders-api"
    assert entry["connection"]["extra"] == {"Authorization": "Bearer {lockgate_token}"}
    assert stack.deployment_secret not in json.dumps(body)


TASK = {"resource": "orders-api", "dag_id": "finance_daily", "task_id": "t", "run_id": "r"}


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        ({"client_id": "prod", "client_secret": "not-the-secret"}, None),
        ({}, basic("prod", "not-the-secret")),
        ({}, None),
    ],
    ids=["wrong secret in the form", "wrong secret in basic auth", "no client authentication"],
)
def test_catalog_refuses_like_the_token_endpoint(
    stack: LocalStack, form: dict[str, str], headers: dict[str, str] | None
) -> None:
    """The oracle is ``/v1/token``: same status, error, headers that matter, and no
    connection leaks to a client that did not authenticate. The refusal is audited."""
    want_status, want_headers, want_body = post(stack, "/v1/token", {**form, **TASK}, headers)
    before = catalog_refusals(stack)
    status, got_headers, body = post(stack, "/v1/catalog", form, headers)
    assert want_status == 401
    assert (status, body) == (want_status, want_body)
    for name in ("Cache-Control", "WWW-Authenticate"):
        assert got_headers.get(name) == want_headers.get(name), name
    assert "connections" not in body
    (refusal,) = catalog_refusals(stack)[len(before) :]
    assert refusal.status == 401 and refusal.action == "authenticate" and refusal.reason
    assert "not-the-secret" not in json.dumps(refusal.to_dict())


def catalog_refusals(stack: LocalStack) -> list[AuditRow]:
    """The audited denials of ``/v1/catalog`` so far, oldest first."""
    assert stack.gateway.audit.flush(5.0)
    rows = AuditReader(stack.config.data_dir / "audit.db").search(
        decision="deny", event="auth_failed", limit=10_000
    )
    return [r for r in rows if r.detail.get("route") == "/v1/catalog"]
