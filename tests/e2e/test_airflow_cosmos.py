"""Real Airflow 3 DAGs with the stock Cosmos DB provider and the azure-cosmos SDK, through
Lockgate, to the fake Cosmos DB account (src/lockgate/demo/standins/cosmos).

The stack is the demo stack plus: the fake account on its own loop/thread (advertising an
unreachable endpoint in discovery, so a client that skipped the gateway would fail), an
``orders-cosmos`` resource (profile cosmos, on the demo's TLS http listener), its account
key credential (static, primary first), and examples/policies/cosmos.yaml.
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
from lockgate.demo.stack import EXAMPLE_DAGS, REPO_ROOT, LocalStack
from lockgate.demo.standins.cosmos import CosmosFake, running_cosmos
from lockgate.demo.systems import verified_cosmos_listener

pytest.importorskip("airflow.providers.microsoft.azure", reason="the Azure provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]

POLICY = REPO_ROOT / "examples" / "policies" / "cosmos.yaml"
CREDENTIAL = "orders-cosmos-key"
BULK = 300  # examples/dags/cosmos_orders.py


# Point read and query through the stock hook without a partition key: the hook sends the
# connection's ``partition_key`` extra, the value Lockgate hands out (``cosmos.partition_key``).
HOOK_READS_DAG = """
from datetime import datetime

from airflow.providers.microsoft.azure.hooks.cosmos import AzureCosmosDBHook
from airflow.sdk import DAG, task


@task
def read_without_partition_key() -> None:
    hook = AzureCosmosDBHook("azure_cosmos_default")
    doc = hook.get_document("order-1001")
    docs = hook.get_documents("SELECT * FROM c WHERE c.id = 'order-1001'")
    print(f"HOOK get_document {doc and doc['id']} get_documents {[d['id'] for d in docs or []]}")
    assert doc is not None and docs


with DAG("finance_cosmos_hook_reads", start_date=datetime(2025, 1, 1), schedule=None, catchup=False,
         tags=["lockgate"]):
    read_without_partition_key()
"""


class CosmosStack(LocalStack):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, tls=True)
        self._fake_cm = running_cosmos()
        self.fake: CosmosFake = self._fake_cm.__enter__()
        self.fake.public_url = "https://127.0.0.1:9/"
        self.fake.store.create_database({"id": "sales"})
        pk = {"paths": ["/region"], "kind": "Hash"}
        self.fake.store.create_container("sales", {"id": "orders", "partitionKey": pk})
        doc = yaml.safe_load(Path(self.config_path).read_text(encoding="utf-8"))
        doc["resources"].append(
            {"name": "orders-cosmos", "kind": "http", "upstream": self.fake.url.rstrip("/"),
             "credential": CREDENTIAL, "conn_id": "azure_cosmos_default", "profile": "cosmos",
             # at an address the SDK verifies TLS for (it skips it for 127.0.0.1/localhost)
             "listen": verified_cosmos_listener(self.workdir),
             "cosmos": {"database": "sales", "container": "orders", "partition_key": "eu"}}
        )  # fmt: skip
        doc["credentials"].append({"name": CREDENTIAL, "type": "static", "overlap": 600})
        Path(self.config_path).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        shutil.copy(POLICY, self.workdir / "policies" / "cosmos.yaml")
        # the example DAGs plus one that reads with the stock hook and no partition key
        self.dags = self.workdir / "dags"
        self.dags.mkdir()
        shutil.copy(EXAMPLE_DAGS / "cosmos_orders.py", self.dags / "cosmos_orders.py")
        (self.dags / "finance_cosmos_hook_reads.py").write_text(HOOK_READS_DAG, encoding="utf-8")

    def airflow_env(self, airflow_home: Path, dags_folder: Path | None = None) -> dict[str, str]:
        return super().airflow_env(airflow_home, dags_folder or self.dags)

    def start(self) -> CosmosStack:
        from lockgate.server import State

        State(self.config).credentials.set(CREDENTIAL, self.fake.keys[0])
        super().start()
        return self

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self._fake_cm.__exit__(None, None, None)

    def docs(self, prefix: str = "") -> list[dict[str, Any]]:
        return [
            d
            for d in self.fake.store.container("sales", "orders").items(None)
            if d["id"].startswith(prefix)
        ]


@pytest.fixture(scope="module")
def cosmos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CosmosStack]:
    with CosmosStack(tmp_path_factory.mktemp("lockgate-cosmos")) as s:
        yield s


def _state(result: dict[str, Any]) -> str:
    return str(result["state"]).split(".")[-1].lower()


def _cli(stack: LocalStack, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lockgate_cli(["--config", str(stack.config_path), *argv])
    return code, out.getvalue()


def test_stock_operator_sdk_denials_and_audit(cosmos: CosmosStack, airflow_home: Path) -> None:
    dags = ["orders_load_cosmos", "finance_cosmos_report", "finance_cosmos_write",
            "orders_cosmos_drop"]  # fmt: skip
    results, output = run_dags(cosmos, airflow_home, dags)
    by = {r["dag_id"]: r for r in results}
    assert _state(by["orders_load_cosmos"]) == "success", output[-4000:]
    assert _state(by["finance_cosmos_report"]) == "success", output[-4000:]
    assert _state(by["finance_cosmos_write"]) == "failed"
    assert _state(by["orders_cosmos_drop"]) == "failed"
    assert "COSMOS read order-1001 amount 42.5" in output
    # the stock hook reads without a partition key (the connection carries the value)
    hook_results, hook_output = run_dags(cosmos, airflow_home, ["finance_cosmos_hook_reads"])
    assert _state(hook_results[0]) == "success", hook_output[-4000:]
    assert "HOOK get_document order-1001 get_documents ['order-1001']" in hook_output
    # the SDK verifies the gateway's certificate: no warning from a Lockgate-made connection
    assert "InsecureRequestWarning" not in output + hook_output
    # the refusals reach the task log with the policy's reason
    assert "Lockgate denied write on sales/orders" in output
    assert "airflow:prod/finance_cosmos_write/insert_order" in output
    assert "Lockgate denied admin on sales (delete_database)" in output
    assert [d["id"] for d in cosmos.docs("order-")] == ["order-1001"]
    assert "sales" in cosmos.fake.store.databases
    # the account saw only the gateway's real-key signatures
    assert {r.auth_type for r in cosmos.fake.requests} == {"master"}

    cosmos.gateway.audit.flush(5.0)
    code, text = _cli(cosmos, "audit", "search", "--dag", "orders_load_cosmos", "--json")
    assert code == 0
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    writes = [r for r in rows if r["action"] == "write"]
    assert writes and writes[0]["object"] == "sales/orders"
    assert writes[0]["detail"]["db"] == "sales" and writes[0]["detail"]["container"] == "orders"
    assert writes[0]["detail"]["operation"] == "upsert_document"
    code, text = _cli(cosmos, "audit", "verify")
    assert code == 0, text


def test_key_rotation_during_a_load_fails_no_write(
    cosmos: CosmosStack, airflow_home: Path, tmp_path: Path
) -> None:
    secondary = cosmos.fake.keys[1]
    old_primary = cosmos.fake.keys[0]
    key_file = tmp_path / "secondary"
    key_file.write_text(secondary)
    key_file.chmod(0o600)
    before = len(cosmos.docs("bulk-"))
    assert before == 0
    rotated: dict[str, Any] = {}

    def rotate_midway() -> None:
        deadline = time.monotonic() + 60
        while len(cosmos.docs("bulk-")) < BULK // 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        rotated["at"] = len(cosmos.docs("bulk-"))
        rotated["cli"] = _cli(cosmos, "creds", "rotate", CREDENTIAL, "--from-file", str(key_file))
        time.sleep(0.2)  # the operator regenerates in Azure right after (no grace needed)
        cosmos.fake.regenerate("primary")  # Azure: the old primary stops working
        rotated["after"] = len(cosmos.docs("bulk-"))

    rotator = threading.Thread(target=rotate_midway)
    rotator.start()
    results, output = run_dags(cosmos, airflow_home, ["orders_load_cosmos_bulk"])
    rotator.join()
    assert _state(results[0]) == "success", output[-4000:]
    assert rotated["cli"][0] == 0
    assert 0 < rotated["at"] < BULK and rotated["after"] < BULK, rotated  # it was mid-load
    assert len(cosmos.docs("bulk-")) == BULK
    assert cosmos.fake.keys[0] != old_primary
    cosmos.gateway.audit.flush(5.0)
    code, text = _cli(cosmos, "audit", "search", "--event", "credential_rotated", "--json")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert code == 0 and rows, text
    assert any(r["object"] == CREDENTIAL and r["detail"]["version"] == 2 for r in rows), text
    # every write of the load was allowed and answered 2xx by the account
    code, text = _cli(cosmos, "audit", "search", "--dag", "orders_load_cosmos_bulk",
                      "--event", "allowed", "--limit", "2000", "--json")  # fmt: skip
    assert code == 0
    writes = [json.loads(line) for line in text.splitlines() if '"write"' in line]
    assert len(writes) >= BULK and all(w["status"] < 300 for w in writes)


def test_throttling_storm_completes_every_write_within_the_sdk_budget(
    cosmos: CosmosStack, airflow_home: Path
) -> None:
    path = "/dbs/sales/colls/orders/docs"
    before = cosmos.fake.count("POST", path)
    throttled_before = cosmos.fake.count(status=429)
    started: dict[str, float] = {}

    def storm_when_loading() -> None:
        deadline = time.monotonic() + 60
        while cosmos.fake.count("POST", path) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        cosmos.fake.throttle_for(5.0, retry_after_ms=1000)
        started["at"] = time.monotonic()

    storm = threading.Thread(target=storm_when_loading)
    storm.start()
    results, output = run_dags(cosmos, airflow_home, ["orders_load_cosmos_bulk"])
    storm.join()
    assert _state(results[0]) == "success", output[-4000:]
    attempts = cosmos.fake.count("POST", path) - before
    throttled = cosmos.fake.count(status=429) - throttled_before
    print(f"storm: {BULK} writes, {attempts} upstream attempts, {throttled} throttled")
    assert throttled >= 4  # the storm did happen, and lasted (1 s hints over 5 s)
    assert attempts <= 2 * BULK, (attempts, throttled)
    assert len(cosmos.docs("bulk-")) == BULK
