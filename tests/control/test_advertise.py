"""Behind a load balancer the catalog names the balancer, not the replica's bound address."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from lockgate.config import parse_config
from lockgate.control.catalog import connection_template
from lockgate.control.context import public_host

TLS = {"cert": "c.pem", "key": "k.pem"}


def _config(tmp_path: Path, advertise: str | None) -> Any:
    listener: dict[str, Any] = {"host": "0.0.0.0", "port": 8471, "tls": TLS}
    if advertise is not None:
        listener["advertise"] = advertise
    return parse_config(
        {"data_dir": str(tmp_path),
         "listeners": {"http": listener, "cql": {**listener, "port": 9042},
                       "postgres": {**listener, "port": 5432}},
         "resources": [{"name": "orders", "kind": "http", "upstream": "https://o.test"},
                       {"name": "events", "kind": "cql", "contact_points": ["127.0.0.1:9043"],
                        "username": "lockgate", "credential": "cql-pw"},
                       {"name": "wh", "kind": "postgres", "host": "127.0.0.1", "database": "wh",
                        "username": "lockgate", "credential": "pg-pw"}],
         "credentials": [{"name": "cql-pw", "type": "static"},
                         {"name": "pg-pw", "type": "static"}]},
        tmp_path / "lockgate.yaml",
    )  # fmt: skip


def _hosts(tmp_path: Path, advertise: str | None) -> list[str]:
    config = _config(tmp_path, advertise)
    ports = SimpleNamespace(http_port=0, cql_port=0, postgres_port=0, mounted_ports={})
    ctx: Any = SimpleNamespace(config=config, ports=ports)
    templates = [connection_template(ctx, r) for r in config.resources]
    return [str(t["host"]) for t in templates if t is not None]


def test_a_wildcard_listener_is_named_localhost_without_advertise(tmp_path: Path) -> None:
    hosts = _hosts(tmp_path, None)
    assert hosts == ["https://localhost:8471/orders", "localhost", "localhost"]


def test_advertise_names_the_balancer_in_every_connection(tmp_path: Path) -> None:
    hosts = _hosts(tmp_path, "lockgate.prod.svc.cluster.local")
    assert hosts == [
        "https://lockgate.prod.svc.cluster.local:8471/orders",
        "lockgate.prod.svc.cluster.local",
        "lockgate.prod.svc.cluster.local",
    ]
    assert public_host(_config(tmp_path, "10.0.0.7").listeners.http) == "10.0.0.7"


@pytest.mark.parametrize("bad", ["https://lb.example", "lb.example/x", "lb example", ""])
def test_advertise_is_a_host_name_only(tmp_path: Path, bad: str) -> None:
    with pytest.raises((ValidationError, ValueError)):
        _config(tmp_path, bad)
