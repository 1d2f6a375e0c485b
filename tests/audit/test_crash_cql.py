"""Never served unaudited, CQL: SIGKILL ``lockgate serve`` while clients pipeline INSERTs.

Cycles alternate ``audit.durability`` process and fsync (with fsync a connection's frames
are written upstream only once their records are synced).

The oracle is the fake node's execution log (statements it actually ran, written by the node
process as it runs them). Each INSERT carries its own key, so its own statement. After
``CYCLES`` kills and a last start (which replays the journal), every key the node executed
must have exactly one ``admitted`` record whose statement names it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lockgate.audit import AuditReader
from lockgate.config import load_config
from lockgate.demo.standins.cqlserver.execlog import ExecutionLog
from lockgate.gateway.cql import codec
from lockgate.identity import TaskIdentity, TokenIssuer
from lockgate.server import State
from tests.gateway.cql.engine_stack import RawClient
from tests.gateway.cql.process_stack import (
    CONFIG,
    POLICY,
    RESOURCE,
    SCHEMA,
    UPSTREAM_USER,
    _create_schema,
    free_port,
    wait_port,
)

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]

CYCLES = 20
CLIENTS = 4
PIPELINE = 8
_KEY = re.compile(r"VALUES \((\d+), 'crash'\)")


async def _client(port: int, token: str, keys: itertools.count[int], stop: asyncio.Event) -> int:
    """Pipeline INSERTs of fresh keys until ``stop``; reconnect after the gateway dies."""
    answered = 0
    while not stop.is_set():
        client: RawClient | None = None
        try:
            client = await RawClient.open(port)
            if not isinstance(await client.login(token, RESOURCE), codec.AuthSuccess):
                raise ConnectionError("login refused")
            while not stop.is_set():
                for stream in range(1, PIPELINE + 1):
                    text = f"INSERT INTO ks.kv (k, v) VALUES ({next(keys)}, 'crash')"  # noqa: S608
                    client.send(codec.Query(stream=stream, query=text))
                for _ in range(PIPELINE):
                    answer = await client.recv(2.0)
                    if answer is None:
                        raise ConnectionError("gateway closed")
                    answered += isinstance(answer, codec.Result)
        except (OSError, ConnectionError, TimeoutError, codec.CqlProtocolError):
            await asyncio.sleep(0.02)
        finally:
            if client is not None:
                client.close()
    return answered


async def _stop_after(stop: asyncio.Event, tasks: list[asyncio.Task[int]]) -> list[int]:
    stop.set()
    return list(await asyncio.gather(*tasks))


def test_sigkill_under_pipelined_cql_loses_no_executed_statement(tmp_path: Path) -> None:
    # the node from this checkout's tests; lockgate from wherever this process has it
    path = [p for p in (os.environ.get("PYTHONPATH"), str(REPO_ROOT)) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}
    password = secrets.token_urlsafe(18)
    execlog = tmp_path / "executed.jsonl"
    node = subprocess.Popen(
        [sys.executable, "-m", "lockgate.demo.standins.cqlserver", "--port", "0",
         "--user", "cassandra:cassandra", "--user", f"{UPSTREAM_USER}:{password}",
         "--execution-log", str(execlog)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    gateway: subprocess.Popen[bytes] | None = None
    try:
        assert node.stdout is not None
        match = re.search(r":(\d+)\s*$", node.stdout.readline())
        assert match, "fake CQL node did not start"
        node_port = int(match.group(1))
        _create_schema(node_port, SCHEMA)
        (tmp_path / "policies").mkdir()
        (tmp_path / "policies" / "team.yaml").write_text(POLICY)
        cql_port = free_port()
        config_path = tmp_path / "lockgate.yaml"
        text = CONFIG.format(
                data=tmp_path / "data", log_level="warning", cql_tls="", upstream=node_port,
                control=free_port(), http=free_port(), cql=cql_port,
        )  # fmt: skip
        assert "audit: {write_timeout: 2.0}" in text
        config_path.write_text(text)
        config = load_config(config_path)
        state = State(config)
        state.credentials.set("cass-pw", password)
        identity = TaskIdentity("prod", "etl", "load", "crash-cql", 1)
        token = str(TokenIssuer(state.keys, config.issuer_url).mint(identity, RESOURCE, 900)[0])
        rng = random.Random(int.from_bytes(os.urandom(4), "big"))
        keys = itertools.count(1)
        answered = 0
        serve = [sys.executable, "-m", "lockgate", "--config", str(config_path), "serve"]
        for cycle in range(CYCLES):
            durability = "fsync" if cycle % 2 else "process"  # both must hold
            config_path.write_text(
                text.replace("audit: {write_timeout: 2.0}", f"audit: {{durability: {durability}}}")
            )
            gateway = subprocess.Popen(
                serve, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            wait_port(cql_port, gateway)
            answered += asyncio.run(_killed_under_load(gateway, cql_port, token, keys, rng))
        gateway = subprocess.Popen(
            serve, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(cql_port, gateway)  # started: the journals are replayed
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
    finally:
        for proc in (gateway, node):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)

    executed = {
        int(m.group(1))
        for r in ExecutionLog.read(execlog)
        if r.op == "insert" and (m := _KEY.search(r.text))
    }
    assert answered > CYCLES * 20 and len(executed) >= answered
    rows = AuditReader(tmp_path / "data" / "audit.db").search(
        run="crash-cql", decision="allow", limit=10_000_000
    )
    allowed = [r for r in rows if r.event == "admitted"] or rows  # (older trails: outcomes)
    admitted = [int(m.group(1)) for r in allowed if (m := _KEY.search(str(r.detail)))]
    missing = executed - set(admitted)
    assert not missing, f"{len(missing)} of {len(executed)} executed statements have no record"
    assert len(admitted) == len(set(admitted)), "a record was chained twice"
    assert AuditReader(tmp_path / "data" / "audit.db").verify().ok


async def _killed_under_load(
    gateway: subprocess.Popen[bytes],
    port: int,
    token: str,
    keys: itertools.count[int],
    rng: random.Random,
) -> int:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_client(port, token, keys, stop)) for _ in range(CLIENTS)]
    await asyncio.sleep(rng.uniform(0.2, 0.8))
    os.killpg(gateway.pid, signal.SIGKILL)
    gateway.wait(10)
    await asyncio.sleep(0.1)
    return sum(await _stop_after(stop, tasks))
