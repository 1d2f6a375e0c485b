"""LockgateSecretsBackend against a real gateway, outside and inside a task context."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

pytest.importorskip("airflow.sdk")

from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

from lockgate.airflow import connections, get_provider_info, secrets
from lockgate.demo.stack import LocalStack


@pytest.fixture
def backend(stack: LocalStack) -> secrets.LockgateSecretsBackend:
    return secrets.LockgateSecretsBackend(
        url=stack.control_url,
        deployment="prod",
        client_secret_file=str(stack.written["deployment_secret"]),
        ca_file=str(stack.ca_file),
    )


def _ti(dag_id: str, task_id: str = "t", try_number: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        dag_id=dag_id,
        task_id=task_id,
        run_id="manual__unit",
        try_number=try_number,
        map_index=-1,
        task=SimpleNamespace(execution_timeout=None),
    )


def test_unknown_conn_id_is_left_to_other_backends(backend) -> None:
    assert backend.get_conn_value("not_in_catalog") is None


def test_no_task_context_mints_nothing_and_says_why(backend, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="lockgate.airflow.secrets"):
        assert backend.get_conn_value("orders_api") is None
    assert "no running task context" in caplog.text


def test_inside_a_task_the_connection_points_at_the_gateway_with_a_token(
    backend, stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setattr(
        secrets, "task_coordinates", lambda: secrets.coordinates_of(_ti("finance_daily"))
    )
    value = json.loads(backend.get_conn_value("orders_api"))
    assert value["conn_type"] == "http"
    assert value["host"] == f"{stack.http_url}/orders-api"
    token = value["extra"]["Authorization"].removeprefix("Bearer ")
    claims = stack.gateway.verifier.verify(token, "orders-api")
    assert (claims.dag_id, claims.task_id, claims.try_number) == ("finance_daily", "t", 1)
    assert claims.exp - claims.iat <= 900  # the scaffold policy caps finance tokens at 15 min
    # Cached per task try: a second lookup reuses the token; a new try gets a new one.
    again = json.loads(backend.get_conn_value("orders_api"))
    assert again["extra"]["Authorization"] == value["extra"]["Authorization"]
    monkeypatch.setattr(
        secrets,
        "task_coordinates",
        lambda: secrets.coordinates_of(_ti("finance_daily", try_number=2)),
    )
    retry = json.loads(backend.get_conn_value("orders_api"))
    assert retry["extra"]["Authorization"] != value["extra"]["Authorization"]


def test_denied_at_mint_raises_access_denied_with_the_reason(
    backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        secrets, "task_coordinates", lambda: secrets.coordinates_of(_ti("marketing_daily"))
    )
    with pytest.raises(AirflowSecretsBackendAccessDenied) as exc:
        backend.get_conn_value("orders_api")
    assert "no rule allows airflow:prod/marketing_daily/t" in str(exc.value)


def test_dag_not_delegated_to_the_deployment_is_denied(backend, monkeypatch) -> None:
    monkeypatch.setattr(
        secrets, "task_coordinates", lambda: secrets.coordinates_of(_ti("hr_payroll"))
    )
    with pytest.raises(AirflowSecretsBackendAccessDenied):
        backend.get_conn_value("orders_api")


def test_task_end_revokes_the_tries_tokens(backend, stack: LocalStack, monkeypatch) -> None:
    import json

    from lockgate.errors import AuthenticationError

    ti = _ti("finance_daily", task_id="ends")
    monkeypatch.setattr(secrets, "task_coordinates", lambda: secrets.coordinates_of(ti))
    token = json.loads(backend.get_conn_value("orders_api"))["extra"]["Authorization"][7:]
    stack.gateway.verifier.verify(token, "orders-api")
    secrets.end_task_try(ti)
    stack.gateway.state.revocations.refresh(force=True)
    with pytest.raises(AuthenticationError) as exc:
        stack.gateway.verifier.verify(token, "orders-api")
    assert exc.value.reason == "revoked"


def test_wrong_client_secret_gives_no_connection(stack: LocalStack, tmp_path, caplog) -> None:
    bad = tmp_path / "secret"
    bad.write_text("not-the-secret")
    b = secrets.LockgateSecretsBackend(
        url=stack.control_url, deployment="prod", client_secret_file=str(bad),
        ca_file=str(stack.ca_file),
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert b.get_conn_value("orders_api") is None
    assert "catalog unavailable" in caplog.text
    assert "not-the-secret" not in caplog.text


def test_provider_info_names_the_backend_and_connection_type() -> None:
    info = get_provider_info()
    assert info["package-name"] == "lockgate"
    assert "lockgate.airflow.secrets.LockgateSecretsBackend" in info["secrets-backends"]
    assert info["connection-types"][0]["connection-type"] == "lockgate"


def test_the_upstream_ca_of_a_postgres_role_is_a_private_file() -> None:
    import os
    import stat
    from pathlib import Path

    pem = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n"
    path = Path(connections.upstream_ca_file(pem))
    assert path.read_text() == pem
    assert connections.upstream_ca_file(pem) == str(path)  # written once per certificate
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700  # nobody else swaps it
    other = connections.upstream_ca_file(pem.replace("abc", "def"))
    assert other != str(path) and Path(other).parent == path.parent
    assert connections.upstream_ca_file("") == ""  # none sent: libpq finds none and refuses
