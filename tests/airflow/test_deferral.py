"""Deferred operators and extra links against the secrets backend and a real gateway.

- A plain http conn_id (``"trigger": "task"``) serves ``HttpTrigger``: the trigger gets a
  token of the deferred task try itself (named by the triggerer; in ``dag.test()`` the try
  of this process that deferred), and the try's end revokes it wherever it was minted.
- A ``poll`` conn_id with an environment (ARM) gives the trigger the deployment's poll token,
  in the connection and in the environment the Azure SDK reads, and its DAG run in the
  connection's ``managed_identity_client_id`` (the catalog's ``trigger_extra``), with which
  the identity endpoint narrows that token to the DAG run.
- A deferral on a conn_id that serves no trigger fails at the task's first lookup (before
  the operator starts anything upstream) and in the trigger, each time with the reason at
  ERROR; a connection that holds no secret (ARM) is answered outside a task for the extra
  link.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("airflow.sdk")

from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

from lockgate.airflow import deferral, secrets
from lockgate.airflow._client import MintedToken
from lockgate.demo.stack import LocalStack

ARM_ENTRY: dict[str, Any] = {
    "conn_id": "azure_data_factory_default",
    "resource": "arm",
    "kind": "http",
    "connection": {
        "conn_type": "azure_data_factory",
        "extra": {"subscriptionId": "sub-1", "resource_group_name": "rg", "factory_name": "f"},
    },
    "env": {"IDENTITY_ENDPOINT": "https://gw/msi/token", "IDENTITY_HEADER": "{lockgate_token}"},
    "trigger_extra": {
        "managed_identity_client_id": "lockgate-run:{lockgate_dag_run}",
        "workload_identity_tenant_id": "lockgate",
    },
}
# A conn_id whose connection needs more than a token (a Cosmos task key): serves no trigger.
COSMOS_ENTRY: dict[str, Any] = {
    "conn_id": "orders_cosmos",
    "resource": "cosmos",
    "kind": "http",
    "cosmos_key": True,
    "connection": {"conn_type": "azure_cosmos", "password": "{lockgate_cosmos_key}"},
}
TRY = {"dag_id": "finance_daily", "task_id": "call", "run_id": "manual__unit", "try_number": 1,
       "map_index": -1}  # fmt: skip


@pytest.fixture
def backend(stack: LocalStack) -> secrets.LockgateSecretsBackend:
    return secrets.LockgateSecretsBackend(
        url=stack.control_url,
        deployment="prod",
        client_secret_file=str(stack.written["deployment_secret"]),
        ca_file=str(stack.ca_file),
    )


def _in_task(monkeypatch: pytest.MonkeyPatch, *, deferrable: bool) -> None:
    ti = SimpleNamespace(**TRY)
    task = SimpleNamespace(task_id="call", deferrable=deferrable, execution_timeout=None)
    monkeypatch.setattr(secrets, "task_coordinates", lambda: secrets.coordinates_of(ti))
    monkeypatch.setattr(deferral, "running_task", lambda: task)


def _outside_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "task_coordinates", lambda: None)
    monkeypatch.setattr(deferral, "running_task", lambda: None)


@pytest.fixture
def triggerer_context() -> Iterator[None]:
    """What Airflow's trigger runner binds around a trigger of the deferred try ``TRY``."""
    import structlog.contextvars

    with structlog.contextvars.bound_contextvars(trigger_id=7, ti_id="x", **TRY):
        yield


def _with_template(
    monkeypatch: pytest.MonkeyPatch, backend: secrets.LockgateSecretsBackend, entry: Any
) -> None:
    monkeypatch.setattr(backend, "_template", lambda conn_id: entry)


def test_a_deferrable_task_on_a_conn_id_that_serves_no_trigger_is_refused_before_minting(
    backend: secrets.LockgateSecretsBackend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _in_task(monkeypatch, deferrable=True)
    _with_template(monkeypatch, backend, COSMOS_ENTRY)
    with (
        caplog.at_level(logging.INFO, logger="lockgate.airflow.secrets"),
        pytest.raises(AirflowSecretsBackendAccessDenied, match="deferrable=True") as refused,
    ):
        backend.get_conn_value("orders_cosmos")
    assert "offers no poll tokens" in str(refused.value)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "orders_cosmos" in errors[0].getMessage()
    assert not backend._tokens  # nothing minted, so nothing could be started with it


def test_the_catalog_marks_a_plain_http_conn_id_as_serving_triggers(
    backend: secrets.LockgateSecretsBackend,
) -> None:
    entry = backend._template("orders_api")
    assert entry is not None and entry.get("trigger") == deferral.TRIGGER_AS_TASK
    assert secrets.serves_triggers(entry) and not secrets.serves_triggers(COSMOS_ENTRY)


def test_a_deferred_http_task_hands_its_token_to_its_inline_trigger(
    backend: secrets.LockgateSecretsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dag.test(): the trigger runs next in the same process, with neither a task context
    nor the triggerer's names; it gets the very token the deferring task try holds."""
    _in_task(monkeypatch, deferrable=True)
    in_task = json.loads(backend.get_conn_value("orders_api") or "{}")
    _outside_task(monkeypatch)
    conn = asyncio.run(backend.aget_connection("orders_api"))
    assert conn.extra_dejson["Authorization"] == in_task["extra"]["Authorization"]
    # ... to a trigger only: the API server's synchronous lookup still gets nothing
    assert backend.get_conn_value("orders_api") is None
    backend.end_task_try(dict(TRY))  # the try ended: its trigger gets nothing any more
    with pytest.raises(AirflowSecretsBackendAccessDenied):
        asyncio.run(backend.aget_connection("orders_api"))


def test_the_triggerer_gets_a_token_of_the_deferred_task_try_it_names(
    backend: secrets.LockgateSecretsBackend,
    monkeypatch: pytest.MonkeyPatch,
    triggerer_context: None,
) -> None:
    _outside_task(monkeypatch)
    conn = asyncio.run(backend.aget_connection("orders_api"))
    assert conn.extra_dejson["Authorization"].startswith("Bearer ")
    [(key, minted)] = backend._tokens.items()
    assert key == ("orders_api", *TRY.values())
    assert minted.principal == "airflow:prod/finance_daily/call"  # the task's own identity


def test_a_poll_entry_with_an_environment_gives_the_trigger_the_deployments_poll_token(
    backend: secrets.LockgateSecretsBackend,
    monkeypatch: pytest.MonkeyPatch,
    triggerer_context: None,
) -> None:
    """ARM: the Azure SDK reads its credential from the process-wide environment, which every
    trigger of the triggerer shares: the token is not narrowed to one DAG run."""
    _outside_task(monkeypatch)
    _with_template(monkeypatch, backend, {**ARM_ENTRY, "poll": True})
    asked: list[dict[str, str]] = []

    def poll_token(*, conn_id: str, scope: dict[str, str]) -> MintedToken:
        asked.append(scope)
        return MintedToken("poll-tok", time.time() + 3600, "jti-p", "airflow:prod/@triggerer")

    monkeypatch.setattr(backend.client, "poll_token", poll_token)
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    conn = asyncio.run(backend.aget_connection("azure_data_factory_default"))
    assert conn.extra_dejson["subscriptionId"] == "sub-1"
    assert asked == [{}]
    assert os.environ["IDENTITY_HEADER"] == "poll-tok"
    assert os.environ["IDENTITY_ENDPOINT"] == "https://gw/msi/token"
    # ... and the trigger's own connection names its DAG run for the identity endpoint
    extra = conn.extra_dejson
    assert extra["managed_identity_client_id"] == "lockgate-run:finance_daily/manual__unit"
    assert extra["workload_identity_tenant_id"] == "lockgate"  # the hook passes both or none


def test_an_inline_adf_trigger_names_the_dag_run_that_deferred(
    backend: secrets.LockgateSecretsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dag.test(): the ADF trigger runs next in this process, unnamed; its connection names
    the DAG run of the try that deferred on the conn_id. Without one, nothing is added."""
    _with_template(monkeypatch, backend, {**ARM_ENTRY, "poll": True})
    tokens = {"poll_token": "airflow:prod/@triggerer/@poll", "mint": "airflow:prod/f/call"}
    for method, principal in tokens.items():
        minted = MintedToken("tok", time.time() + 3600, "jti", principal)
        monkeypatch.setattr(backend.client, method, lambda minted=minted, **kw: minted)
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    _outside_task(monkeypatch)
    unnamed = asyncio.run(backend.aget_connection("azure_data_factory_default"))
    assert "managed_identity_client_id" not in unnamed.extra_dejson
    _in_task(monkeypatch, deferrable=True)
    in_task = json.loads(backend.get_conn_value("azure_data_factory_default") or "{}")
    assert "managed_identity_client_id" not in in_task["extra"]  # the task's token is its own
    _outside_task(monkeypatch)
    conn = asyncio.run(backend.aget_connection("azure_data_factory_default"))
    assert conn.extra_dejson["managed_identity_client_id"] == (
        "lockgate-run:finance_daily/manual__unit"
    )


def test_a_deferred_try_is_revoked_at_its_end_even_if_this_process_minted_nothing(
    backend: secrets.LockgateSecretsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    revoked: list[object] = []
    monkeypatch.setattr(backend.client, "revoke_task_try", revoked.append)
    backend.end_task_try(dict(TRY))
    assert revoked == []
    backend.end_task_try(dict(TRY), deferred=True)  # its trigger's token lives elsewhere
    assert revoked == [TRY]


def test_the_same_task_without_deferral_gets_its_token(
    backend: secrets.LockgateSecretsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    _in_task(monkeypatch, deferrable=False)
    value = json.loads(backend.get_conn_value("orders_api") or "{}")
    assert value["extra"]["Authorization"].startswith("Bearer ")


def test_a_trigger_the_backend_cannot_serve_gets_the_reason_at_error(
    backend: secrets.LockgateSecretsBackend, caplog: pytest.LogCaptureFixture
) -> None:
    # orders_api serves triggers, but this one names no deferred try, and none deferred here
    with (
        caplog.at_level(logging.INFO, logger="lockgate.airflow.secrets"),
        pytest.raises(AirflowSecretsBackendAccessDenied, match="deferrable=False"),
    ):
        asyncio.run(backend.aget_connection("orders_api"))
    assert any(
        r.levelno == logging.ERROR and "outside a task try" in r.getMessage()
        for r in caplog.records
    )
    assert not backend._tokens
    # the synchronous lookup outside a task (API server, callbacks) is unchanged
    assert backend.get_conn_value("orders_api") is None


def test_a_connection_without_a_secret_is_answered_outside_a_task_for_extra_links(
    backend: secrets.LockgateSecretsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend, "_template", lambda conn_id: ARM_ENTRY)
    monkeypatch.delenv("IDENTITY_HEADER", raising=False)
    conn = backend.get_connection("azure_data_factory_default")
    assert conn is not None and conn.conn_type == "azure_data_factory"
    assert conn.extra_dejson["subscriptionId"] == "sub-1"
    assert "IDENTITY_HEADER" not in os.environ  # no token, no identity endpoint
    assert not backend._tokens
    # ... but never to a trigger: it would reach ARM with whatever identity the host has
    with pytest.raises(AirflowSecretsBackendAccessDenied):
        asyncio.run(backend.aget_connection("azure_data_factory_default"))


def test_the_extra_link_gets_no_poll_token_either(
    backend: secrets.LockgateSecretsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog marks ARM ``poll``; a synchronous lookup outside a task (the extra link
    after the task body) still gets the bare connection: the poll token is a trigger's."""
    _outside_task(monkeypatch)
    _with_template(monkeypatch, backend, {**ARM_ENTRY, "poll": True})
    monkeypatch.setattr(backend.client, "poll_token", lambda **kw: pytest.fail("minted"))
    monkeypatch.delenv("IDENTITY_HEADER", raising=False)
    conn = backend.get_connection("azure_data_factory_default")
    assert conn is not None and conn.extra_dejson["subscriptionId"] == "sub-1"
    assert "IDENTITY_HEADER" not in os.environ


def test_a_pollable_conn_id_is_not_refused_to_a_deferrable_task(
    backend: secrets.LockgateSecretsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = {"conn_id": "x", "resource": "x", "kind": "http", "poll": True, "connection": {}}
    _in_task(monkeypatch, deferrable=True)
    assert secrets.unpollable_deferral("x", entry) is None
    assert secrets.unpollable_deferral("x", {**entry, "poll": False}) is not None


def test_an_operator_that_will_not_defer_is_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """ADF with wait_for_termination=False ignores deferrable=True: nothing to refuse."""
    task = SimpleNamespace(task_id="run", deferrable=True, wait_for_termination=False)
    monkeypatch.setattr(deferral, "running_task", lambda: task)
    assert secrets.unpollable_deferral("x", {"resource": "arm", "connection": {}}) is None
    task.wait_for_termination = True
    assert secrets.unpollable_deferral("x", {"resource": "arm", "connection": {}}) is not None


def test_a_trigger_gets_a_poll_token_with_at_least_half_its_life_left(
    backend: secrets.LockgateSecretsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Azure SDK keeps the token it got for the trigger's whole life: a token past
    half its life is not handed to a new trigger."""
    _outside_task(monkeypatch)
    _with_template(monkeypatch, backend, {**ARM_ENTRY, "poll": True})
    now = time.time()
    lives = iter([(now - 1000, now + 2600), (now - 1900, now + 1700), (now, now + 3600)])
    minted: list[str] = []

    def poll_token(*, conn_id: str, scope: dict[str, str]) -> MintedToken:
        issued, expires = next(lives)
        minted.append(f"tok-{len(minted)}")
        return MintedToken(minted[-1], expires, "j", "p", issued_at=issued)

    monkeypatch.setattr(backend.client, "poll_token", poll_token)
    monkeypatch.setattr(secrets.task_env, "export", lambda env: None)
    for _ in range(2):  # the first has 2600 s of 3600 left: reused
        asyncio.run(backend.aget_connection("azure_data_factory_default"))
    assert minted == ["tok-0"]
    backend._tokens.clear()
    for _ in range(2):  # 1700 s of 3600 left: a new trigger gets a fresh one
        asyncio.run(backend.aget_connection("azure_data_factory_default"))
    assert minted == ["tok-0", "tok-1", "tok-2"]


def test_the_dag_run_in_the_client_id_survives_azure_cores_unencoded_query() -> None:
    """azure-core writes the client_id into the URL unencoded; the run id goes percent-encoded
    so "+" (every scheduled run id), "&" and "#" arrive as they were."""
    conn = deferral.with_trigger_extra(
        {**ARM_ENTRY, "poll": True}, {"dag_id": "d", "run_id": "manual__1+00:00&x#y"}
    )
    assert conn["extra"]["managed_identity_client_id"] == (
        "lockgate-run:d/manual__1%2B00%3A00%26x%23y"
    )
    assert conn["extra"]["subscriptionId"] == "sub-1"
    assert deferral.with_trigger_extra(ARM_ENTRY, {}) == ARM_ENTRY["connection"]
