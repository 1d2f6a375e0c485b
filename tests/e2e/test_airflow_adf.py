"""Real Airflow 3 DAGs with the stock Azure Data Factory operators, through Lockgate, to the
test ADF (src/lockgate/demo/standins/adf) behind the test Entra ID
(src/lockgate/demo/standins/entra).

The stack is the demo stack plus: the Entra and ADF fakes on a background loop, Lockgate's
forward proxy (CONNECT; intercepts management.azure.com with the interception CA), an
``arm`` resource (profile arm, upstream the fake ADF over TLS, conn_id
``azure_data_factory_default``), the gateway's Entra client-secret credential, the example
policy examples/policies/adf.yaml and ``adf_*`` delegated to ``prod``. Airflow trusts the dev
CA and the interception CA (REQUESTS_CA_BUNDLE); nothing else about the operators changes.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockgate.cli import main as lockgate_cli
from lockgate.demo.run import run_dags
from lockgate.demo.stack import REPO_ROOT, LocalStack, free_port
from lockgate.demo.standins.adf import FakeAdf
from lockgate.demo.standins.adf import start as start_adf
from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.entra.thread import LoopThread, server_tls
from lockgate.tlsgen import write_dev_ca

pytest.importorskip("airflow.providers.microsoft.azure", reason="the Azure provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]

POLICY = REPO_ROOT / "examples" / "policies" / "adf.yaml"
CREDENTIAL = "entra-arm"
CLIENT_ID = "lockgate-gateway-app"


class AdfStack(LocalStack):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, tls=True)
        self.loops = LoopThread()
        self.entra = FakeEntra(client_secrets={CLIENT_ID: {"entra-secret-1"}})
        self.loops.serve(start_entra(self.entra))  # plain http: only the gateway calls it
        up_ctx, self.upstream_ca = server_tls(self.workdir / "adf-tls")
        self.adf = FakeAdf(
            self.entra.verify, factories={"adf-prod": {"load_orders", "drop_everything"}},
            queued_polls=1, running_polls=2,
        )  # fmt: skip
        self.loops.serve(start_adf(self.adf, 0, up_ctx))
        proxy_ca = write_dev_ca(self.workdir / "tls")
        self.bundle = self.workdir / "tls" / "worker-bundle.pem"
        assert self.ca_file is not None
        self.bundle.write_bytes(self.ca_file.read_bytes() + proxy_ca["cert"].read_bytes())
        doc = yaml.safe_load(Path(self.config_path).read_text(encoding="utf-8"))
        doc["listeners"]["forward_proxy"] = {
            "host": "127.0.0.1", "port": free_port(),
            "ca": {"cert": str(proxy_ca["cert"]), "key": str(proxy_ca["key"])},
        }  # fmt: skip
        doc["resources"].append(
            {"name": "arm", "kind": "http", "upstream": self.adf.base_url,
             "ca_file": str(self.upstream_ca), "credential": CREDENTIAL,
             "conn_id": "azure_data_factory_default", "profile": "arm",
             "intercept": ["management.azure.com"], "identity_header": None,
             "retry": {"base_delay": 0.05, "max_delay": 0.2},
             "arm": {"subscription_id": "sub-1", "resource_group": "rg-data",
                     "factory": "adf-prod", "tenant_id": self.entra.tenant}}
        )  # fmt: skip
        doc["credentials"].append(
            {"name": CREDENTIAL, "type": "oauth2_client_credentials",
             "token_url": self.entra.token_url, "client_id": CLIENT_ID,
             "scope": "https://management.azure.com/.default", "overlap": 600}
        )  # fmt: skip
        for dep in doc["deployments"]:
            dep["dags"].append("adf_*")
        Path(self.config_path).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        shutil.copy(POLICY, self.workdir / "policies" / "adf.yaml")

    def set_entra_secret(self, value: str) -> None:
        from lockgate.server import State

        State(self.config).credentials.rotate(CREDENTIAL, value)

    def start(self) -> AdfStack:
        from lockgate.server import State

        State(self.config).credentials.set(CREDENTIAL, "entra-secret-1")
        super().start()
        return self

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.loops.stop()

    def airflow_env(self, airflow_home: Path, dags_folder: Path | None = None) -> dict[str, str]:
        env = (
            super().airflow_env(airflow_home)
            if dags_folder is None
            else super().airflow_env(airflow_home, dags_folder)
        )
        env["REQUESTS_CA_BUNDLE"] = str(self.bundle)
        for name in list(env):  # the task must find no Azure identity of its own
            if name.upper().startswith(("AZURE_", "IDENTITY_", "MSI_")) or name.lower() in (
                "https_proxy", "http_proxy", "all_proxy", "no_proxy"
            ):  # fmt: skip
                del env[name]
        return env


@pytest.fixture(scope="module")
def adf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdfStack]:
    with AdfStack(tmp_path_factory.mktemp("lockgate-adf")) as s:
        yield s


def _state(result: dict[str, Any]) -> str:
    return str(result["state"]).split(".")[-1].lower()


def _cli(stack: LocalStack, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lockgate_cli(["--config", str(stack.config_path), *argv])
    return code, out.getvalue()


def test_stock_operators_through_the_forward_proxy_with_policy_and_audit(
    adf: AdfStack, airflow_home: Path
) -> None:
    results, output = run_dags(adf, airflow_home, ["adf_load_orders", "adf_drop_everything"])
    by = {r["dag_id"]: r for r in results}
    assert _state(by["adf_load_orders"]) == "success", output[-6000:]
    assert _state(by["adf_drop_everything"]) == "failed", output[-6000:]
    # the refusal, with Lockgate's reason, is in the task log
    assert "LockgateAccessDenied" in output
    assert "factory:adf-prod/pipeline:drop_everything" in output
    assert "no rule" in output
    # ADF saw only the gateway's Entra tokens; the denied pipeline never reached it
    assert adf.adf.seen and all(s.authorised for s in adf.adf.seen)
    assert not adf.adf.calls("drop_everything")
    assert [r.pipeline for r in adf.adf.runs.values()] == ["load_orders"]
    assert adf.entra.issued and all(
        c["aud"] == "https://management.azure.com" and c["appid"] == CLIENT_ID
        for c in adf.entra.issued
    )

    adf.gateway.audit.flush(5.0)
    code, text = _cli(adf, "audit", "search", "--dag", "adf_load_orders", "--json")
    assert code == 0
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    started = [r for r in rows if r["action"] == "run" and r["event"] == "allowed"]
    assert started and started[0]["object"] == "factory:adf-prod/pipeline:load_orders"
    run_id = started[0]["detail"]["run_id"]
    polls = [r for r in rows if r["action"] == "read" and r["event"] == "allowed"]
    assert polls and all(r["object"] == "factory:adf-prod/pipeline:load_orders" for r in polls)
    assert any(r["detail"].get("status") == "Succeeded" for r in polls)
    assert {r["task_id"] for r in polls} == {"wait_for_load_orders"}
    assert run_id in adf.adf.runs
    code, text = _cli(adf, "audit", "search", "--dag", "adf_drop_everything", "--json")
    denied = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(
        r["event"] == "denied" and r["object"] == "factory:adf-prod/pipeline:drop_everything"
        for r in denied
    )
    code, text = _cli(adf, "audit", "verify")
    assert code == 0, text


def test_rotating_the_entra_client_secret_during_runs_fails_nothing(
    adf: AdfStack, airflow_home: Path
) -> None:
    adf.entra.token_ttl = 2  # gateway tokens expire during the run: refreshes use the new secret
    adf.adf.queued_polls, adf.adf.running_polls = 4, 8  # the run lasts a dozen polls

    def rotate_midway() -> None:
        time.sleep(8)  # Airflow start-up; the sensor is then polling
        adf.entra.client_secrets[CLIENT_ID].add("entra-secret-2")
        adf.set_entra_secret("entra-secret-2")
        time.sleep(1.5)
        adf.entra.client_secrets[CLIENT_ID].discard("entra-secret-1")

    before = adf.entra.token_calls
    rotator = threading.Thread(target=rotate_midway)
    rotator.start()
    results, output = run_dags(adf, airflow_home, ["adf_load_orders"])
    rotator.join()
    assert _state(results[0]) == "success", output[-6000:]
    assert adf.entra.token_calls > before + 2
    assert adf.entra.client_secrets[CLIENT_ID] == {"entra-secret-2"}
    assert all(s.authorised for s in adf.adf.seen)
