"""Independent PostgreSQL clients through the gateway: node-postgres (``pg``) and ``psql``.

Neither shares code with Lockgate's codec or with the Python drivers: tests/node/pg_smoke.js
(node-postgres, TLS verified against the gateway's CA, the resource name as database, a
token as password) and the real ``psql`` binary. Each runs a granted SELECT, is refused a
``DROP TABLE`` with SQLSTATE 42501 and keeps using the same connection; the server never sees
the DROP. ``make test`` installs the npm dependencies; when they are missing this test
installs them (npm registry). Skipped only where ``node``/``npm`` are absent and ``CI`` is
unset.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.postgres.stack import RESOURCE, PgStack, pg_stack
from tests.pgserver import PgServer, find_pg_bin

NODE_DIR = Path(__file__).resolve().parents[2] / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")
INSUFFICIENT_PRIVILEGE = "42501"


def _require_node() -> tuple[str, str]:
    if NODE is None or NPM is None:
        if os.environ.get("CI"):
            pytest.fail("CI: node and npm are needed for the node-postgres client test")
        pytest.skip("node and npm are needed for the node-postgres client test")
    return NODE, NPM


def _ensure_driver(npm: str) -> None:
    if (NODE_DIR / "node_modules" / "pg" / "package.json").exists():
        return
    subprocess.run(
        [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


async def _run(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> tuple[int, str, str]:
    # A subprocess on the loop: the gateway under test serves on this same loop.
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


def _assert_drop_never_reached_the_server(stack: PgStack, since: int) -> None:
    texts = [s.text for s in stack.server.statements(since) if s.database == stack.database]
    assert any("sales.orders" in t for t in texts), texts
    assert not any("DROP" in t.upper() for t in texts), texts


def _assert_denied_admin_audited(stack: PgStack) -> None:
    denied = [(r.action, r.object) for r in stack.audit("denied")]
    assert denied == [("admin", "sales.orders")], denied


async def test_node_postgres_reads_is_denied_ddl_and_goes_on(stack: PgStack) -> None:
    node, npm = _require_node()
    await asyncio.to_thread(_ensure_driver, npm)
    token = stack.token("etl")
    since = stack.server.log_position()
    env = {
        **os.environ,
        "LOCKGATE_PG_PORT": str(stack.port),
        "LOCKGATE_RESOURCE": RESOURCE,
        "LOCKGATE_TOKEN": token,
        "LOCKGATE_CA_FILE": str(stack.ca_file),
    }
    code, out, err = await _run([node, str(NODE_DIR / "pg_smoke.js")], env)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert code == 0 and lines, err
    result: dict[str, Any] = json.loads(lines[-1])
    assert result["simple"] == [{"id": 1, "item": "apple"}, {"id": 2, "item": "pear"}]
    assert result["param"] == [{"item": "pear"}]
    assert result["named"] == [{"item": "apple"}]
    denied = result["denied"]
    assert denied is not None and denied["code"] == INSUFFICIENT_PRIVILEGE, denied
    assert "airflow:prod/etl/load" in denied["message"]
    assert "admin" in denied["message"] and "sales.orders" in denied["message"]
    # The same connection (and its named prepared statement) still works after the refusal.
    assert result["after"] == [{"item": "pear"}]
    assert token not in out and token not in err
    _assert_drop_never_reached_the_server(stack, since)
    _assert_denied_admin_audited(stack)


PSQL_SCRIPT = """\
\\set VERBOSITY verbose
SELECT item FROM sales.orders WHERE id = 1;
DROP TABLE sales.orders;
SELECT item FROM sales.orders WHERE id = 2;
"""


async def test_psql_reads_is_denied_ddl_and_goes_on(stack: PgStack) -> None:
    psql = str(find_pg_bin() / "psql")
    token = stack.token("etl")
    since = stack.server.log_position()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
        "PGPASSWORD": token,
        "PGAPPNAME": "psql-smoke",
    }
    dsn = (
        f"host=127.0.0.1 port={stack.port} dbname={RESOURCE} user=lockgate "
        f"sslmode=verify-full sslrootcert={stack.ca_file}"
    )
    # Without ON_ERROR_STOP psql goes on after an error, in the same session.
    code, out, err = await _run(
        [psql, "-X", "-A", "-t", "-d", dsn, "-f", "-"], env, PSQL_SCRIPT.encode()
    )
    assert out.split() == ["apple", "pear"], (out, err)
    assert f"ERROR:  {INSUFFICIENT_PRIVILEGE}:" in err, err
    assert "airflow:prod/etl/load" in err and "sales.orders" in err
    assert code == 0  # psql's exit status for a script whose statements it could send
    assert token not in out and token not in err
    _assert_drop_never_reached_the_server(stack, since)
    _assert_denied_admin_audited(stack)
