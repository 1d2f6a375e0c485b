"""One client connection: frame loop, handshake, and the request opcodes.

Strategy: read a 9-byte header, check version/length, read the body, answer in order (the
driver pipelines by stream id; answering in order is allowed). Anything that does not parse
as the protocol (``WireError``), a body over 256 MiB, a compressed frame or a version change
mid-connection closes this connection only. Before a successful AUTH_RESPONSE only OPTIONS,
STARTUP and AUTH_RESPONSE are served: deny by default.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any

from . import cql, encode, wire
from .execlog import Execution, describe_all
from .executor import Bound, Prepared, Result, SchemaChange, SetKeyspace, Void
from .grammar import parse
from .store import SYSTEM_KEYSPACES, Role, Table
from .system import CQL_VERSION
from .wire import CqlError, Reader, WireError

if TYPE_CHECKING:
    from .server import CqlServer

AUTHENTICATOR = "org.apache.cassandra.auth.PasswordAuthenticator"
_NAMES = {wire.QUERY: "QUERY", wire.PREPARE: "PREPARE", wire.EXECUTE: "EXECUTE",
          wire.BATCH: "BATCH", wire.REGISTER: "REGISTER"}  # fmt: skip


class Session:
    def __init__(self, server: CqlServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:  # fmt: skip
        self.server = server
        self.reader = reader
        self.writer = writer
        self.version: int | None = None
        self.started = False
        self.role_name: str | None = None
        self.keyspace: str | None = None
        self.connection = server.next_connection()
        # The request being executed, for the execution log: (number, opcode, text).
        self.request: tuple[int, str, str] = (0, "DIRECT", "")

    # -- frame loop --------------------------------------------------------------------
    async def serve(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(wire.HEADER_SIZE)
                h = wire.Header(*wire.HEADER.unpack(head))
                if h.length < 0 or h.length > wire.MAX_BODY:
                    return  # oversized or negative: drop the connection without reading it
                if not self._version_ok(h):
                    await self.writer.drain()
                    return
                body = await self.reader.readexactly(h.length)
                if h.flags & wire.FLAG_COMPRESSION:
                    self._error(
                        h.stream,
                        CqlError(
                            wire.PROTOCOL_ERROR,
                            "Compression was not negotiated (no COMPRESSION is supported)",
                        ),
                    )
                    await self.writer.drain()
                    return
                r = Reader(body)
                if h.flags & wire.FLAG_CUSTOM_PAYLOAD:
                    r.bytes_map()  # custom payloads are accepted and ignored
                try:
                    self._send(h.stream, *self.handle(h.opcode, r))
                except CqlError as err:
                    self._error(h.stream, err)
                except WireError:
                    raise
                except Exception as exc:  # a fake's bug must not look like a hang
                    msg = f"fake server error: {type(exc).__name__}: {exc}"
                    self._error(h.stream, CqlError(wire.SERVER_ERROR, msg))
                await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, WireError):
            return

    def _version_ok(self, h: wire.Header) -> bool:
        version = h.version & 0x7F
        if h.version & wire.RESPONSE_BIT:
            return False
        if version != wire.VERSION:
            # Real Cassandra's wording; the driver looks for "unsupported protocol version"
            # and retries on a new connection one version lower (0x42, 0x41, 5, then 4).
            msg = (f"Invalid or unsupported protocol version ({version}); "
                   "supported versions are (4/v4)")  # fmt: skip
            self._error(h.stream, CqlError(wire.PROTOCOL_ERROR, msg))
            return False
        self.version = version
        return True

    def _send(self, stream: int, opcode: int, body: bytes) -> None:
        self.writer.write(wire.frame(stream, opcode, body))

    def _error(self, stream: int, err: CqlError) -> None:
        self._send(stream, wire.ERROR, wire.error_body(err))

    # -- requests ----------------------------------------------------------------------
    def handle(self, opcode: int, r: Reader) -> tuple[int, bytes]:
        if opcode == wire.OPTIONS:
            opts = {"CQL_VERSION": [CQL_VERSION], "COMPRESSION": [], "PROTOCOL_VERSIONS": ["4/v4"]}
            return wire.SUPPORTED, wire.string_multimap(opts)
        if opcode == wire.STARTUP:
            return self._startup(r.string_map())
        if opcode == wire.AUTH_RESPONSE:
            return self._auth(r.bytes_())
        role = self._role(opcode)
        if opcode == wire.REGISTER:
            [r.string() for _ in range(r.short())]  # event types are read; events never sent
            return wire.READY, b""
        if opcode == wire.QUERY:
            text = r.long_string()
            params = wire.read_query_params(r)
            self.server.record(role.name, text)
            self.request = (self.server.next_request(), "QUERY", text)
            stmt, count = self._parse(text)
            self.server.maybe_fail(text)
            specs = self.server.executor.bind_specs(stmt, self.keyspace, count)
            bound = self._bound(params, [s.name for s in specs])
            res = self.run(
                stmt, bound, self.keyspace, role, (params.page_size, params.paging_state)
            )
            return wire.RESULT, encode.result(res, params.skip_metadata)
        if opcode == wire.PREPARE:
            text = r.long_string()
            self.server.record(role.name, text)
            self.server.maybe_fail(text)
            return wire.RESULT, self._prepare(text)
        if opcode == wire.EXECUTE:
            p = self._prepared(r.short_bytes())
            params = wire.read_query_params(r)
            self.server.record(role.name, p.text)
            self.request = (self.server.next_request(), "EXECUTE", p.text)
            self.server.maybe_fail(p.text)
            bound = self._bound(params, [s.name for s in p.specs])
            res = self.run(p.stmt, bound, p.keyspace, role, (params.page_size, params.paging_state))
            return wire.RESULT, encode.result(res, params.skip_metadata)
        if opcode == wire.BATCH:
            return self._batch(r, role)
        raise CqlError(wire.PROTOCOL_ERROR, f"Unknown or unexpected opcode 0x{opcode:02x}")

    def _startup(self, opts: dict[str, str]) -> tuple[int, bytes]:
        if self.started:
            raise CqlError(
                wire.PROTOCOL_ERROR,
                "Unexpected message STARTUP, the connection is already initialized",
            )
        if "CQL_VERSION" not in opts:
            raise CqlError(wire.PROTOCOL_ERROR, "Missing value CQL_VERSION in STARTUP message")
        if "COMPRESSION" in opts:
            name = opts["COMPRESSION"]
            raise CqlError(wire.PROTOCOL_ERROR, f"Unknown compression algorithm: {name}")
        self.started = True
        return wire.AUTHENTICATE, wire.string(AUTHENTICATOR)

    def _auth(self, token: bytes | None) -> tuple[int, bytes]:
        if not self.started or self.role_name is not None:
            raise CqlError(wire.PROTOCOL_ERROR, "Unexpected message AUTH_RESPONSE")
        parts = (token or b"").split(b"\x00")
        role: Role | None = None
        if len(parts) == 3:
            try:
                user, password = parts[1].decode(), parts[2].decode()
            except UnicodeDecodeError:
                user = password = ""
            role = self.server.store.authenticate(user, password) if user else None
        if role is None:
            raise CqlError(wire.BAD_CREDENTIALS, "Provided username and/or password are incorrect")
        self.role_name = role.name
        return wire.AUTH_SUCCESS, wire.bytes_(None)

    def _role(self, opcode: int) -> Role:
        if self.role_name is None:
            expecting = "AUTH_RESPONSE" if self.started else "STARTUP or OPTIONS"
            name = _NAMES.get(opcode, f"0x{opcode:02x}")
            raise CqlError(wire.PROTOCOL_ERROR, f"Unexpected message {name}, expecting {expecting}")
        role = self.server.store.roles.get(self.role_name)
        if role is None or not role.login:
            raise CqlError(
                wire.UNAUTHORIZED, f"Role {self.role_name} no longer exists or may not log in"
            )
        return role

    @staticmethod
    def _parse(text: str) -> tuple[Any, int]:
        return parse(text)

    def _bound(self, params: wire.QueryParams, spec_names: list[str]) -> Bound:
        values = params.values
        if params.names is not None:
            by_name = dict(zip(params.names, values, strict=True))
            values = [by_name.get(n, wire.UNSET) for n in spec_names]
        if len(values) != len(spec_names):
            raise CqlError(
                wire.INVALID,
                f"There were {len(spec_names)} markers(?) in CQL but {len(values)} bound variables",
            )
        return Bound(list(values))

    def _prepare(self, text: str) -> bytes:
        stmt, count = self._parse(text)
        ex = self.server.executor
        specs = ex.bind_specs(stmt, self.keyspace, count)
        pk = ex.pk_indexes(stmt, self.keyspace)
        result_cols = None
        if isinstance(stmt, cql.Select):
            t = ex.lookup(stmt.table, self.keyspace)
            result_cols = (t.keyspace, t.name, ex.select_columns(stmt, t))
        qid = prepared_id(text, None if _fully_qualified(stmt) else self.keyspace)
        self.server.prepared[qid] = Prepared(text, self.keyspace, stmt, specs)
        return encode.prepared(qid, specs, pk, result_cols)

    def _prepared(self, qid: bytes) -> Prepared:
        p = self.server.prepared.get(qid)
        if p is None:
            raise CqlError(
                wire.UNPREPARED,
                f"Prepared query with ID {qid.hex()} not found (either the query was not "
                "prepared on this host (maybe the host has been restarted?) or you have "
                "prepared too many queries and it has been evicted from the internal cache)",
                wire.short_bytes(qid),
            )
        return p

    def _batch(self, r: Reader, role: Role) -> tuple[int, bytes]:
        kind = r.byte()
        if kind > 2:
            raise WireError("bad batch type")
        items: list[tuple[Any, str, Bound, str | None]] = []
        for _ in range(r.short()):
            if r.byte() == 0:
                text = r.long_string()
                stmt, count = self._parse(text)
                names = [
                    s.name for s in self.server.executor.bind_specs(stmt, self.keyspace, count)
                ]
                ks = self.keyspace
            else:
                p = self._prepared(r.short_bytes())
                text, stmt, ks, names = p.text, p.stmt, p.keyspace, [s.name for s in p.specs]
            values = [r.value() for _ in range(r.short())]
            if len(values) != len(names):
                raise CqlError(
                    wire.INVALID,
                    f"There were {len(names)} markers(?) in CQL but {len(values)} bound variables",
                )
            if not isinstance(stmt, cql.Insert | cql.Update | cql.Delete):
                raise CqlError(
                    wire.INVALID,
                    "Invalid statement in batch: only UPDATE, INSERT and DELETE statements "
                    "are allowed.",
                )
            items.append((stmt, text, Bound(values), ks))
        r.short()  # consistency
        flags = r.byte()
        if flags & wire.QF_SERIAL_CONSISTENCY:
            r.short()
        if flags & wire.QF_TIMESTAMP:
            r.long()
        for _, text, _, _ in items:
            self.server.record(role.name, text)
        self.server.maybe_fail(" ".join(text for _, text, _, _ in items))
        number = self.server.next_request()
        for stmt, text, bound, ks in items:
            self.request = (number, "BATCH", text)
            self.run(stmt, bound, ks, role, (None, None))
        return wire.RESULT, encode.result(Void())

    # -- statements --------------------------------------------------------------------
    def run(
        self,
        stmt: Any,
        bound: Bound,
        ks: str | None,
        role: Role,
        page: tuple[int | None, bytes | None],
    ) -> Result:
        """Execute one statement under keyspace ``ks``; log it once it succeeded."""
        result = self._execute(stmt, bound, ks, role, page)
        if not isinstance(stmt, cql.Batch):  # its children were logged one by one
            number, opcode, text = self.request
            done = describe_all(stmt, ks)
            if isinstance(stmt, cql.Select | cql.CreateView):
                # A view's rows are its base table's: reading it (or defining one) reads that.
                ref = stmt.table if isinstance(stmt, cql.Select) else stmt.base
                view_ks = ref.keyspace or ks
                base = self.server.store.base_of(view_ks, ref.name) or (
                    ref.name if isinstance(stmt, cql.CreateView) else None
                )
                if base is not None:
                    done.append((done[0][0], "read", f"{view_ks}.{base}"))
            for op, action, obj in done:
                self.server.executions.append(
                    Execution(self.connection, role.name, number, opcode, op, action, obj, ks, text)
                )
        return result

    def _execute(
        self,
        stmt: Any,
        bound: Bound,
        ks: str | None,
        role: Role,
        page: tuple[int | None, bytes | None],
    ) -> Result:
        ex = self.server.executor
        store = self.server.store
        if isinstance(stmt, cql.Use):
            store.keyspace(stmt.keyspace) if stmt.keyspace not in SYSTEM_KEYSPACES else None
            self.keyspace = stmt.keyspace
            return SetKeyspace(stmt.keyspace)
        if isinstance(stmt, cql.Select):
            t = ex.lookup(stmt.table, ks)
            store.authorize(role, "select", t.keyspace, t.name)  # a view's: its base's
            rows = ex.select(stmt, t, bound, page)
            rows.table = stmt.table.name  # a view's result metadata names the view
            return rows
        if isinstance(stmt, cql.Insert | cql.Update | cql.Delete | cql.Truncate):
            t = ex.lookup(stmt.table, ks)
            store.authorize(role, "modify", t.keyspace, t.name)
            if not isinstance(t, Table):
                raise CqlError(wire.UNAUTHORIZED, f"{t.keyspace} keyspace is not user-modifiable.")
            if store.base_of(t.keyspace, stmt.table.name) is not None:
                raise CqlError(wire.INVALID, "Cannot directly modify a materialized view")
            if isinstance(stmt, cql.Truncate):
                t.partitions.clear()
                return Void()
            op = {cql.Insert: ex.insert, cql.Update: ex.update, cql.Delete: ex.delete}[type(stmt)]
            result: Result = op(stmt, t, bound)  # type: ignore[operator]
            return result
        if isinstance(stmt, cql.Batch):
            for inner in stmt.statements:
                self.run(inner, bound, ks, role, page)
            return Void()
        if isinstance(stmt, cql.CreateKeyspace):
            done = store.create_keyspace(stmt, role)
            return SchemaChange("CREATED", "KEYSPACE", stmt.name) if done else Void()
        if isinstance(stmt, cql.DropKeyspace):
            done = store.drop_keyspace(stmt, role)
            if done and self.keyspace == stmt.name:
                self.keyspace = None
            return SchemaChange("DROPPED", "KEYSPACE", stmt.name) if done else Void()
        if isinstance(stmt, cql.CreateTable | cql.DropTable):
            target_ks = ex.keyspace_of(stmt.table, ks)
            if isinstance(stmt, cql.CreateTable):
                done, change = store.create_table(stmt, target_ks, role), "CREATED"
            else:
                done, change = store.drop_table(stmt, target_ks, role), "DROPPED"
            return SchemaChange(change, "TABLE", target_ks, stmt.table.name) if done else Void()
        if isinstance(stmt, cql.CreateView):
            target_ks = ex.keyspace_of(stmt.view, ks)
            done = store.create_view(stmt, target_ks, role)
            return SchemaChange("CREATED", "TABLE", target_ks, stmt.view.name) if done else Void()
        if isinstance(stmt, cql.RoleStmt):
            store.role_statement(stmt, role)
            return Void()
        if isinstance(stmt, cql.GrantStmt):
            res = stmt.resource
            if res[0] == "table" and not res[1]:
                res = ("table", ex.keyspace_of(cql.TableRef(None, res[2]), ks), res[2])
            store.grant(cql.GrantStmt(stmt.grant, stmt.permissions, res, stmt.role), role)
            return Void()
        raise CqlError(
            wire.INVALID, f"Statement not supported by the fake server: {type(stmt).__name__}"
        )


def prepared_id(text: str, keyspace: str | None) -> bytes:
    """Cassandra's ``QueryProcessor.computeId``: md5 of keyspace + query, or of the query alone
    when the keyspace is null (UTF-8, as ``MD5Digest.compute`` encodes)."""
    to_hash = text if keyspace is None else keyspace + text
    return hashlib.md5(to_hash.encode(), usedforsecurity=False).digest()


def _fully_qualified(stmt: Any) -> bool:
    """Whether Cassandra 4 prepares ``stmt`` as fully qualified (id without the keyspace).

    Only single-table statements (``QualifiedStatement`` in Cassandra) can be; every other
    statement, batches included, is hashed with the connection's keyspace.
    """
    tabled = cql.Select | cql.Insert | cql.Update | cql.Delete | cql.Truncate
    return isinstance(stmt, tabled) and stmt.table.keyspace is not None
