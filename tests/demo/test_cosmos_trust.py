"""The Cosmos DB connection Lockgate makes is verified by the SDK, so it warns about nothing.

azure-cosmos turns TLS verification off for endpoints on ``localhost`` and ``127.0.0.1`` (an
emulator convenience) and urllib3 then warns ``InsecureRequestWarning`` on every request. The
demo serves the gateway's Cosmos endpoint on another loopback address, named in the gateway's
certificate, so the task verifies the gateway and nothing is logged.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

pytest.importorskip("azure.cosmos", reason="the azure-cosmos SDK")
pytest.importorskip("airflow.secrets", reason="Airflow (the Lockgate secrets backend)")

from lockgate.airflow import secrets as lockgate_secrets
from lockgate.demo.systems import COSMOS_HOST, FiveSystemsStack

pytestmark = pytest.mark.slow  # five stand-ins and a gateway: a few seconds


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FiveSystemsStack]:
    with FiveSystemsStack(tmp_path_factory.mktemp("demo-cosmos")) as stack:
        yield stack


def lockgate_made_connection(
    stack: FiveSystemsStack, monkeypatch: pytest.MonkeyPatch, dag_id: str
) -> dict[str, Any]:
    """``azure_cosmos_default`` as the secrets backend answers it inside a task of ``dag_id``."""
    coords = {"dag_id": dag_id, "task_id": "read_back", "run_id": "manual__1",
              "try_number": 1, "map_index": -1}  # fmt: skip
    monkeypatch.setattr(lockgate_secrets, "task_coordinates", lambda: coords)
    backend = lockgate_secrets.LockgateSecretsBackend(
        url=stack.control_url,
        deployment="prod",
        client_secret_file=str(stack.written["deployment_secret"]),
        ca_file=str(stack.ca_file),
    )
    value = backend.get_conn_value("azure_cosmos_default")
    assert value is not None
    connection: dict[str, Any] = json.loads(value)
    return connection


def test_the_cosmos_endpoint_is_a_name_the_sdk_verifies(
    five: FiveSystemsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = lockgate_made_connection(five, monkeypatch, "finance_cosmos_report")
    endpoint = urlparse(connection["login"])
    assert endpoint.scheme == "https"
    assert endpoint.hostname == COSMOS_HOST
    assert endpoint.hostname not in ("localhost", "127.0.0.1")  # where the SDK skips checks


def test_the_stock_client_reads_through_lockgate_without_a_warning(
    five: FiveSystemsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.cosmos import CosmosClient

    connection = lockgate_made_connection(five, monkeypatch, "finance_cosmos_report")
    # The worker's trust: the gateway's CA added to the system's, as the demo's tasks get it.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(five.bundle))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # exactly what AzureCosmosDBHook.get_conn builds from the connection
        client = CosmosClient(connection["login"], {"masterKey": connection["password"]})
        orders = client.get_database_client("sales").get_container_client("orders")
        found = list(orders.query_items("SELECT * FROM c", partition_key="eu"))
    assert isinstance(found, list)
    shown = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert shown == [], shown


def test_a_client_that_trusts_nothing_extra_is_refused(
    five: FiveSystemsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check is real: without the gateway's CA the SDK refuses the connection."""
    from azure.core.exceptions import ServiceRequestError
    from azure.cosmos import CosmosClient

    connection = lockgate_made_connection(five, monkeypatch, "finance_cosmos_report")
    other_ca = five.workdir / "tls" / "proxy-ca.pem"  # a CA, but not the one the gateway's
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca))
    with pytest.raises(ServiceRequestError):
        CosmosClient(
            connection["login"],
            {"masterKey": connection["password"]},
            connection_retry_policy=None,
            retry_total=0,
        )


@pytest.mark.airflow
def test_the_granted_cosmos_dags_log_no_warning_from_lockgate_connections(
    five: FiveSystemsStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The demo's Cosmos DAGs in a real Airflow task process: verified TLS, so no
    InsecureRequestWarning in the task log (the stock operator and the plain SDK both)."""
    pytest.importorskip("airflow.providers.microsoft.azure", reason="the Azure provider")
    from lockgate.demo.run import run_dags

    home = tmp_path_factory.mktemp("airflow")
    results, output = run_dags(five, home, ["orders_load_cosmos", "finance_cosmos_report"])
    assert [r["state"].split(".")[-1].lower() for r in results] == ["success"] * 2, output[-4000:]
    assert "COSMOS read order-1001" in output
    assert "InsecureRequestWarning" not in output
    assert "Unverified HTTPS request" not in output
