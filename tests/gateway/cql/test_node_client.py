"""A second, independent CQL client: the Node.js ``cassandra-driver`` through the gateway.

tests/node/smoke.js logs in with the resource name and a Lockgate token, runs a prepared
INSERT and SELECT and a DROP TABLE that policy denies, and prints JSON. ``make test`` installs
its npm dependencies; when they are missing this test installs them (npm registry). The
test is skipped only when ``node`` or ``npm`` is not installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .engine_stack import RESOURCE, UPSTREAM_USER, Stack, stack_fixture

NODE_DIR = Path(__file__).resolve().parents[2] / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="node and npm are needed for the Node.js client test"
)


def _ensure_driver() -> None:
    if (NODE_DIR / "node_modules" / "cassandra-driver" / "package.json").exists():
        return
    assert NPM is not None
    subprocess.run(
        [NPM, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    await asyncio.to_thread(_ensure_driver)
    async for s in stack_fixture(tmp_path):
        yield s


async def _smoke(stack: Stack, token: str) -> tuple[int, dict | None, str]:
    assert NODE is not None
    env = {
        **os.environ,
        "LOCKGATE_CQL_PORT": str(stack.port),
        "LOCKGATE_RESOURCE": RESOURCE,
        "LOCKGATE_TOKEN": token,
        "LOCKGATE_KEYSPACE": "ks",
    }
    proc = await asyncio.create_subprocess_exec(
        NODE, str(NODE_DIR / "smoke.js"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    return int(proc.returncode or 0), result, err.decode()


async def test_node_driver_reads_writes_and_is_denied_ddl(stack: Stack) -> None:
    token = stack.token("etl")
    code, result, err = await _smoke(stack, token)
    assert code == 0 and result is not None, err
    assert result["protocolVersion"] == 4
    # The gateway is the only node the driver knows about (peers hidden).
    assert len(result["hosts"]) == 1 and result["hosts"][0].endswith(f":{stack.port}")
    assert result["rows"] == [{"id": 4242, "item": "from-node"}]
    denied = result["denied"]
    assert denied is not None and denied["code"] == 0x2100, denied
    assert "Lockgate denied admin on ks.orders" in denied["message"]
    assert token not in json.dumps(result) and token not in err

    assert stack.upstream_users() == {UPSTREAM_USER}
    texts = [t for _, t in stack.fake.user_statements()]
    assert not any("DROP" in t for t in texts)
    allowed = {(r.action, r.object, r.detail.get("op")) for r in stack.audit("allowed")}
    assert ("write", "ks.orders", "execute") in allowed
    assert ("read", "ks.orders", "execute") in allowed
    assert [(r.action, r.object) for r in stack.audit("denied")] == [("admin", "ks.orders")]


async def test_node_driver_with_a_bad_token_cannot_connect(stack: Stack) -> None:
    code, result, err = await _smoke(stack, "not-a-token")
    assert code == 1 and result is None
    assert "Lockgate authentication failed (malformed)" in err
    assert stack.fake.user_statements() == []
