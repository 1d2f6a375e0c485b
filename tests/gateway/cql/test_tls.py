"""TLS on the client side of the CQL listener, with the dev CA from ``lockgate.tlsgen``.

The real cassandra-driver connects with an ``ssl_context`` trusting the CA (hostname checked
against the certificate's 127.0.0.1 SAN) and works as over plain TCP; a client that speaks
plain CQL to the TLS listener, or that does not trust the CA, fails cleanly and quickly, and
the listener keeps serving everybody else.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cassandra.cluster import NoHostAvailable

from lockgate.config import load_config
from lockgate.demo.standins.cqlserver import start_cql_server
from lockgate.gateway.cql import codec
from lockgate.server import Gateway
from lockgate.tlsgen import write_dev_tls

from .engine_stack import (
    CONFIG,
    POLICY,
    SCHEMA,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    RawClient,
    Stack,
    connect,
    dead_port,
    run_on_fake,
    stop_stack,
)

PLAIN_CQL = "cql: {host: 127.0.0.1, port: 0}"


@pytest.fixture
async def tls_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, Path]]:
    fake = await start_cql_server(
        users={"cassandra": "cassandra", UPSTREAM_USER: UPSTREAM_PASSWORD},
        superusers=("cassandra", UPSTREAM_USER),
    )
    for text in SCHEMA:
        run_on_fake(fake, text)
    paths = write_dev_tls(tmp_path / "tls")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "team.yaml").write_text(POLICY)
    text = CONFIG.format(data=tmp_path / "data", dead=dead_port(), live=fake.port)
    assert PLAIN_CQL in text
    tls_cql = (
        f"cql: {{host: 127.0.0.1, port: 0, tls: {{cert: {paths['cert']}, key: {paths['key']}}}}}"
    )
    cfg = tmp_path / "lockgate.yaml"
    cfg.write_text(text.replace(PLAIN_CQL, tls_cql))
    gw = Gateway(load_config(cfg))
    gw.state.credentials.set("cass-pw", UPSTREAM_PASSWORD)
    await gw.start()
    stack = Stack(gw, fake, gw.cql_port)
    try:
        yield stack, paths["ca"]
    finally:
        await stop_stack(stack)


def _context(ca: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    ctx.check_hostname = True
    return ctx


async def test_driver_with_ca_context_works_over_tls(tls_stack: tuple[Stack, Path]) -> None:
    stack, ca = tls_stack
    session = await asyncio.to_thread(
        connect, stack.port, stack.token("etl"), "ks", ssl_context=_context(ca),
        ssl_options={"server_hostname": "127.0.0.1"}, protocol_version=4,
    )  # fmt: skip
    try:
        await asyncio.to_thread(session.execute, "INSERT INTO orders (id, item) VALUES (7, 'tls')")
        rows = await asyncio.to_thread(lambda: list(session.execute("SELECT * FROM orders")))
        assert [(r.id, r.item) for r in rows] == [(7, "tls")]
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    allowed = stack.audit("allowed")
    assert {(r.action, r.object) for r in allowed} >= {
        ("write", "ks.orders"),
        ("read", "ks.orders"),
    }


async def test_catalog_template_carries_ssl_options_for_the_ca(
    tls_stack: tuple[Stack, Path],
) -> None:
    stack, _ = tls_stack
    template = stack.gw._connection_template(stack.gw.config.resource("cass"))
    assert template is not None and template["port"] == stack.port
    assert template["extra"]["ssl_options"] == {
        "ca_certs": "{lockgate_ca_file}",
        "cert_reqs": 2,
        "check_hostname": True,
    }


async def test_plain_client_on_tls_listener_fails_cleanly(tls_stack: tuple[Stack, Path]) -> None:
    stack, _ = tls_stack
    # Raw plain-text STARTUP: the listener expects a TLS ClientHello and drops the connection
    # without ever answering in CQL.
    raw = await RawClient.open(stack.port)
    try:
        raw.send(codec.Startup(stream=1, options={"CQL_VERSION": "3.0.0"}))
        assert await raw.closed(timeout=5.0)
    finally:
        raw.close()
    # The stock driver without TLS gives up with NoHostAvailable, in bounded time.
    with pytest.raises(NoHostAvailable):
        await asyncio.wait_for(
            asyncio.to_thread(connect, stack.port, stack.token("etl"), protocol_version=4), 20
        )
    # Nothing reached the node, and the listener still serves TLS clients.
    assert stack.fake.user_statements() == []
    await test_driver_with_ca_context_works_over_tls(tls_stack)


async def test_driver_that_does_not_trust_the_ca_is_refused(
    tls_stack: tuple[Stack, Path],
) -> None:
    stack, _ = tls_stack
    with pytest.raises(NoHostAvailable) as info:
        await asyncio.to_thread(
            connect, stack.port, stack.token("etl"), ssl_context=_context(None),
            protocol_version=4,
        )  # fmt: skip
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) or "certificate" in str(info.value)
    assert stack.fake.user_statements() == []
