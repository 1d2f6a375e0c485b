"""``LockgateHook`` reads a ``lockgate`` connection as the form writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("airflow.sdk")

from airflow.sdk import Connection

from lockgate.airflow.hooks import LockgateHook, token_service_kwargs


def _conn(**extra: object) -> Connection:
    return Connection(
        conn_id="lockgate_default",
        conn_type="lockgate",
        host="https://lockgate.internal:8470",
        login="prod",
        extra=json.dumps(extra),
    )


def test_the_connection_reads_as_the_secrets_backends_kwargs() -> None:
    conn = _conn(
        client_secret_file="/var/run/secrets/lockgate/prod",
        ca_file="/etc/lockgate/ca.pem",
        timeout="5",
        client_secret_env="",  # a cleared form field
        unrelated="ignored",
    )
    assert token_service_kwargs(conn) == {
        "url": "https://lockgate.internal:8470",
        "deployment": "prod",
        "client_secret_file": "/var/run/secrets/lockgate/prod",
        "ca_file": "/etc/lockgate/ca.pem",
        "timeout": 5.0,
    }


def test_a_secretless_connection_builds_a_client_that_reads_the_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("header.payload.signature\n")
    conn = _conn(identity_token_file=str(token), client_secret_file="")
    assert token_service_kwargs(conn) == {
        "url": "https://lockgate.internal:8470",
        "deployment": "prod",
        "identity_token_file": str(token),
    }
    monkeypatch.setattr(LockgateHook, "get_connection", classmethod(lambda cls, _id: conn))
    client = LockgateHook().get_client()
    assert client.deployment == "prod"


def test_a_connection_without_url_or_deployment_is_refused() -> None:
    conn = Connection(conn_id="broken", conn_type="lockgate", login="prod")
    with pytest.raises(ValueError, match="token service URL"):
        token_service_kwargs(conn)


def test_the_hook_builds_a_client_from_its_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _conn(client_secret_env="LOCKGATE_TEST_SECRET", timeout=3)
    monkeypatch.setattr(LockgateHook, "get_connection", classmethod(lambda cls, _id: conn))
    client = LockgateHook().get_client()
    assert (client.url, client.deployment, client.timeout) == (
        "https://lockgate.internal:8470",
        "prod",
        3.0,
    )
