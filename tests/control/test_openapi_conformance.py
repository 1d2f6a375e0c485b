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


@pytest.fixture(scope="module")
def control_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    background = _LoopThread()
    workdir = tmp_path_factory.mktemp("openapi")
    proxy_ca = write_dev_ca(workdir / "tls")
    proxy = {"port": 0, "ca": {"cert": str(proxy_ca["cert"]), "key": str(proxy_ca["key"])}}
    stack = running_gateway(
        workdir,
        policy=POLICY,
        deployments=[deployment(EXAMPLE_DEPLOYMENT, SECRET)],
        resources=RESOURCES,
        listeners={"control": {"port": 0}, "http": {"port": 0}, "forward_proxy": proxy},
    )
    gw = background.run(stack.__aenter__())
    try:
        yield f"http://127.0.0.1:{gw.control_port}"
    finally:
        background.run(stack.__aexit__(None, None, None))
        background.close()


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
        query = {
            p["name"]: (p["schema"].get("enum") or p["schema"].get("examples") or [""])[0]
            for p in operation.definition.raw.get("parameters", [])
        }
        if operation.path == "/msi/token":
            header = {"X-IDENTITY-HEADER": _mint(control_url, "arm")}
            return [operation.Case(query=query, headers=header)]
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
