"""The gateway's policy follows its catalog: ``Gateway.update_resources`` (what ``SIGHUP``
calls when ``resources`` changed) re-checks the policy files against the new catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.config import load_config
from lockgate.policy import Request
from lockgate.server import Gateway

CONFIG = """\
data_dir: {data}
resources:
  - {{name: orders-api, kind: http, upstream: "http://127.0.0.1:9"}}
policies: ["policies/*.yaml"]
"""
POLICY = """rules:
  - id: hr-read
    effect: allow
    principals: ["airflow:prod/hr_daily/*"]
    actions: [read]
    resources: [hr-api]
"""
PRINCIPAL = "airflow:prod/hr_daily/load"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "hr.yaml").write_text(POLICY)
    cfg = tmp_path / "lockgate.yaml"
    cfg.write_text(CONFIG.format(data=tmp_path / "data"))
    gw = Gateway(load_config(cfg))
    try:
        yield gw
    finally:
        gw.audit.close()  # what Gateway.stop closes of a gateway never started


def test_a_policy_naming_a_resource_added_live_loads_without_a_restart(gateway: Gateway) -> None:
    assert "unknown resource 'hr-api'" in (gateway.policy.last_error or "")
    orders = gateway.config.resources[0]
    hr = orders.model_copy(update={"name": "hr-api"})
    gateway.update_resources([orders, hr])
    assert gateway.policy.last_error is None
    assert gateway.policy.current.decide(Request(PRINCIPAL, "read", "hr-api")).allowed
    gateway.update_resources([orders])  # taken away again: the file is refused, last good kept
    assert "unknown resource 'hr-api'" in (gateway.policy.last_error or "")
    assert gateway.policy.current.decide(Request(PRINCIPAL, "read", "hr-api")).allowed
