"""The Airflow Connections the catalog hands out are what the stock hooks expect."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from lockgate.config import HttpResource
from lockgate.control import cosmos_key
from lockgate.control.cosmos_key import default_partition_key


def cosmos(partition_key: str | None) -> HttpResource:
    return HttpResource.model_validate(
        {"name": "orders-cosmos", "kind": "http", "upstream": "https://acct.test",
         "profile": "cosmos",
         "cosmos": {"database": "sales", "container": "orders", "partition_key": partition_key}}
    )  # fmt: skip


def test_a_partition_key_path_is_not_handed_out_as_the_hooks_default_value() -> None:
    extra = cosmos_key.connection_template(cosmos("/region"), "https://gw:1/orders-cosmos")["extra"]
    assert extra == {"database_name": "sales", "collection_name": "orders"}
    assert default_partition_key("/a/b") is None and default_partition_key(None) is None


def test_a_partition_key_value_is_the_hooks_default() -> None:
    extra = cosmos_key.connection_template(cosmos("eu"), "https://gw:1/orders-cosmos")["extra"]
    assert extra["partition_key"] == "eu"


def _hook_for(extra: dict[str, Any]) -> Any:
    """The stock hook over a connection with ``extra``, talking to a stand-in container."""
    hooks = pytest.importorskip("airflow.providers.microsoft.azure.hooks.cosmos")
    from airflow.models.connection import Connection

    conn = Connection(conn_id="c", conn_type="azure_cosmos", login="https://gw:1/", password="k",
                      extra=extra)  # fmt: skip
    hook = hooks.AzureCosmosDBHook("c")
    hook.get_connection = lambda _conn_id: conn  # type: ignore[method-assign]
    return hook


class _Container:
    """Answers a point read only for the document's own partition key value."""

    def read_item(self, item: str, partition_key: object) -> dict[str, str]:
        from azure.cosmos.exceptions import CosmosResourceNotFoundError

        if (item, partition_key) != ("order-1", "eu"):
            raise CosmosResourceNotFoundError(message="not found")
        return {"id": item, "region": "eu"}


@pytest.mark.parametrize(("configured", "found"), [("eu", True), ("/region", False)])
def test_the_stock_hook_reads_without_a_partition_key_only_with_a_value(
    configured: str, found: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = pytest.importorskip("airflow.providers.microsoft.azure.hooks.cosmos")
    extra = cosmos_key.connection_template(cosmos(configured), "https://gw:1/x")["extra"]
    hook = _hook_for(extra)

    class _Client:
        def __init__(self, *_a: object, **_k: object) -> None: ...
        def get_database_client(self, _db: str) -> _Client:
            return self

        def get_container_client(self, _c: str) -> _Container:
            return _Container()

    monkeypatch.setattr(hooks, "CosmosClient", _Client)
    if found:
        assert hook.get_document("order-1") == {"id": "order-1", "region": "eu"}
    else:  # a path is no value: the hook asks for the key instead of answering None
        from airflow.exceptions import AirflowBadRequest

        with pytest.raises(AirflowBadRequest, match="Partition key must be specified"):
            hook.get_document("order-1")


def test_no_warning_from_the_lockgate_made_cassandra_connection(tmp_path: Any) -> None:
    pytest.importorskip("airflow.providers.apache.cassandra")
    from airflow.models.connection import Connection
    from airflow.providers.apache.cassandra.hooks.cassandra import CassandraHook

    from lockgate.airflow import connections

    ca = tmp_path / "ca.pem"
    ca.write_text("")
    template = {"ssl_options": {"ca_certs": "{lockgate_ca_file}", "cert_reqs": 2,
                                "check_hostname": True}, "protocol_version": 4}  # fmt: skip
    extra = connections.substitute(template, {connections.CA_PLACEHOLDER: ""})
    conn = Connection(conn_id="c", conn_type="cassandra", host="127.0.0.1", port=1, login="r",
                      password="t", extra=extra)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        connections.quiet_stock_cassandra_hook.cache_clear()
        connections.quiet_stock_cassandra_hook()  # as the backend does before handing it out
        original = CassandraHook.get_connection
        try:
            CassandraHook.get_connection = classmethod(lambda cls, _c: conn)  # type: ignore[assignment,method-assign]
            CassandraHook("c")
        finally:
            CassandraHook.get_connection = original  # type: ignore[method-assign]
            connections.quiet_stock_cassandra_hook.cache_clear()  # its filters end with the block
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == []
