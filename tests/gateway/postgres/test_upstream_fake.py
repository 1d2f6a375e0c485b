"""The upstream login against servers that misbehave on purpose (scripted fakes).

What a real PostgreSQL server never does but an impostor or a man in the middle might: ask
for a cleartext password over plain TCP, skip or forge the SCRAM server proof, present a
certificate for another name, slip clear bytes behind its TLS answer, never answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lockgate.config import PostgresResource
from lockgate.errors import UpstreamAuthFailed, UpstreamUnavailable
from lockgate.gateway.caches import SecretCache
from lockgate.gateway.postgres import codec, upstream
from lockgate.tlsgen import write_dev_tls
from tests.gateway.fakes import FakeBroker

SECRET = "the-upstream-secret"
Script = Callable[["Peer"], Awaitable[None]]


class Peer:
    """The server side of one fake connection, with what the client sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = bytearray()

    async def packet(self) -> bytes:
        """An untyped startup packet's body (after its length)."""
        head = await self.reader.readexactly(4)
        (length,) = struct.unpack("!i", head)
        body = await self.reader.readexactly(length - 4)
        self.received += head + body
        return body

    async def message(self) -> codec.Message:
        head = await self.reader.readexactly(5)
        type_, length = struct.unpack("!Bi", head)
        body = await self.reader.readexactly(length - 4)
        self.received += head + body
        return codec.Message(type_, body)

    async def send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))
        await self.writer.drain()

    async def startup(self, tls_context: ssl.SSLContext | None = None) -> dict[str, str]:
        """Read the startup (after a TLS upgrade when given a context); its parameters."""
        body = await self.packet()
        if struct.unpack("!i", body[:4])[0] == 80877103:  # SSLRequest
            if tls_context is None:
                await self.send(b"N")
            else:
                await self.send(b"S")
                await self.writer.start_tls(tls_context)
            body = await self.packet()
        parts = body[4:].split(b"\0")
        return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 2, 2)}

    async def ready(self) -> None:
        await self.send(
            codec.authentication_ok(),
            codec.parameter_status("server_version", "15.0"),
            codec.backend_key_data(4242, b"\x01\x02\x03\x04"),
            codec.ready_for_query("I"),
        )


class FakeServer:
    """Where the fake listens and every connection it took."""

    def __init__(self) -> None:
        self.port = 0
        self.peers: list[Peer] = []

    def sent(self) -> bytes:
        """Everything clients sent it (after TLS: the decrypted bytes)."""
        return b"".join(bytes(p.received) for p in self.peers)


@contextlib.asynccontextmanager
async def fake_server(script: Script) -> AsyncIterator[FakeServer]:
    """Serve ``script`` on 127.0.0.1 for each connection."""
    fake = FakeServer()
    tasks: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        fake.peers.append(peer)
        with contextlib.suppress(Exception):
            await script(peer)
        with contextlib.suppress(Exception):
            writer.close()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.ensure_future(handle(reader, writer)))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def resource(port: int, **overrides: object) -> PostgresResource:
    fields: dict[str, object] = {
        "name": "warehouse",
        "kind": "postgres",
        "host": "127.0.0.1",
        "port": port,
        "database": "db",
        "username": "gw",
        "credential": "wh-login",
        "tls": "disable",
        "connect_timeout": 5.0,
    }
    fields.update(overrides)
    return PostgresResource.model_validate(fields)


def secrets() -> SecretCache:
    return SecretCache(FakeBroker({"wh-login": [SECRET]}))


async def connect(port: int, **overrides: object) -> upstream.UpstreamLink:
    return await upstream.connect(resource(port, **overrides), secrets(), {})


@dataclass
class ServerTls:
    """A server certificate for db.example.internal, its CA and the server's context."""

    context: ssl.SSLContext
    ca: Path
    certificate_der: bytes


@pytest.fixture
def tls_for_other_name(tmp_path: Path) -> ServerTls:
    paths = write_dev_tls(tmp_path / "tls", ["db.example.internal"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(paths["cert"], paths["key"])
    leaf = paths["cert"].read_text().split("-----END CERTIFICATE-----")[0]
    der = ssl.PEM_cert_to_DER_cert(leaf + "-----END CERTIFICATE-----\n")
    return ServerTls(ctx, paths["ca"], der)


async def test_cleartext_password_over_plain_tcp_is_refused_and_never_sent() -> None:
    async def script(peer: Peer) -> None:
        await peer.startup()
        await peer.send(codec.authentication_cleartext_password())
        await peer.message()

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable, match=r"cleartext password .*\(tls: disable\)"):
            await connect(fake.port)
        await asyncio.sleep(0.05)
        assert SECRET.encode() not in fake.sent()


@pytest.fixture
def tls_for_loopback(tmp_path: Path) -> ServerTls:
    paths = write_dev_tls(tmp_path / "tls-loopback", ["127.0.0.1"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(paths["cert"], paths["key"])
    leaf = paths["cert"].read_text().split("-----END CERTIFICATE-----")[0]
    der = ssl.PEM_cert_to_DER_cert(leaf + "-----END CERTIFICATE-----\n")
    return ServerTls(ctx, paths["ca"], der)


def _cleartext_script(server_ctx: ssl.SSLContext, got: list[str]) -> Script:
    async def script(peer: Peer) -> None:
        await peer.startup(server_ctx)
        await peer.send(codec.authentication_cleartext_password())
        got.append(codec.decode_password((await peer.message()).body))
        await peer.ready()

    return script


async def test_cleartext_password_to_a_verified_server_is_sent(
    tls_for_loopback: ServerTls,
) -> None:
    got: list[str] = []
    async with fake_server(_cleartext_script(tls_for_loopback.context, got)) as fake:
        link = await connect(fake.port, tls="verify-full", ca_file=tls_for_loopback.ca)
        link.close()
    assert got == [SECRET]
    assert link.tls and link.backend_pid == 4242 and link.credential_version == 1


async def test_cleartext_password_to_an_unverified_server_is_refused_and_never_sent(
    tls_for_other_name: ServerTls,
) -> None:
    """Under ``tls: require`` anyone in the middle can present a certificate and ask for the
    password (an Entra token) in clear: refused; SCRAM still works there."""
    got: list[str] = []
    async with fake_server(_cleartext_script(tls_for_other_name.context, got)) as fake:
        with pytest.raises(UpstreamUnavailable, match=r"not verified \(tls: require\)"):
            await connect(fake.port, tls="require")
        await asyncio.sleep(0.05)
    assert got == []


async def test_verify_full_refuses_a_certificate_for_another_name(
    tls_for_other_name: ServerTls,
) -> None:
    server_ctx, ca = tls_for_other_name.context, tls_for_other_name.ca

    async def script(peer: Peer) -> None:
        await peer.startup(server_ctx)

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable, match=r"certificate verify failed.*mismatch"):
            await connect(fake.port, tls="verify-full", ca_file=ca)
        # the same certificate passes under its own name (localhost is not it either)
        with pytest.raises(UpstreamUnavailable, match="mismatch"):
            await connect(fake.port, tls="verify-full", ca_file=ca, host="localhost")


async def test_clear_bytes_behind_the_tls_answer_are_never_read_as_encrypted() -> None:
    injected = codec.authentication_ok() + codec.ready_for_query("I")

    async def script(peer: Peer) -> None:
        await peer.packet()
        await peer.send(b"S" + injected)  # a man in the middle's answer, in clear
        await asyncio.sleep(2)

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable):
            await connect(fake.port, tls="require", connect_timeout=1.0)


async def test_server_without_tls_is_refused_when_tls_is_wanted() -> None:
    async def script(peer: Peer) -> None:
        await peer.startup()  # answers 'N'
        await peer.packet()

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable, match="does not accept TLS"):
            await connect(fake.port, tls="require")
        assert len(fake.sent()) == 8  # the SSLRequest only: no startup, no password


def _scram_server_first(client_first: bytes) -> tuple[bytes, bytes]:
    nonce = client_first.split(b"r=", 1)[1]
    server_first = b"r=" + nonce + b"srv,s=" + base64.b64encode(b"salt1234") + b",i=4096"
    return nonce, server_first


@pytest.mark.parametrize("forgery", ["bad_signature", "ok_without_final", "ok_right_away"])
async def test_a_server_that_cannot_prove_the_scram_verifier_is_refused(forgery: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.startup()
        await peer.send(codec.authentication_sasl(["SCRAM-SHA-256"]))
        if forgery == "ok_right_away":
            await peer.message()
            await peer.ready()
            return
        initial = await peer.message()
        client_first = initial.body.split(b"\0", 1)[1][4:]
        _, server_first = _scram_server_first(client_first)
        await peer.send(codec.authentication_sasl_continue(server_first))
        await peer.message()  # client-final with the proof
        if forgery == "bad_signature":
            await peer.send(codec.authentication_sasl_final(b"v=" + base64.b64encode(b"x" * 32)))
        await peer.ready()

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable) as info:
            await connect(fake.port)
    assert not isinstance(info.value, UpstreamAuthFailed)
    assert "signature" in str(info.value) or "before proving" in str(info.value)


@pytest.mark.parametrize(
    ("auth", "match"),
    [
        (codec.authentication_sasl(["SCRAM-SHA-256-PLUS"]), "none supported"),
        (codec.authentication_sasl(["OAUTHBEARER"]), "none supported"),
        (codec.encode(codec.AUTHENTICATION, struct.pack("!i", 7)), "code 7"),  # GSS
        (codec.authentication_sasl_continue(b"r=x,s=eA==,i=1"), "code 11"),  # no exchange yet
    ],
)
async def test_unsupported_authentication_is_refused(auth: bytes, match: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.startup()
        await peer.send(auth)
        await peer.message()

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable, match=match):
            await connect(fake.port)
        assert SECRET.encode() not in fake.sent()


async def test_trust_login_sends_no_secret_and_keeps_bytes_past_ready() -> None:
    after = codec.notice_response("01000", "hello")

    async def script(peer: Peer) -> None:
        params = await peer.startup()
        assert params["user"] == "gw" and params["database"] == "db"
        assert params["search_path"] == '"public"'
        await peer.send(
            codec.notice_response("01000", "welcome"),
            codec.authentication_ok(),
            codec.parameter_status("TimeZone", "UTC"),
            codec.backend_key_data(7, b"\x00" * 4),
            codec.ready_for_query("I") + after,
        )
        await asyncio.sleep(0.5)

    async with fake_server(script) as fake:
        link = await connect(fake.port)
        sock = link.writer.get_extra_info("socket")
        keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        link.close()
    assert keepalive and nodelay  # an idle session stays known to NATs on the way
    assert link.pending == after
    assert link.credential_version is None
    assert link.parameters == {"TimeZone": "UTC"}
    assert (link.backend_pid, link.backend_secret) == (7, b"\x00" * 4)


async def test_a_login_that_never_answers_times_out() -> None:
    async def script(peer: Peer) -> None:
        await asyncio.sleep(30)

    async with fake_server(script) as fake:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamUnavailable, match=r"no login within 0\.3s"):
            await connect(fake.port, connect_timeout=0.3)
        assert loop.time() - started < 2


async def test_a_server_that_closes_mid_login_is_unavailable() -> None:
    async def script(peer: Peer) -> None:
        await peer.startup()
        await peer.send(codec.authentication_md5_password(b"salt"))
        await peer.message()

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable, match="last: the server closed the connection"):
            await connect(fake.port, connect_timeout=0.5)  # tried again: a restart looks so
        assert len(fake.peers) > 1


async def test_an_oversized_login_message_is_a_protocol_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.startup()
        await peer.send(struct.pack("!Bi", ord("R"), upstream.LOGIN_MAX_MESSAGE_BYTES + 100))
        await asyncio.sleep(1)

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable, match="protocol error"):
            await connect(fake.port)


async def test_an_unexpected_message_during_login_is_a_protocol_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.startup()
        await peer.send(codec.command_complete("SELECT 1"))
        await asyncio.sleep(1)

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable, match="unexpected message 'C'"):
            await connect(fake.port)


async def test_a_server_error_names_sqlstate_and_message() -> None:
    async def script(peer: Peer) -> None:
        await peer.startup()
        await peer.send(
            codec.error_response("53300", "sorry, too many clients already", severity="FATAL")
        )

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable) as info:
            await connect(fake.port)
    assert not isinstance(info.value, UpstreamAuthFailed)
    assert str(info.value) == (
        f"127.0.0.1:{fake.port}: FATAL 53300: sorry, too many clients already"
    )


@pytest.mark.parametrize(
    ("tls", "offered", "mechanism", "gs2"),
    [
        ("require", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"], "SCRAM-SHA-256-PLUS", b"p="),
        ("require", ["SCRAM-SHA-256"], "SCRAM-SHA-256", b"y,,"),  # -PLUS removed on the way?
        ("disable", ["SCRAM-SHA-256"], "SCRAM-SHA-256", b"n,,"),
    ],
)
async def test_scram_binds_to_the_servers_certificate_when_it_can(
    tls_for_other_name: ServerTls,
    tls: str,
    offered: list[str],
    mechanism: str,
    gs2: bytes,
) -> None:
    server_ctx = tls_for_other_name.context
    seen: dict[str, bytes] = {}

    async def script(peer: Peer) -> None:
        await peer.startup(server_ctx if tls != "disable" else None)
        await peer.send(codec.authentication_sasl(offered))
        name, _, rest = (await peer.message()).body.partition(b"\0")
        seen["mechanism"], seen["client_first"] = name, rest[4:]
        _, server_first = _scram_server_first(rest[4:])
        await peer.send(codec.authentication_sasl_continue(server_first))
        seen["client_final"] = (await peer.message()).body
        await peer.send(codec.error_response("28P01", "password authentication failed"))

    async with fake_server(script) as fake:
        with pytest.raises(UpstreamAuthFailed):
            await connect(fake.port, tls=tls)
    assert seen["mechanism"].decode() == mechanism
    assert seen["client_first"].startswith(gs2)
    channel = base64.b64decode(seen["client_final"].split(b",")[0][2:])
    if gs2 == b"p=":
        own = hashlib.sha256(tls_for_other_name.certificate_der).digest()  # ECDSA-SHA256
        assert channel == b"p=tls-server-end-point,," + own
    else:
        assert channel == gs2


async def test_a_server_starting_up_is_tried_again_until_it_takes_the_login() -> None:
    async def script(peer: Peer) -> None:
        await peer.startup()
        if len(fake.peers) == 1:
            ending = "terminating connection due to administrator command"
            await peer.send(codec.error_response("57P01", ending, severity="FATAL"))
            return
        if len(fake.peers) == 2:
            starting = "the database system is starting up"
            await peer.send(codec.error_response("57P03", starting, severity="FATAL"))
            return
        await peer.ready()

    async with fake_server(script) as fake:
        link = await connect(fake.port)
        link.close()
        assert len(fake.peers) == 3


@pytest.mark.parametrize(
    ("auth", "secret"),
    [
        (codec.authentication_sasl(["SCRAM-SHA-256"]), "pass\ud800word"),  # lone surrogate
        (codec.authentication_cleartext_password(), "pass\0word"),
    ],
)
async def test_a_secret_the_wire_cannot_carry_is_refused_without_quoting_it(
    tls_for_loopback: ServerTls, auth: bytes, secret: str
) -> None:
    async def script(peer: Peer) -> None:
        await peer.startup(tls_for_loopback.context)
        await peer.send(auth)
        answer = await peer.message()
        if b"SCRAM" in auth:  # the password is used only for the client-final message
            _, server_first = _scram_server_first(answer.body.split(b"\0", 1)[1][4:])
            await peer.send(codec.authentication_sasl_continue(server_first))
            await peer.message()

    cache = SecretCache(FakeBroker({"wh-login": [secret]}))
    async with fake_server(script) as fake:
        with pytest.raises(UpstreamUnavailable, match="cannot be sent") as info:
            await upstream.connect(
                resource(fake.port, tls="verify-full", ca_file=tls_for_loopback.ca), cache, {}
            )
    assert "word" not in str(info.value) and "pass" not in str(info.value)
