"""The running control listener answers as its OpenAPI document says (schemathesis).

A real gateway (control listener on 127.0.0.1, a free port) serves the document; every
operation is called with generated input, valid and invalid, each case once as generated
and once more with the deployment's valid client secret (when the operation takes client
authentication and the case carries none). Every answer must have a documented status,
content type, headers and body schema, and none may be a 5xx.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lockgate.control.openapi import (
    EXAMPLE_DEPLOYMENT,
    EXAMPLE_RESOURCE,
    EXAMPLE_TASK,
    PATH,
    document,
)
from lockgate.tlsgen import write_dev_ca
from tests.gateway.postgres.test_dynamic_roles import (
    DATABASE,
    GATEWAY_PASSWORD,
    GATEWAY_USER,
    prepare,
)
from tests.pgserver import PgServer

from ._stack import basic, deployment, running_gateway

SECRET = "conformance-secret-Hx8"
POLICY = """\
rules:
  - id: everyone-reads
    effect: allow
    principals: ["airflow:prod/*"]
    actions: [read]
    resources: ["*"]
"""
RESOURCES: list[dict[str, Any]] = [
    {"name": EXAMPLE_RESOURCE, "kind": "http", "upstream": "http://127.0.0.1:9",
     "conn_id": "orders_api"},
    {"name": "orders-cosmos", "kind": "http", "upstream": "http://127.0.0.1:9",
     "conn_id": "cosmos_default", "profile": "cosmos",
     "cosmos": {"database": "sales", "container": "orders"}},
    {"name": "databricks", "kind": "http", "upstream": "http://127.0.0.1:9",
     "conn_id": "databricks_default", "profile": "databricks"},
    {"name": "arm", "kind": "http", "upstream": "https://127.0.0.1:9", "profile": "arm",
     "conn_id": "azure_data_factory_default", "intercept": ["management.azure.com"],
     "arm": {"subscription_id": "sub-1", "resource_group": "rg", "factory": "adf"}},
]  # fmt: skip
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 15  # per operation and mode: the whole run stays well under a minute
VALID_AUTH = basic(EXAMPLE_DEPLOYMENT, SECRET)
_T = TypeVar("_T")
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Any]


class _LoopThread:
    """An event loop on its own thread: the gateway runs there while schemathesis calls it
    synchronously from the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[_T]) -> _T:
        async def wrapped() -> _T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@contextmanager
def _serving(workdir: Path, **stack: Any) -> Iterator[str]:
    """A gateway (``running_gateway(workdir, **stack)``) on its own loop thread; its control
    listener's base URL."""
    background = _LoopThread()
    gateway = running_gateway(
        workdir, deployments=[deployment(EXAMPLE_DEPLOYMENT, SECRET)], **stack
    )
    gw = background.run(gateway.__aenter__())
    try:
        yield f"http://127.0.0.1:{gw.control_port}"
    finally:
        background.run(gateway.__aexit__(None, None, None))
        background.close()


@pytest.fixture(scope="module")
def control_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("openapi")
    proxy_ca = write_dev_ca(workdir / "tls")
    proxy = {"port": 0, "ca": {"cert": str(proxy_ca["cert"]), "key": str(proxy_ca["key"])}}
    listeners = {"control": {"port": 0}, "http": {"port": 0}, "forward_proxy": proxy}
    # The run sends many refused proofs from one address, which the failed-authentication
    # brake would soon answer with 429 (documented) before any valid call got its 200: off.
    brakes_off = {"rate_limit": {"failed_auth_per_client": 0, "failed_auth_per_remote": 0}}
    with _serving(
        workdir, policy=POLICY, resources=RESOURCES, listeners=listeners, tokens=brakes_off
    ) as url:
        yield url


@pytest.fixture(scope="module")
def control_schema(control_url: str) -> schemathesis.BaseSchema:
    """The document as the running listener serves it."""
    schema = schemathesis.openapi.from_url(control_url + PATH)
    schema.config.update(base_url=control_url)
    return schema


def _takes_client_auth(operation: Operation) -> bool:
    security = operation.definition.raw.get("security", [])
    return any("clientSecretBasic" in requirement for requirement in security)


STATUSES: dict[str, set[int]] = {}  # (label -> statuses seen), to check the run reached success


def _call(case: Case) -> None:
    """As generated; then with the deployment's valid secret, if it may take one."""
    seen = STATUSES.setdefault(case.operation.label, set())
    seen.add(case.call_and_validate(checks=CHECKS).status_code)
    headers: dict[str, Any] = dict(case.headers or {})
    if _takes_client_auth(case.operation) and not any(
        k.lower() == "authorization" for k in headers
    ):
        seen.add(case.call_and_validate(headers=VALID_AUTH, checks=CHECKS).status_code)


def _mint(control_url: str, resource: str) -> str:
    """A task's token for ``resource``, as the secrets backend gets it."""
    form = {"resource": resource, **EXAMPLE_TASK}
    answer = requests.post(control_url + "/v1/token", data=form, headers=VALID_AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def _documented_examples(operation: Operation, control_url: str) -> list[Case]:
    """The document's own request examples, sent in each media type they are given for;
    those that carry a task's token get a real one, so the success answers are checked."""
    body = operation.definition.raw.get("requestBody")
    if body is None:
        example = {
            p["name"]: (p["schema"].get("enum") or p["schema"].get("examples") or [""])[0]
            for p in operation.definition.raw.get("parameters", [])
        }
        required = {p["name"] for p in operation.definition.raw.get("parameters", [])
                    if p.get("required")}  # fmt: skip
        query = {k: v for k, v in example.items() if k in required}
        if operation.path == "/msi/token":
            header = {"X-IDENTITY-HEADER": _mint(control_url, "arm")}
            # client_id (a DAG run) goes with a deployment-wide poll token
            poll = requests.post(
                control_url + "/v1/poll-token", data={"resource": "arm"}, headers=VALID_AUTH,
                timeout=10,
            )  # fmt: skip
            assert poll.status_code == 200, poll.text
            narrowing = {"X-IDENTITY-HEADER": str(poll.json()["access_token"])}
            return [
                operation.Case(query=query, headers=header),
                operation.Case(query=example, headers=narrowing),
            ]
        return [operation.Case(query=query or None)]
    cases = []
    for media_type, media in body["content"].items():
        for example in media["examples"].values():
            fields = dict(example["value"])
            if "token" in fields:
                fields["token"] = _mint(control_url, "orders-cosmos")
            cases.append(operation.Case(body=fields, media_type=media_type))
    return cases


OPERATIONS = [(m.upper(), p) for p, item in document()["paths"].items() for m in item]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_answers_as_documented(
    control_schema: schemathesis.BaseSchema, control_url: str, method: str, path: str
) -> None:
    operation = control_schema[path][method]
    for case in _documented_examples(operation, control_url):
        _call(case)
    raw = operation.definition.raw
    takes_input = "requestBody" in raw or bool(raw.get("parameters"))
    modes = [schemathesis.GenerationMode.POSITIVE]
    if takes_input:  # an operation without input has no invalid input
        modes.append(schemathesis.GenerationMode.NEGATIVE)
    for mode in modes:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: Case) -> None:
            _call(case)

        run()
    # The run reached the answer that matters, not only refusals: this stack serves no
    # dynamic roles, so /v1/db-role's is its 404.
    wanted = 404 if path == "/v1/db-role" else 200
    assert wanted in STATUSES[operation.label], STATUSES[operation.label]


# -- /v1/db-role with a real database ----------------------------------------------------------
ROLE_POLICY = """\
rules:
  - id: reads-sales
    effect: allow
    principals: ["airflow:prod/finance_daily/*"]
    actions: [read]
    resources: [orders-pg]
    objects: ["sales.*"]
  - id: may-mint-elsewhere
    effect: allow
    principals: ["airflow:prod/reporting/*"]
    actions: [read]
    resources: [orders-pg]
    objects: ["nowhere.*"]
"""


def test_database_roles_answer_as_documented(pg_server: PgServer, tmp_path: Path) -> None:
    """The documented example against a PostgreSQL resource with dynamic roles: the role
    (200), a task granted nothing (403), and the catalog's direct-login entry."""
    prepare(pg_server)
    resource = {
        "name": "orders-pg", "kind": "postgres", "host": pg_server.host,
        "port": pg_server.port, "database": DATABASE, "username": GATEWAY_USER,
        "credential": "orders-pg-admin", "ca_file": str(pg_server.ca_file),
        "conn_id": "orders_pg", "dynamic_roles": True,
    }  # fmt: skip
    with _serving(
        tmp_path,
        policy=ROLE_POLICY,
        resources=[resource],
        secrets={"orders-pg-admin": GATEWAY_PASSWORD},
        listeners={
            "control": {"port": 0},
            "http": {"port": 0},
            "postgres": {"host": "127.0.0.1", "port": 0, "allow_plaintext": True},
        },
    ) as url:
        schema = schemathesis.openapi.from_url(url + PATH)
        schema.config.update(base_url=url)
        operation = schema["/v1/db-role"]["POST"]
        (example,) = operation.definition.raw["requestBody"]["content"]["application/json"][
            "examples"
        ].values()
        fields = dict(example["value"])
        granted = operation.Case(body=fields, media_type="application/json")
        answer = granted.call_and_validate(headers=VALID_AUTH, checks=CHECKS)
        assert answer.status_code == 200, answer.text
        assert answer.json()["grants"] and answer.json()["database"] == DATABASE
        nothing = operation.Case(
            body={**fields, "dag_id": "reporting"}, media_type="application/json"
        )
        refused = nothing.call_and_validate(headers=VALID_AUTH, checks=CHECKS)
        assert refused.status_code == 403, refused.text
        catalog = schema["/v1/catalog"]["POST"].Case(body={}, media_type="application/json")
        entries = catalog.call_and_validate(headers=VALID_AUTH, checks=CHECKS).json()
        assert entries["connections"][0]["mode"] == "dynamic_role"
