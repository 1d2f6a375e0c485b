"""Azure Cosmos DB through Lockgate with the stock provider and the plain azure-cosmos SDK.

The ``azure_cosmos_default`` connection comes from the Lockgate secrets backend: ``login`` is
the gateway endpoint whose path carries the task's own short-lived Lockgate token
(``https://<gateway>/orders-cosmos/_t/<token>/``) and ``password`` is a key derived for that
token alone. No Cosmos DB account key is on the worker; the gateway re-signs every request
with the real key and checks policy per database/container (examples/policies/cosmos.yaml).

- ``orders_load_cosmos``: the stock ``AzureCosmosInsertDocumentOperator`` writes an order to
  ``sales/orders``, then a ``@task`` reads it back with the SDK (point read and query).
- ``orders_load_cosmos_bulk``: a ``@task`` upserting a batch of orders with the SDK (used to
  show that key rotation and throttling storms fail no write).
- ``finance_cosmos_report``: finance DAGs may read ``sales/orders``: SDK point read + query.
- ``finance_cosmos_write``: finance may not write; the gateway refuses the insert and the
  task log says why ("Lockgate denied write on sales/orders ...").
- ``orders_cosmos_drop``: nobody may drop databases, not even the loader; refused.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.microsoft.azure.hooks.cosmos import AzureCosmosDBHook
from airflow.providers.microsoft.azure.operators.cosmos import AzureCosmosInsertDocumentOperator
from airflow.sdk import DAG, task

COMMON = {"start_date": datetime(2025, 1, 1), "schedule": None, "catchup": False}
CONN_ID = "azure_cosmos_default"
ORDER = {"id": "order-1001", "region": "eu", "amount": 42.5, "status": "new"}
BULK = 300


def _container():  # type: ignore[no-untyped-def]
    """The plain SDK, with the same connection the hook uses."""
    from airflow.sdk.bases.hook import BaseHook
    from azure.cosmos import CosmosClient

    conn = BaseHook.get_connection(CONN_ID)
    client = CosmosClient(conn.login, {"masterKey": conn.password})
    return client.get_database_client("sales").get_container_client("orders")


@task
def read_back(order_id: str) -> float:
    orders = _container()
    doc = orders.read_item(order_id, partition_key="eu")
    same = list(
        orders.query_items(
            "SELECT * FROM c WHERE c.status = @s",
            parameters=[{"name": "@s", "value": doc["status"]}],
            partition_key="eu",
        )
    )
    print(f"COSMOS read {doc['id']} amount {doc['amount']}; {len(same)} order(s) with that status")
    return float(doc["amount"])


@task
def bulk_upsert() -> int:
    orders = _container()
    for i in range(BULK):
        orders.upsert_item({"id": f"bulk-{i}", "region": "us", "amount": i, "status": "new"})
    print(f"COSMOS upserted {BULK} orders")
    return BULK


@task
def drop_sales() -> None:
    AzureCosmosDBHook(azure_cosmos_conn_id=CONN_ID).delete_database("sales")


with DAG("orders_load_cosmos", **COMMON):
    insert = AzureCosmosInsertDocumentOperator(
        task_id="insert_order",
        database_name="sales",
        collection_name="orders",
        document=ORDER,
        azure_cosmos_conn_id=CONN_ID,
    )
    insert >> read_back(ORDER["id"])

with DAG("orders_load_cosmos_bulk", **COMMON):
    bulk_upsert()

with DAG("finance_cosmos_report", **COMMON):
    read_back(ORDER["id"])

with DAG("finance_cosmos_write", **COMMON):
    AzureCosmosInsertDocumentOperator(
        task_id="insert_order",
        database_name="sales",
        collection_name="orders",
        document={"id": "order-9999", "region": "eu", "amount": 1},
        azure_cosmos_conn_id=CONN_ID,
        retries=0,
    )

with DAG("orders_cosmos_drop", **COMMON):
    drop_sales()
