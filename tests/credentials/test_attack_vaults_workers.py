"""A vault out of reach for longer than ttl + grace under ``lockgate serve --workers 2``: every
worker fetches for itself, every request is refused with a credential error and audited, and
both recover by themselves once the vault is back (no restart)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from lockgate.audit import AuditReader
from lockgate.demo.standins.entra.thread import LoopThread
from lockgate.demo.standins.vault import FakeVault
from lockgate.demo.standins.vault import start as start_vault
from tests._gateway_process import (
    CREDENTIAL,
    BearerUpstream,
    get_status,
    scaffold,
    serve,
    stop,
    wait_serving,
)

TTL, GRACE = 1, 2
#: The engines' one-second secret cache and a server tick on top of ttl + grace.
SLACK = 2.5
#: A failed refresh is retried this long after (vaults.RETRY_AFTER) plus a tick.
RECOVERY = 5.0 + SLACK


def _every_answer_becomes(url: str, token: str, status: int, within: float) -> None:
    deadline = time.monotonic() + within
    while [get_status(url, token) for _ in range(20)] != [status] * 20:  # both workers
        assert time.monotonic() < deadline, f"not every worker answers {status}"
        time.sleep(0.2)


@pytest.mark.slow
def test_workers_refuse_and_audit_through_a_long_outage_then_recover(
    tmp_path: Path, bearer_upstream: BearerUpstream
) -> None:
    loop = LoopThread()
    vault = FakeVault(policies={"orders": [("secret/data/orders/*", {"read"})]})
    loop.serve(start_vault(vault))
    try:
        role_id, secret_id = vault.add_approle("gateway", policies=["orders"])
        (tmp_path / "secret-id").write_text(secret_id)
        vault.put("orders/api", {"value": bearer_upstream.secret})
        gw = scaffold(tmp_path / "lg", bearer_upstream)
        data = yaml.safe_load(gw.config_path.read_text())
        data["credentials"] = [
            {"name": CREDENTIAL, "type": "vault_kv", "address": vault.base_url,
             "path": "orders/api", "ttl": TTL, "grace": GRACE, "timeout": 1.0,
             "auth": {"method": "approle", "role_id": role_id,
                      "secret_id_file": str(tmp_path / "secret-id")}}
        ]  # fmt: skip
        gw.config_path.write_text(yaml.safe_dump(data))
        token, _ = gw.mint("finance_daily", "vault-outage")
        url = gw.url()
        proc = serve(gw.config_path, "--workers", "2")
        try:
            wait_serving(proc, url, token)
            time.sleep(0.5)  # both workers in the port group
            assert [get_status(url, token) for _ in range(20)] == [200] * 20
            assert vault.logins >= 1

            vault.available = False  # sealed or down
            down = time.monotonic()
            _every_answer_becomes(url, token, 503, TTL + GRACE + SLACK)
            assert time.monotonic() - down >= TTL  # the cached value was served meanwhile
            assert [get_status(url, token) for _ in range(20)] == [503] * 20

            vault.available = True
            _every_answer_becomes(url, token, 200, RECOVERY)
        finally:
            assert stop(proc) == 0
        rows = AuditReader(gw.config.data_dir / "audit.db").search(run="vault-outage", limit=10_000)
        refused = [r for r in rows if r.status == 503]
        assert len(refused) >= 20
        assert {(r.event, r.decision, r.reason) for r in refused} == {
            ("upstream_error", "error", "credential_unavailable")
        }
        assert not any(bearer_upstream.secret in str(r) for r in rows)
    finally:
        loop.stop()
