"""The ADF fake with the real azure-mgmt-datafactory client and Entra tokens from the fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.demo.standins.adf import FakeAdf
from lockgate.demo.standins.adf import start as start_adf
from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.entra.thread import LoopThread, server_tls

pytest.importorskip("azure.mgmt.datafactory")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    ctx, ca = server_tls(tmp_path_factory.mktemp("adf-tls"))
    entra = FakeEntra(client_secrets={"app": {"s"}})
    adf = FakeAdf(entra.verify, factories={"adf": {"load", "broken"}}, failing={"broken"})
    lt = LoopThread()
    lt.serve(start_entra(entra, 0, ctx))
    lt.serve(start_adf(adf, 0, ctx))
    yield {"entra": entra, "adf": adf, "ca": ca}
    lt.stop()


def _client(env: dict[str, Any]) -> Any:
    from azure.identity import ClientSecretCredential
    from azure.mgmt.datafactory import DataFactoryManagementClient

    entra: FakeEntra = env["entra"]
    ca: Path = env["ca"]
    cred = ClientSecretCredential(
        entra.tenant, "app", "s", authority=entra.base_url,
        disable_instance_discovery=True, connection_verify=str(ca),
    )  # fmt: skip
    return DataFactoryManagementClient(
        cred, "sub-1", base_url=env["adf"].base_url, connection_verify=str(ca)
    )


def test_run_moves_to_succeeded_or_failed(env: dict[str, Any]) -> None:
    c = _client(env)
    run = c.pipelines.create_run("rg-data", "adf", "load", parameters={"day": "x"})
    seen = [c.pipeline_runs.get("rg-data", "adf", run.run_id).status for _ in range(3)]
    assert seen == ["Queued", "InProgress", "Succeeded"]
    bad = c.pipelines.create_run("rg-data", "adf", "broken")
    states = [c.pipeline_runs.get("rg-data", "adf", bad.run_id).status for _ in range(3)]
    assert states[-1] == "Failed"
    assert c.factories.get("rg-data", "adf").name == "adf"


def test_refusals_and_throttling(env: dict[str, Any]) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    c = _client(env)
    with pytest.raises(ResourceNotFoundError):
        c.pipelines.create_run("rg-data", "adf", "nope")
    env["adf"].throttle(2)  # azure-core retries 429 with Retry-After
    run = c.pipelines.create_run("rg-data", "adf", "load")
    assert run.run_id in env["adf"].runs
    n = len(env["adf"].seen)
    import requests

    r = requests.get(f"{env['adf'].base_url}/subscriptions/sub-1?api-version=2018-06-01",
                     headers={"Authorization": "Bearer forged"}, verify=str(env["ca"]),
                     timeout=10)  # fmt: skip
    assert r.status_code == 401 and r.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert env["adf"].seen[n].authorised is False
