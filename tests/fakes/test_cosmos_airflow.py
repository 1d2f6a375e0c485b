"""The stock Airflow ``AzureCosmosDBHook`` against the fake Cosmos DB account."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from lockgate.credentials.cosmos import derive_task_key
from lockgate.demo.standins.cosmos import CosmosFake, new_key, running_cosmos

hooks = pytest.importorskip("airflow.providers.microsoft.azure.hooks.cosmos")


@pytest.fixture
def fake() -> Iterator[CosmosFake]:
    with running_cosmos() as f:
        yield f


def _connect(
    monkeypatch: pytest.MonkeyPatch, fake: CosmosFake, key: str, conn_id: str = "cosmos_fake"
):  # type: ignore[no-untyped-def]
    extra = {"database_name": "airflow", "collection_name": "things", "partition_key": "/pk"}
    conn = {"conn_type": "azure_cosmos", "login": fake.url, "password": key, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return hooks.AzureCosmosDBHook(azure_cosmos_conn_id=conn_id)


def test_hook_round_trip(fake: CosmosFake, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _connect(monkeypatch, fake, fake.keys[0])
    hook.create_database("airflow")
    hook.create_database("airflow")  # the hook checks by query first: idempotent
    assert hook.does_database_exist("airflow")
    assert not hook.does_database_exist("other")
    hook.create_collection("things")
    assert hook.does_collection_exist("things", "airflow")

    hook.upsert_document({"id": "a", "pk": "p1", "v": 1})
    hook.upsert_document({"id": "a", "pk": "p1", "v": 2})
    hook.insert_documents([{"id": "b", "pk": "p1", "v": 2}, {"id": "c", "pk": "p2", "v": 2}])
    assert hook.get_document("a", partition_key="p1")["v"] == 2
    rows = hook.get_documents("SELECT * FROM c WHERE c.v = 2", partition_key="p1")
    assert sorted(r["id"] for r in rows) == ["a", "b"]
    hook.delete_document("a", partition_key="p1")
    assert hook.get_document("a", partition_key="p1") is None
    assert hook.test_connection() == (True, "Successfully connected to Azure Cosmos.")
    hook.delete_collection("things")
    hook.delete_database("airflow")
    assert fake.store.databases == {}
    assert {r.auth_type for r in fake.requests} == {"master"}


def test_hook_with_wrong_key(fake: CosmosFake, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _connect(monkeypatch, fake, new_key())
    ok, message = hook.test_connection()
    assert ok is False and ("401" in message or "Unauthorized" in message)
    # get_document swallows every CosmosHttpResponseError: a 401 reads as "not found".
    assert hook.get_document("a", partition_key="p1") is None
    assert fake.count(status=401) >= 2


def test_hook_signs_with_a_per_task_key(fake: CosmosFake, monkeypatch: pytest.MonkeyPatch) -> None:
    """What Lockgate's secrets backend hands a task: a key derived from its token's jti."""
    secret = os.urandom(32)
    task_key = derive_task_key(secret, "jti-123")
    fake.keys = [task_key]
    hook = _connect(monkeypatch, fake, task_key)
    hook.create_database("airflow")
    assert "airflow" in fake.store.databases
    other_task = _connect(monkeypatch, fake, derive_task_key(secret, "jti-999"), "cosmos_other")
    assert other_task.test_connection()[0] is False
