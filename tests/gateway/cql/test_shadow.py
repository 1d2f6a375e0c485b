"""A shadow policy watched through the CQL engine (the real driver, gateway, policy files and
audit log): statements are decided by the enforced files alone, the records of those the
shadow file would decide otherwise carry its verdict, and ``lockgate audit search --shadow``
lists exactly those, with both decisions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cassandra import Unauthorized

from lockgate.cli import main

from .engine_stack import Stack, connect, stack_fixture

# Watch two changes: etl may no longer read ks.orders (a new deny), and the secrets deny
# narrowed to ops (same rule id: it replaces the enforced rule in the shadow set).
SHADOW = """\
mode: shadow
rules:
  - id: etl-no-orders
    effect: deny
    principals: ["airflow:prod/etl/*"]
    actions: [read]
    resources: [cass]
    objects: ["ks.orders"]
  - id: etl-no-secrets
    effect: deny
    principals: ["airflow:prod/ops/*"]
    actions: [write]
    resources: [cass]
    objects: ["ks.secrets"]
"""


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        (tmp_path / "policies" / "team.shadow.yaml").write_text(SHADOW)
        s.gw.policy.reload_if_changed()
        assert s.gw.policy.shadow is not None, s.gw.policy.shadow_error
        yield s


def run_as_etl(stack: Stack) -> tuple[int, str]:
    session = connect(stack.port, stack.token(), "ks")
    try:
        rows = list(session.execute("SELECT id, item FROM ks.orders WHERE id = 1"))
        try:
            session.execute("INSERT INTO ks.secrets (id, v) VALUES (1, 'x')")
        except Unauthorized as exc:
            return len(rows), str(exc)
        return len(rows), ""
    finally:
        session.cluster.shutdown()


async def test_shadow_verdicts_recorded_and_listed(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, refusal = await asyncio.to_thread(run_as_etl, stack)
    assert rows == 0  # the read was served (the shadow deny is not enforced)
    assert "etl-no-secrets" in refusal  # the write refused by the enforced deny

    (read,) = [r for r in stack.audit("admitted") if r.object == "ks.orders"]
    assert read.rule == "etl-read-write"
    assert read.detail["shadow"] == {
        "decision": "deny",
        "rule": "etl-no-orders",
        "reason": "denied by rule etl-no-orders (team.shadow.yaml)",
    }
    (write,) = [r for r in stack.audit("denied") if r.object == "ks.secrets"]
    assert write.rule == "etl-no-secrets"
    assert write.detail["shadow"]["decision"] == "allow"
    assert write.detail["shadow"]["rule"] == "etl-read-write"
    others = [r for r in stack.audit() if r.object not in ("ks.orders", "ks.secrets")]
    assert all("shadow" not in r.detail for r in others)  # driver metadata reads too

    capsys.readouterr()
    assert main(["-c", str(tmp_path / "lockgate.yaml"), "audit", "search", "--shadow"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in out[1::2]] == ["admitted", "denied"]
    assert out[2] == "    shadow: would deny rule=etl-no-orders " + read.detail["shadow"]["reason"]
    assert out[4].startswith("    shadow: would allow rule=etl-read-write allowed by rule")
    assert "rule=etl-no-secrets" in out[3]  # the enforced decision, next to the shadow one
