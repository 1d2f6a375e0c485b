"""Attacks on the control listener's routes: every deployment-called route authenticates
the deployment first and records every refusal; tokens of another deployment, another
resource or revoked ones get nothing; no secret is compared with ``==``."""

from __future__ import annotations

import ast
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockgate.identity import TaskIdentity
from lockgate.server import Gateway
from tests.control._stack import basic, deployment, post_form, running_gateway

SECRET = "attack-secret-Zr7"
OTHER_SECRET = "other-secret-Pq4"
POLICY = """\
rules:
  - id: everyone
    effect: allow
    principals: ["airflow:*/*"]
    actions: [read]
    resources: ["*"]
"""
TASK = {"dag_id": "etl", "task_id": "load", "run_id": "r1", "try_number": "1"}
ROUTES = ["/v1/token", "/v1/revoke", "/v1/catalog", "/v1/poll-token", "/v1/db-role",
          "/v1/cosmos-key"]  # fmt: skip


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(
        tmp_path,
        policy=POLICY,
        deployments=[deployment("prod", SECRET), deployment("other", OTHER_SECRET)],
        resources=[
            {"name": "api", "kind": "http", "upstream": "http://127.0.0.1:9", "conn_id": "api"},
            {
                "name": "cosmos",
                "kind": "http",
                "upstream": "http://127.0.0.1:9",
                "conn_id": "cosmos_default",
                "profile": "cosmos",
                "cosmos": {"database": "sales", "container": "orders"},
            },
        ],
    ) as gateway:
        yield gateway


def records(gw: Gateway) -> list[Any]:
    gw.audit.flush(5.0)
    return list(gw.audit.search())


# -- deployment authentication on every route -------------------------------------------------
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "auth",
    [None, basic("prod", "wrong"), basic("nobody", SECRET), {"Authorization": "Bearer x.y.z"}],
    ids=["none", "wrong-secret", "unknown-deployment", "bearer"],
)
async def test_every_deployment_route_refuses_an_unauthenticated_caller_and_records_it(
    gw: Gateway, route: str, auth: dict[str, str] | None
) -> None:
    status, body = await post_form(gw, route, auth, resource="cosmos", token="x", **TASK)
    assert status in (400, 401), body
    assert "access_token" not in body and "key" not in body and "connections" not in body
    denied = [r for r in records(gw) if r.decision == "deny"]
    assert denied, "the refusal was not recorded"
    assert SECRET not in repr(denied)


# -- the Cosmos DB task key -----------------------------------------------------------------
def _mint(gw: Gateway, deployment: str, resource: str) -> tuple[str, Any]:
    return gw.issuer.mint(TaskIdentity(deployment, "etl", "load", "r1", 1), resource, 600)


async def test_a_task_key_is_given_only_for_the_callers_own_cosmos_token(gw: Gateway) -> None:
    mine, claims = _mint(gw, "prod", "cosmos")
    status, body = await post_form(gw, "/v1/cosmos-key", basic("prod", SECRET), token=mine)
    assert status == 200 and body["jti"] == claims.jti
    theirs, _ = _mint(gw, "other", "cosmos")
    status, body = await post_form(gw, "/v1/cosmos-key", basic("prod", SECRET), token=theirs)
    assert status == 400 and "key" not in body
    not_cosmos, _ = _mint(gw, "prod", "api")
    status, body = await post_form(gw, "/v1/cosmos-key", basic("prod", SECRET), token=not_cosmos)
    assert status == 400 and "key" not in body
    reasons = [r.reason for r in records(gw) if r.decision == "deny"]
    assert reasons.count("not_own_cosmos_token") == 2


async def test_no_task_key_for_a_revoked_token(gw: Gateway) -> None:
    token, claims = _mint(gw, "prod", "cosmos")
    status, _ = await post_form(gw, "/v1/revoke", basic("prod", SECRET), jti=claims.jti)
    assert status == 200
    status, body = await post_form(gw, "/v1/cosmos-key", basic("prod", SECRET), token=token)
    assert status == 400 and "key" not in body
    denied = [r for r in records(gw) if r.decision == "deny"]
    assert denied and denied[-1].reason == "token_revoked"


async def test_another_deployment_cannot_revoke_a_token_it_does_not_hold(gw: Gateway) -> None:
    """Revocation by jti is scoped to the caller's own tokens."""
    token, claims = _mint(gw, "prod", "cosmos")
    status, _ = await post_form(gw, "/v1/revoke", basic("other", OTHER_SECRET), jti=claims.jti)
    assert status == 200  # the same answer either way: a jti is no secret
    assert gw.verifier.verify(token, "cosmos").jti == claims.jti


# -- the managed identity endpoint ----------------------------------------------------------
async def test_the_identity_endpoint_refuses_without_a_token_and_records_it(gw: Gateway) -> None:
    url = (
        f"http://127.0.0.1:{gw.control_port}/msi/token?api-version=2019-08-01"
        "&resource=https://management.azure.com"
    )
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 400  # no resource serves that audience in this catalog
        assert "access_token" not in await r.json()
    assert [r for r in records(gw) if r.decision == "deny"]


# -- secrets are compared in constant time --------------------------------------------------
# A variable holding a secret value (not a kind, a length or a constant naming one).
_SECRETISH = re.compile(
    r"(?:^|_)(?:secret|password|digest|signature|hmac|mac|presented|expected|token)$"
)
_CHECKED = ("control", "identity", "credentials", "gateway")


def _name_of(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name_of(node.func)
    if isinstance(node, ast.Subscript):
        return _name_of(node.value)
    return ""


def equality_on_secrets(source: str) -> list[tuple[int, list[str]]]:
    """(line, operand names) of each ``==``/``!=`` with a secret-named operand."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        if any(isinstance(o, ast.Constant) for o in operands):
            continue  # compared with a literal: a kind, not a secret value
        names = [_name_of(o) for o in operands]
        if any(n and not n.isupper() and _SECRETISH.search(n) for n in names):
            found.append((node.lineno, names))
    return found


def test_the_equality_scan_finds_what_it_is_for() -> None:
    source = (
        "if presented == expected: pass\n"
        "if dep.proof.secret != given: pass\n"
        "if hashlib.sha256(x).hexdigest() == digest: pass\n"
        "if kind == 'secret': pass\n"  # a literal: a kind
        "if len(signature) != SIG_LEN: pass\n"  # a length
    )
    assert [line for line, _ in equality_on_secrets(source)] == [1, 2, 3]


def test_no_secret_is_compared_with_equality() -> None:
    """``==``/``!=`` on a secret-named operand leaks its prefix through timing: the control
    plane, identity, credentials and the engines use :func:`hmac.compare_digest`."""
    root = Path(__file__).resolve().parents[2] / "src" / "lockgate"
    found = [
        f"{path.relative_to(root)}:{line}: {names}"
        for package in _CHECKED
        for path in sorted((root / package).rglob("*.py"))
        for line, names in equality_on_secrets(path.read_text())
    ]
    assert not found, "\n".join(found)
