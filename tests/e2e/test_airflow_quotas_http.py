"""A write-heavy Airflow DAG paced by a Lockgate quota: the stock ``AzureCosmosDBHook``
upserts documents through the gateway under a rate quota of the policy files; the gateway
answers the excess with Cosmos DB's own 429 (``x-ms-retry-after-ms``, substatus 3200), the
azure-cosmos SDK waits and retries by itself, and the DAG completes without a failed task,
paced to the quota. The audit trail shows the ``throttled`` refusals naming the quota."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.demo.run import run_dags

from .test_airflow_cosmos import CosmosStack, _cli, _state

pytest.importorskip("airflow.providers.microsoft.azure", reason="the Azure provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]

DOCS = 60
RATE = 10.0
BURST = 5

PACED_DAG = f"""
import time
from datetime import datetime

from airflow.providers.microsoft.azure.hooks.cosmos import AzureCosmosDBHook
from airflow.sdk import DAG, task


@task
def upsert_many() -> None:
    hook = AzureCosmosDBHook("azure_cosmos_default")
    t0 = time.monotonic()
    for i in range({DOCS}):
        hook.upsert_document({{"id": f"paced-{{i}}", "region": "eu", "n": i}}, "sales", "orders")
    print(f"PACED upserted {DOCS} in {{time.monotonic() - t0:.2f}} s")


with DAG("orders_load_cosmos_paced", start_date=datetime(2025, 1, 1), schedule=None,
         catchup=False, tags=["lockgate"]):
    upsert_many()
"""

QUOTA = f"""\
quotas:
  - id: cosmos-paced-writes
    principals: ["airflow:prod/orders_load_cosmos_paced/*"]
    resources: ["orders-cosmos"]
    actions: [write]
    rate: {RATE:g}/s
    burst: {BURST}
"""


class PacedStack(CosmosStack):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        (self.workdir / "policies" / "cosmos-quotas.yaml").write_text(QUOTA, encoding="utf-8")
        (self.dags / "orders_load_cosmos_paced.py").write_text(PACED_DAG, encoding="utf-8")


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacedStack]:
    with PacedStack(tmp_path_factory.mktemp("lockgate-quotas-http")) as s:
        yield s


def test_a_write_heavy_dag_is_paced_to_its_quota_without_a_failed_task(
    paced: PacedStack, airflow_home: Path
) -> None:
    results, output = run_dags(paced, airflow_home, ["orders_load_cosmos_paced"])
    assert _state(results[0]) == "success", output[-4000:]
    assert len(paced.docs("paced-")) == DOCS
    took = re.search(r"PACED upserted \d+ in ([0-9.]+) s", output)
    assert took is not None, output[-4000:]
    least = (DOCS - BURST) / RATE
    print(f"quota {RATE:g}/s burst {BURST}: {DOCS} upserts in {took.group(1)} s (>= {least})")
    assert float(took.group(1)) >= least * 0.9
    assert paced.fake.count(status=429) == 0  # every 429 was the gateway's own

    paced.gateway.audit.flush(5.0)
    code, text = _cli(paced, "audit", "search", "--dag", "orders_load_cosmos_paced",
                      "--event", "throttled", "--limit", "5000", "--json")  # fmt: skip
    assert code == 0, text
    throttled = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert throttled, "the quota never throttled"
    for rec in throttled:
        assert rec["decision"] == "deny" and rec["reason"] == "throttled"
        assert rec["detail"]["limit"] == "cosmos-paced-writes"
        assert rec["detail"]["kind"] == "rate" and rec["status"] == 429
        assert rec["rule"] == "cosmos-orders-load"
    code, text = _cli(paced, "audit", "search", "--dag", "orders_load_cosmos_paced",
                      "--event", "allowed", "--limit", "5000", "--json")  # fmt: skip
    writes = [json.loads(line) for line in text.splitlines() if '"write"' in line]
    assert len(writes) == DOCS and all(w["status"] < 300 for w in writes)
