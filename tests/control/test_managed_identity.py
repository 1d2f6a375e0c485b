"""``GET /msi/token``: the App Service managed identity protocol, answered with the task's own
Lockgate token; checked with the real azure-identity ManagedIdentityCredential."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from aiohttp import web

from lockgate.config import LockgateConfig
from lockgate.control import managed_identity as mi
from lockgate.demo.standins.entra.thread import LoopThread
from lockgate.identity import KeyStore, RevocationStore, TaskIdentity, TokenIssuer, TokenVerifier

ISSUER = "https://lockgate.test"
ARM = "https://management.azure.com"


def _config(tmp_path: Path) -> LockgateConfig:
    res = {"name": "arm", "kind": "http", "upstream": "https://127.0.0.1:1", "profile": "arm",
           "conn_id": "azure_data_factory_default", "intercept": ["management.azure.com"],
           "arm": {"subscription_id": "sub-1", "resource_group": "rg",
                   "factory": "adf"}}  # fmt: skip
    other = {"name": "orders", "kind": "http", "upstream": "https://127.0.0.1:2"}
    return LockgateConfig.model_validate(
        {"data_dir": str(tmp_path), "resources": [res, other],
         "listeners": {"forward_proxy": {"port": 0, "ca": {"cert": "c", "key": "k"}}}}
    )  # fmt: skip


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    keys = KeyStore(tmp_path)
    revocations = RevocationStore(tmp_path / "revocations.db")
    events: list[tuple[str, dict[str, Any]]] = []

    async def on_token_event(kind: str, /, **fields: Any) -> None:
        events.append((kind, fields))

    # What the routes read of a ControlContext (the rest is not the endpoint's business).
    gw = SimpleNamespace(
        events=events,
        audit=on_token_event,
        config=_config(tmp_path),
        verifier=TokenVerifier(keys, revocations, ISSUER),
        issuer=TokenIssuer(keys, ISSUER),
        revocations=revocations,
        ports=SimpleNamespace(control_port=0, forward_proxy_port=0),
    )
    app = web.Application()
    app.router.add_get(mi.PATH, mi.msi_handler(gw))
    lt = LoopThread()

    async def boot() -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = lt.serve(boot())
    gw.url = f"http://127.0.0.1:{runner.addresses[0][1]}{mi.PATH}"
    yield gw
    lt.stop()
    revocations.close()


def _token(gw: Any, resource: str = "arm", ttl: int = 600, task: str = "run_load") -> str:
    identity = TaskIdentity("prod", "adf_load", task, "manual__1", 1)
    return gw.issuer.mint(identity, resource, ttl)[0]


def _get(gw: Any, header: str | None, **params: str) -> requests.Response:
    q = {"api-version": "2019-08-01", "resource": ARM, **params}
    headers = {"X-IDENTITY-HEADER": header} if header is not None else {}
    return requests.get(gw.url, params=q, headers=headers, timeout=10)


def test_azure_identity_gets_the_task_token(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity import ManagedIdentityCredential

    token = _token(served)
    monkeypatch.setenv("IDENTITY_ENDPOINT", served.url)
    monkeypatch.setenv("IDENTITY_HEADER", token)
    got = ManagedIdentityCredential().get_token(f"{ARM}/.default")
    assert got.token == token
    claims = served.verifier.verify(got.token, "arm")
    assert claims.sub == "airflow:prod/adf_load/run_load" and claims.aud == "arm"
    assert abs(got.expires_on - claims.exp) <= 1


@pytest.mark.parametrize(
    ("params", "status", "error"),
    [
        ({"api-version": "2099-01-01"}, 400, "invalid_request"),
        ({"resource": "https://orders.example.com"}, 400, "invalid_resource"),
        ({"resource": "http://management.azure.com"}, 400, "invalid_resource"),
        ({"resource": "https://management.azure.com:8443"}, 400, "invalid_resource"),
        ({"resource": "https://management.azure.com/x"}, 400, "invalid_resource"),
        ({"client_id": "someone-else"}, 400, "invalid_request"),
    ],
)
def test_bad_requests(served: Any, params: dict[str, str], status: int, error: str) -> None:
    r = _get(served, _token(served), **params)
    assert r.status_code == status and r.json()["error"] == error


def test_the_header_must_be_a_valid_token_for_that_resource(served: Any) -> None:
    assert _get(served, None).status_code == 401
    assert _get(served, "garbage").status_code == 401
    other = _token(served, resource="orders")  # a token for another resource
    r = _get(served, other)
    assert r.status_code == 401 and "wrong_audience" in r.json()["error_description"]
    assert other not in r.text
    expired = _token(served, ttl=1)
    time.sleep(7)  # past exp + leeway
    assert _get(served, expired).status_code == 401
    assert _get(served, _token(served)).status_code == 200


def test_revoked_task_try_gets_nothing(served: Any) -> None:
    token = _token(served, task="revoked_task")
    assert _get(served, token).status_code == 200
    served.revocations.revoke_task_try("prod", "adf_load", "revoked_task", "manual__1", 1, -1,
                                       reason="task ended")  # fmt: skip
    served.revocations.refresh()
    r = _get(served, token)
    assert r.status_code == 401 and "revoked" in r.json()["error_description"]


def test_catalog_entry_has_no_secret_and_exports_the_task_env(served: Any) -> None:
    served.ports.control_port, served.ports.forward_proxy_port = 8470, 8472
    r = served.config.resource("arm")
    entry = mi.catalog_entry(served, r)
    conn = entry["connection"]
    assert conn["conn_type"] == "azure_data_factory" and "password" not in conn
    assert conn["extra"] == {"subscriptionId": "sub-1", "resource_group_name": "rg",
                             "factory_name": "adf"}  # fmt: skip
    env = entry["env"]
    assert env["IDENTITY_ENDPOINT"] == "http://127.0.0.1:8470/msi/token"
    assert env["IDENTITY_HEADER"] == "{lockgate_token}"
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:8472" and env["NO_PROXY"] == "127.0.0.1"


def test_every_refusal_is_audited_with_whose_token_it_was(served: Any) -> None:
    other = _token(served, resource="orders")  # signature fine, audience not this one
    _get(served, _token(served), **{"api-version": "2000-01-01"})
    _get(served, None)
    _get(served, "garbage")
    _get(served, other)
    kinds = [(k, f["reason"]) for k, f in served.events]
    assert kinds == [
        ("token_denied", "bad_api_version"),
        ("proof_rejected", "missing_identity_header"),
        ("proof_rejected", "malformed"),
        ("proof_rejected", "wrong_audience"),
    ], kinds
    assert all(f["route"] == mi.PATH and f["action"] == "authenticate" for _, f in served.events)
    assert "jti" not in served.events[2][1]  # no verified signature, no claims
    wrong = served.events[3][1]
    assert (wrong["deployment"], wrong["dag_id"], wrong["resource"]) == ("prod", "adf_load", "arm")
    assert other not in repr(served.events) and other.split(".")[2] not in repr(served.events)
