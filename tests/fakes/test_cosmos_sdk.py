"""The fake Cosmos DB account driven by the real azure-cosmos SDK (synchronous client)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from azure.cosmos import CosmosClient, PartitionKey
from azure.cosmos import _base as sdk_base
from azure.cosmos.exceptions import CosmosHttpResponseError, CosmosResourceExistsError

from lockgate.demo.standins.cosmos import CosmosFake, new_key, running_cosmos


@pytest.fixture
def fake() -> Iterator[CosmosFake]:
    with running_cosmos() as f:
        yield f


def _container(client: CosmosClient, db: str = "Sales", coll: str = "orders"):  # type: ignore[no-untyped-def]
    database = client.create_database_if_not_exists(db)
    return database.create_container_if_not_exists(coll, partition_key=PartitionKey(path="/pk"))


def test_crud_and_queries(fake: CosmosFake) -> None:
    client = CosmosClient(fake.url, credential=fake.keys[0])
    container = _container(client)
    created = container.create_item({"id": "o1", "pk": "eu", "qty": 1, "tags": {"a": "x"}})
    assert {"_rid", "_self", "_etag", "_ts"} <= set(created)
    container.create_item({"id": "o2", "pk": "us", "qty": 1})
    container.create_item({"id": "o1", "pk": "us", "qty": 3})  # same id, other partition: fine

    with pytest.raises(CosmosResourceExistsError) as err:
        container.create_item({"id": "o1", "pk": "eu"})
    assert err.value.status_code == 409

    container.upsert_item({"id": "o2", "pk": "us", "qty": 7})
    assert container.read_item("o2", partition_key="us")["qty"] == 7
    new = container.upsert_item({"id": "o3", "pk": "eu", "qty": 1})
    assert new["id"] == "o3"

    found = container.query_items(
        "SELECT * FROM c WHERE c.qty = @q AND c.pk = @pk",
        parameters=[{"name": "@q", "value": 1}, {"name": "@pk", "value": "eu"}],
        enable_cross_partition_query=True,
    )
    assert sorted(d["id"] for d in found) == ["o1", "o3"]
    in_us = list(container.query_items("SELECT * FROM c", partition_key="us"))
    assert sorted(d["id"] for d in in_us) == ["o1", "o2"]
    nested = list(container.query_items("SELECT * FROM c WHERE c.tags.a = 'x'", partition_key="eu"))
    assert [d["id"] for d in nested] == ["o1"]
    count = list(
        container.query_items("SELECT VALUE COUNT(1) FROM c", enable_cross_partition_query=True)
    )
    assert count == [4]
    top = list(container.query_items("SELECT TOP 2 * FROM c", enable_cross_partition_query=True))
    assert len(top) == 2

    replaced = container.replace_item("o1", {"id": "o1", "pk": "eu", "qty": 9})
    assert replaced["qty"] == 9 and replaced["_etag"] != created["_etag"]
    container.delete_item("o1", partition_key="eu")
    with pytest.raises(CosmosHttpResponseError) as err:
        container.read_item("o1", partition_key="eu")
    assert err.value.status_code == 404
    assert len(list(container.read_all_items())) == 3

    # What went over the wire, and how it was authenticated.
    assert all(r.auth_type == "master" for r in fake.requests)
    upserts = [r for r in fake.requests if r.headers.get("x-ms-documentdb-is-upsert") == "True"]
    assert len(upserts) == 2
    queries = [
        r for r in fake.requests if r.headers.get("content-type") == "application/query+json"
    ]
    assert len(queries) == 5
    assert fake.count("GET", "/dbs/Sales/colls/orders/pkranges") >= 1


def test_database_and_container_lifecycle(fake: CosmosFake) -> None:
    client = CosmosClient(fake.url, {"masterKey": fake.keys[1]})  # the Airflow hook's form
    client.create_database("a")
    with pytest.raises(CosmosResourceExistsError):
        client.create_database("a")
    db = client.get_database_client("a")
    db.create_container("c1", partition_key=PartitionKey(path="/pk"))
    with pytest.raises(CosmosResourceExistsError):
        db.create_container("c1", partition_key=PartitionKey(path="/pk"))
    props = db.get_container_client("c1").read()
    assert props["partitionKey"]["paths"] == ["/pk"]
    assert [c["id"] for c in db.list_containers()] == ["c1"]
    assert [d["id"] for d in client.list_databases()] == ["a"]
    db.delete_container("c1")
    client.delete_database("a")
    with pytest.raises(CosmosHttpResponseError) as err:
        client.get_database_client("a").read()
    assert err.value.status_code == 404


def test_wrong_key_is_401(fake: CosmosFake) -> None:
    with pytest.raises(CosmosHttpResponseError) as err:
        client = CosmosClient(fake.url, credential=new_key())
        list(client.list_databases())
    assert err.value.status_code == 401
    assert fake.requests and fake.requests[-1].status == 401


def test_skewed_date_is_401(fake: CosmosFake, monkeypatch: pytest.MonkeyPatch) -> None:
    client = CosmosClient(fake.url, credential=fake.keys[0])
    # The SDK stamps x-ms-date with email.utils.formatdate; make its clock 20 minutes slow.
    monkeypatch.setattr(
        sdk_base, "formatdate", lambda *a, **k: formatdate(time.time() - 1200, usegmt=True)
    )
    with pytest.raises(CosmosHttpResponseError) as err:
        client.create_database("late")
    assert err.value.status_code == 401
    assert "not valid at the current time" in str(err.value)
    assert "late" not in fake.store.databases


def test_throttling_is_retried_by_the_sdk(fake: CosmosFake) -> None:
    client = CosmosClient(fake.url, credential=fake.keys[0])
    container = _container(client)
    fake.throttle(3, retry_after_ms=20)
    before = fake.count("POST", "/dbs/Sales/colls/orders/docs")
    started = time.monotonic()
    container.create_item({"id": "t", "pk": "p"})
    assert fake.count("POST", "/dbs/Sales/colls/orders/docs") - before == 4  # 3 x 429 + 1
    assert fake.count(status=429) == 3
    assert time.monotonic() - started >= 0.06  # the SDK waited x-ms-retry-after-ms each time


def test_throttling_storm_exhausts_retries(fake: CosmosFake) -> None:
    client = CosmosClient(fake.url, credential=fake.keys[0], retry_throttle_total=2)
    container = _container(client)
    fake.throttle_for(30, retry_after_ms=5)
    with pytest.raises(CosmosHttpResponseError) as err:
        container.read_item("nope", partition_key="p")
    assert err.value.status_code == 429
    assert err.value.sub_status == 3200
    assert fake.count(status=429) == 3  # first try + 2 retries


def test_key_rotation_secondary_keeps_working(fake: CosmosFake) -> None:
    primary, secondary = fake.keys
    on_primary = CosmosClient(fake.url, credential=primary)
    on_secondary = CosmosClient(fake.url, credential=secondary)
    _container(on_primary).create_item({"id": "1", "pk": "p"})

    new_primary = fake.regenerate("primary")
    assert new_primary != primary
    container = on_secondary.get_database_client("Sales").get_container_client("orders")
    assert container.read_item("1", partition_key="p")["id"] == "1"
    with pytest.raises(CosmosHttpResponseError) as err:
        on_primary.get_database_client("Sales").get_container_client("orders").read_item(
            "1", partition_key="p"
        )
    assert err.value.status_code == 401
    fresh = CosmosClient(fake.url, credential=new_primary)
    assert (
        fresh.get_database_client("Sales")
        .get_container_client("orders")
        .read_item("1", partition_key="p")
    )


def test_sdk_follows_advertised_endpoint() -> None:
    """Account discovery decides where data requests go: a gateway must rewrite it."""
    with running_cosmos() as discovered, running_cosmos() as front:
        front.keys = list(discovered.keys)
        front.public_url = discovered.url
        client = CosmosClient(front.url, credential=front.keys[0])
        client.create_database("elsewhere")
        assert "elsewhere" in discovered.store.databases
        assert "elsewhere" not in front.store.databases
        assert {r.path for r in front.requests} == {"/"}
        assert discovered.count("POST", "/dbs") == 1


def test_endpoint_discovery_off_pins_the_given_url() -> None:
    with running_cosmos() as discovered, running_cosmos() as front:
        front.keys = list(discovered.keys)
        front.public_url = discovered.url
        client = CosmosClient(front.url, credential=front.keys[0], enable_endpoint_discovery=False)
        client.create_database("here")
        assert "here" in front.store.databases
        assert discovered.count() == 0
