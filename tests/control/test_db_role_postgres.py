"""The catalog entry of a ``dynamic_roles`` postgres resource: an Airflow ``postgres``
Connection straight to the server, TLS exactly as the gateway connects, the role left as
placeholders; the CA (a certificate) travels with it only when the resource names one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lockgate.config import PostgresResource
from lockgate.control import db_role


def pg(**kw: Any) -> PostgresResource:
    fields: dict[str, Any] = {
        "name": "shop", "kind": "postgres", "host": "db.internal", "port": 6432,
        "database": "orders", "username": "gw", "credential": "c", "conn_id": "shop_direct",
        "dynamic_roles": True, **kw,
    }  # fmt: skip
    return PostgresResource(**fields)


def test_verify_full_with_a_ca_file_carries_the_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nxyz\n-----END CERTIFICATE-----\n")
    entry = db_role.catalog_entry(pg(ca_file=ca))
    assert entry["mode"] == "dynamic_role" and entry["kind"] == "postgres"
    assert entry["connection"] == {
        "conn_type": "postgres", "host": "db.internal", "port": 6432,
        "login": db_role.USER_PLACEHOLDER, "password": db_role.PASSWORD_PLACEHOLDER,
        "schema": "orders",
        "extra": {"sslmode": "verify-full", "sslrootcert": db_role.UPSTREAM_CA_PLACEHOLDER},
    }  # fmt: skip
    assert entry["upstream_ca"] == ca.read_text()


@pytest.mark.parametrize(
    ("tls", "extra"),
    [
        ("verify-full", {"sslmode": "verify-full", "sslrootcert": "system"}),
        ("require", {"sslmode": "require"}),
        ("disable", {"sslmode": "disable"}),
    ],
)
def test_tls_modes_without_a_ca_file(tls: str, extra: dict[str, str]) -> None:
    entry = db_role.catalog_entry(pg(tls=tls))
    assert entry["connection"]["extra"] == extra and "upstream_ca" not in entry


def test_an_unreadable_ca_is_left_out_so_the_worker_refuses(tmp_path: Path) -> None:
    entry = db_role.catalog_entry(pg(ca_file=tmp_path / "missing.pem"))
    assert "upstream_ca" not in entry
    assert entry["connection"]["extra"]["sslrootcert"] == db_role.UPSTREAM_CA_PLACEHOLDER
