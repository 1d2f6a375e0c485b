"""Deferred operators and extra links against the secrets backend and a real gateway.

A deferral on a conn_id without poll tokens fails at the task's first lookup (before the
operator starts anything upstream) and in the trigger, each time with the reason at ERROR;
a connection that holds no secret (ARM) is answered outside a task for the extra link.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("airflow.sdk")

from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

from lockgate.airflow import secrets
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
}


@pytest.fixture
def backend(stack: LocalStack) -> secrets.LockgateSecretsBackend:
    return secrets.LockgateSecretsBackend(
        url=stack.control_url,
        deployment="prod",
        client_secret_file=str(stack.written["deployment_secret"]),
        ca_file=str(stack.ca_file),
    )


def _in_task(monkeypatch: pytest.MonkeyPatch, *, deferrable: bool) -> None:
    ti = SimpleNamespace(
        dag_id="finance_daily", task_id="call", run_id="manual__unit", try_number=1,
        map_index=-1,
    )  # fmt: skip
    task = SimpleNamespace(task_id="call", deferrable=deferrable, execution_timeout=None)
    monkeypatch.setattr(secrets, "task_coordinates", lambda: secrets.coordinates_of(ti))
    monkeypatch.setattr(secrets, "_running_task", lambda: task)


def test_a_deferrable_task_on_a_conn_id_without_poll_tokens_is_refused_before_minting(
    backend: secrets.LockgateSecretsBackend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _in_task(monkeypatch, deferrable=True)
    with (
        caplog.at_level(logging.INFO, logger="lockgate.airflow.secrets"),
        pytest.raises(AirflowSecretsBackendAccessDenied, match="deferrable=True") as refused,
    ):
        backend.get_conn_value("orders_api")
    assert "offers no poll tokens" in str(refused.value)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "orders_api" in errors[0].getMessage()
    assert not backend._tokens  # nothing minted, so nothing could be started with it


def test_the_same_task_without_deferral_gets_its_token(
    backend: secrets.LockgateSecretsBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    _in_task(monkeypatch, deferrable=False)
    value = json.loads(backend.get_conn_value("orders_api") or "{}")
    assert value["extra"]["Authorization"].startswith("Bearer ")


def test_a_trigger_asking_for_a_conn_id_without_poll_tokens_gets_the_reason_at_error(
    backend: secrets.LockgateSecretsBackend, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="lockgate.airflow.secrets"),
        pytest.raises(AirflowSecretsBackendAccessDenied, match="deferrable=False"),
    ):
        asyncio.run(backend.aget_connection("orders_api"))
    assert any(
        r.levelno == logging.ERROR and "outside a task try" in r.getMessage()
        for r in caplog.records
    )
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
    monkeypatch.setattr(secrets, "_running_task", lambda: task)
    assert secrets.unpollable_deferral("x", {"resource": "arm", "connection": {}}) is None
    task.wait_for_termination = True
    assert secrets.unpollable_deferral("x", {"resource": "arm", "connection": {}}) is not None
