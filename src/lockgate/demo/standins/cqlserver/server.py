"""The fake Cassandra node: ``start_cql_server()`` and the ``CqlServer`` handle tests use.

Strategy: one asyncio server, one ``Session`` per connection, one shared ``Store`` and prepared
statement cache (prepared ids are per node in Cassandra, so every connection sees them).
Tests observe what reached the node through ``statements`` (every text received), what it
actually executed through ``executions`` (see ``execlog``), and steer failures with
``fail_next``. Faults never hit reads of system tables, so the driver's control connection
keeps working while user statements fail.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl as ssl_mod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import encode, wire
from .execlog import ExecutionLog
from .executor import Executor, Prepared
from .session import Session
from .store import Store
from .system import FakePeer, SystemTables
from .wire import CqlError

_SYSTEM_READ = re.compile(r"\bfrom\s+\"?system(_schema|_auth)?\"?\s*\.", re.IGNORECASE)
_FAULT_MESSAGES = {
    wire.OVERLOADED: "Server is in overloaded state. Cannot accept more requests at this point",
    wire.UNAVAILABLE: "Cannot achieve consistency level ONE",
    wire.WRITE_TIMEOUT: "Operation timed out - received only 0 responses.",
    wire.READ_TIMEOUT: "Operation timed out - received only 0 responses.",
    wire.IS_BOOTSTRAPPING: "Cannot read from a bootstrapping node",
    wire.SERVER_ERROR: "java.lang.RuntimeException: injected failure",
}


@dataclass
class Fault:
    remaining: int
    code: int
    message: str
    match: str | None


@dataclass
class CqlServer:
    host: str
    store: Store
    executor: Executor
    port: int = 0
    statements: list[tuple[str, str]] = field(default_factory=list)
    prepared: dict[bytes, Prepared] = field(default_factory=dict)
    executions: ExecutionLog = field(default_factory=ExecutionLog)
    connections: int = 0  # currently open
    total_connections: int = 0  # accepted since start
    sessions: int = 0  # Session objects numbered so far (connections and direct runs)
    requests: int = 0  # QUERY/EXECUTE/BATCH frames numbered so far
    _server: asyncio.Server | None = None
    _faults: list[Fault] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # -- test hooks --------------------------------------------------------------------
    def next_connection(self) -> int:
        self.sessions += 1
        return self.sessions

    def next_request(self) -> int:
        self.requests += 1
        return self.requests

    def record(self, role: str, text: str) -> None:
        self.statements.append((role, text))

    def user_statements(self) -> list[tuple[str, str]]:
        """``statements`` without the driver's own reads of system tables."""
        return [(r, t) for r, t in self.statements if not _SYSTEM_READ.search(t)]

    def fail_next(self, n: int, code: int = wire.OVERLOADED, message: str | None = None, *,
                  match: str | None = None) -> None:  # fmt: skip
        """Answer the next ``n`` user statements (optionally only those containing ``match``)
        with ERROR ``code``. System table reads are never failed."""
        msg = message or _FAULT_MESSAGES.get(code, f"injected error 0x{code:04x}")
        self._faults.append(Fault(n, code, msg, match))

    def maybe_fail(self, text: str) -> None:
        if _SYSTEM_READ.search(text):
            return
        for fault in self._faults:
            if fault.remaining > 0 and (fault.match is None or fault.match in text):
                fault.remaining -= 1
                raise CqlError(fault.code, fault.message, encode.error_extra(fault.code))
        self._faults = [f for f in self._faults if f.remaining > 0]

    def forget_prepared(self) -> None:
        """Drop every prepared statement, as a restarted node would (EXECUTE → Unprepared)."""
        self.prepared.clear()

    # -- lifecycle ---------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.total_connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            # close() cancels sessions; ending quietly keeps asyncio from logging it.
            with contextlib.suppress(asyncio.CancelledError):
                await Session(self, reader, writer).serve()
        finally:
            self.connections -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl_mod.SSLError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> CqlServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _peer(p: FakePeer | str | tuple[Any, ...]) -> FakePeer:
    if isinstance(p, FakePeer):
        return p
    if isinstance(p, str):
        return FakePeer(p)
    return FakePeer(*p)


async def start_cql_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    users: dict[str, str] | None = None,
    superusers: Iterable[str] = ("cassandra",),
    ssl: ssl_mod.SSLContext | None = None,
    fake_peers: Iterable[FakePeer | str | tuple[Any, ...]] = (),
    execution_log: str | Path | None = None,
) -> CqlServer:
    """Start a fake Cassandra 3.11 node speaking native protocol v4 with PasswordAuthenticator.

    ``fake_peers`` are rows of system.peers (address or (address, data_center, rack)); the
    default data center "dc-remote" keeps the driver's DC-aware policy from dialling them.
    ``execution_log`` is a JSON-lines file that receives every execution as it happens.
    """
    store = Store(dict(users if users is not None else {"cassandra": "cassandra"}), set(superusers))
    system = SystemTables(store, host, [_peer(p) for p in fake_peers])
    srv = CqlServer(
        host=host,
        store=store,
        executor=Executor(store, system),
        executions=ExecutionLog(execution_log),
    )
    srv._server = await asyncio.start_server(srv._accept, host, port, ssl=ssl)
    srv.port = srv._server.sockets[0].getsockname()[1]
    return srv
