"""Connections are released: TLS handshake timeouts, per-listener caps, nothing kept after close.

The slow test drives a real ``lockgate serve`` process (TLS on the control, http, a resource's
own and the cql listener; the forward proxy's tunnels are TLS inside a plain listener) with
10 x 1,000 abandoned connections of each kind a port scanner, a health check or a
misconfigured client makes, and reads the process's RSS and open descriptors from /proc.
The fast tests run a gateway in this process and look at each mechanism on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import selectors
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from lockgate.config import load_config
from lockgate.demo.stack import REPO_ROOT
from lockgate.gateway.http import HttpEngine
from lockgate.server import Gateway
from lockgate.tlsgen import write_dev_ca, write_dev_tls
from tests.gateway.cql.process_stack import free_port, raise_fd_limit, rss_bytes, wait_port

INTERCEPTED = "management.azure.com"
CONNECT = f"CONNECT {INTERCEPTED}:443 HTTP/1.1\r\nHost: {INTERCEPTED}:443\r\n\r\n".encode()
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
PLAINTEXT = b"GET / HTTP/1.1\r\nHost: lockgate\r\n\r\n"
KINDS = ("no_bytes", "partial_hello", "wrong_ca", "plaintext")
LISTENERS = ("http", "mounted", "cql", "control", "forward_proxy")


# -- a gateway configuration with every kind of listener -------------------------------------


def write_config(
    work: Path, *, handshake_timeout: float, max_connections: int = 10_000, tls: bool = True
) -> tuple[Path, dict[str, int], dict[str, Path]]:
    """lockgate.yaml with TLS on control, http, the resource ``api``'s own listener and cql,
    and a plain forward proxy intercepting one host; returns (path, ports, TLS files)."""
    files = write_dev_tls(work / "tls")
    proxy_ca = write_dev_ca(work / "tls")
    ports = {name: free_port() for name in LISTENERS}
    limits = f"handshake_timeout: {handshake_timeout}, max_connections: {max_connections}"
    tls_part = f"tls: {{cert: {files['cert']}, key: {files['key']}}}, " if tls else ""

    def listener(name: str) -> str:
        return f"{{host: 127.0.0.1, port: {ports[name]}, {tls_part}{limits}}}"

    (work / "policies").mkdir(parents=True, exist_ok=True)
    (work / "policies" / "none.yaml").write_text("rules: []\n")
    config = work / "lockgate.yaml"
    config.write_text(
        f"""\
data_dir: {work / "data"}
log_level: error
listeners:
  control: {listener("control")}
  http: {listener("http")}
  cql: {listener("cql")}
  forward_proxy:
    host: 127.0.0.1
    port: {ports["forward_proxy"]}
    ca: {{cert: {proxy_ca["cert"]}, key: {proxy_ca["key"]}}}
    handshake_timeout: {handshake_timeout}
    max_connections: {max_connections}
resources:
  - name: cass
    kind: cql
    contact_points: ["127.0.0.1:9"]
    username: lockgate
    credential: pw
  - name: api
    kind: http
    upstream: http://127.0.0.1:9
    credential: pw
    listen: {listener("mounted")}
  - name: arm
    kind: http
    upstream: http://127.0.0.1:9
    credential: pw
    intercept: ["{INTERCEPTED}"]
credentials:
  - {{name: pw, type: static}}
policies: ["policies/*.yaml"]
"""
    )
    return config, ports, files


def client_hello() -> bytes:
    """A real TLS ClientHello, as Python's own client sends it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def open_raw(port: int, forward_proxy: bool) -> socket.socket:
    """A TCP connection where TLS would start next (for the proxy: inside a CONNECT tunnel)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if forward_proxy:
        sock.sendall(CONNECT)
        got = b""
        while not got.endswith(b"\r\n\r\n"):
            chunk = sock.recv(4096)
            assert chunk, "forward proxy closed before answering CONNECT"
            got += chunk
        assert got == ESTABLISHED, got
    return sock


def wait_closed_by_server(socks: list[socket.socket], timeout: float) -> float:
    """Seconds until the server closed every socket; fails after ``timeout``."""
    start = time.monotonic()
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    open_count = len(socks)
    try:
        while open_count:
            left = start + timeout - time.monotonic()
            assert left > 0, f"{open_count} of {len(socks)} connections still open after {timeout}s"
            for key, _ in sel.select(left):
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:  # reset
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    open_count -= 1
    finally:
        sel.close()
    return time.monotonic() - start


def abandon(
    kind: str,
    targets: list[tuple[int, bool]],
    n: int,
    *,
    wrong_ca: ssl.SSLContext,
    hello: bytes,
    handshake_timeout: float,
) -> None:
    """Open ``n`` connections of ``kind`` to each (port, is forward proxy), then leave them."""
    if kind == "wrong_ca":  # one after the other: each handshake needs the server's turn
        for port, forward_proxy in targets:
            for _ in range(n):
                with (
                    open_raw(port, forward_proxy) as s,
                    pytest.raises(ssl.SSLCertVerificationError),
                ):
                    wrong_ca.wrap_socket(s, server_hostname="localhost").close()
        return
    socks = [open_raw(port, proxy) for port, proxy in targets for _ in range(n)]
    try:
        if kind == "no_bytes":  # a TCP health check or a port scan that lingers
            took = wait_closed_by_server(socks, handshake_timeout + 10)
            assert took >= handshake_timeout * 0.5, "closed before the handshake timeout"
        elif kind == "partial_hello":  # half a ClientHello, then the client goes away
            for s in socks:
                s.sendall(hello[: len(hello) // 2])
        elif kind == "plaintext":  # plain HTTP to a TLS port: closed at once
            for s in socks:
                s.sendall(PLAINTEXT)
            assert wait_closed_by_server(socks, handshake_timeout) < handshake_timeout
        else:
            raise AssertionError(kind)
    finally:
        for s in socks:
            s.close()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_connections(control_port: int, ca: Path) -> dict[str, float]:
    """``lockgate_open_connections`` per listener, scraped from /metrics over TLS."""
    ctx = ssl.create_default_context(cafile=str(ca))
    url = f"https://127.0.0.1:{control_port}/metrics"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        text = r.read().decode()
    assert re.search(r"^process_resident_memory_bytes \d", text, re.M), "no RSS metric"
    assert re.search(r"^process_open_fds \d", text, re.M), "no open fds metric"
    found = re.findall(r'^lockgate_open_connections\{listener="([^"]+)"\} (\S+)$', text, re.M)
    return {name: float(value) for name, value in found}


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    raise_fd_limit()
    handshake_timeout = 2.0
    config, ports, files = write_config(tmp_path, handshake_timeout=handshake_timeout)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "--config", str(config), "serve"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for port in ports.values():
            wait_port(port, proc)
        yield proc, {"ports": ports, "files": files, "handshake_timeout": handshake_timeout}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.slow
def test_abandoned_connections_are_released(
    gateway_process: tuple[subprocess.Popen[bytes], dict[str, Any]], tmp_path: Path
) -> None:
    """10 cycles of 1,000 connections per kind, each cycle spread over the five listeners."""
    proc, info = gateway_process
    ports, files, handshake_timeout = info["ports"], info["files"], info["handshake_timeout"]
    targets = [(ports[name], name == "forward_proxy") for name in LISTENERS]
    wrong_ca = ssl.create_default_context(cafile=str(write_dev_tls(tmp_path / "other")["ca"]))
    hello = client_hello()
    per_listener = 1000 // len(LISTENERS)
    deadline = time.monotonic() + 600

    def back_to(base_fds: int) -> int:
        """The descriptor count once it is ``base_fds`` again, or after 10 s."""
        until = time.monotonic() + 10
        while (fds := fd_count(proc.pid)) != base_fds and time.monotonic() < until:
            time.sleep(0.05)
        return fds

    def settle(base_fds: int) -> tuple[int, int]:
        """Wait until the descriptors are back to ``base_fds``; then (rss, fds)."""
        back_to(base_fds)
        time.sleep(1.0)  # a burst of closes is followed by a memory release (0.5 s quiet)
        # On a loaded machine a connection the client abandoned can still wait in the
        # listen backlog and be accepted (then closed) during that second: wait it out too.
        return rss_bytes(proc.pid), back_to(base_fds)

    for kind in KINDS:  # warm up every path once (imports, the proxy's leaf, thread pools)
        abandon(
            kind, targets, 5, wrong_ca=wrong_ca, hello=hello, handshake_timeout=handshake_timeout
        )
    time.sleep(0.5)
    base_fds = fd_count(proc.pid)
    rows: list[tuple[str, int, int, int]] = []
    for kind in KINDS:
        for cycle in range(10):
            abandon(
                kind, targets, per_listener, wrong_ca=wrong_ca, hello=hello,
                handshake_timeout=handshake_timeout,
            )  # fmt: skip
            rss, fds = settle(base_fds)
            rows.append((kind, cycle, rss, fds))
            assert proc.poll() is None, "the gateway died"
            assert time.monotonic() < deadline, "took too long"
        # nothing is counted as open any more (the scrape itself is the one control connection)
        counts = open_connections(ports["control"], files["ca"])
        assert counts.pop("control") == 1 and set(counts.values()) == {0.0}, counts
    first = rows[0][2]
    report = "\n".join(f"{k:14} {c} rss={r >> 20} MiB fds={f}" for k, c, r, f in rows)
    assert all(f == base_fds for *_, f in rows), f"fds not back to {base_fds}:\n{report}"
    assert max(r for *_, r, _ in rows) <= first * 1.10, f"RSS grew past 110% of cycle 1:\n{report}"


# -- fast: one mechanism at a time, gateway in this process ----------------------------------


async def _gateway(tmp_path: Path, **settings: Any) -> Gateway:
    config, _ports, _files = write_config(tmp_path, **settings)
    gw = Gateway(load_config(config))
    await gw.start()
    return gw


async def _closed_within(port: int, timeout: float, payload: bytes = b"") -> float:
    """Connect, send ``payload``, and return how long until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    if payload:
        writer.write(payload)
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - start


async def test_tls_listeners_close_silent_clients_after_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    gw = await _gateway(tmp_path, handshake_timeout=0.5)
    try:
        ports = {
            "control": gw.control_port,
            "http": gw.http_port,
            "mounted": gw.mounted_ports["api"],
            "cql": gw.cql_port,
        }
        for name, port in ports.items():
            took = await _closed_within(port, 5.0)
            assert 0.3 <= took < 3.0, (name, took)
        # the tunnel's TLS in the forward proxy too
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.forward_proxy_port)
        writer.write(CONNECT)
        assert await reader.readuntil(b"\r\n\r\n") == ESTABLISHED
        start = time.monotonic()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        assert time.monotonic() - start < 3.0
        writer.close()
    finally:
        await gw.stop()


async def test_plaintext_and_wrong_ca_are_closed_at_once_and_forgotten(tmp_path: Path) -> None:
    gw = await _gateway(tmp_path, handshake_timeout=30)
    engine = cast(HttpEngine, gw.engines["http"])
    other = ssl.create_default_context(cafile=str(write_dev_tls(tmp_path / "other")["ca"]))
    try:
        for port in (gw.http_port, gw.cql_port, gw.control_port):
            assert await _closed_within(port, 5.0, PLAINTEXT) < 1.0
            for _ in range(3):
                with pytest.raises(ssl.SSLCertVerificationError):
                    await asyncio.open_connection(
                        "127.0.0.1", port, ssl=other, server_hostname="localhost"
                    )
        # asyncio's TLS (this test's loop; the process test runs uvloop) frees a failed
        # handshake's protocol only when the cycle collector runs (see ConnectionGuard)
        gc.collect()
        assert engine.guards["http"].count() == 0
        # 20 silent clients that give up: no registry keeps any of them
        socks = [socket.create_connection(("127.0.0.1", gw.http_port)) for _ in range(20)]
        await asyncio.sleep(0.2)
        assert engine.guards["http"].count() == 20
        for s in socks:
            s.close()
        await asyncio.sleep(0.3)
        gc.collect()  # asyncio's TLS again (see above)
        assert engine.guards["http"].count() == 0
        assert engine._connections == set()
    finally:
        await gw.stop()


async def test_http_listener_refuses_past_its_cap_with_a_503_naming_it(tmp_path: Path) -> None:
    from lockgate import metrics

    gw = await _gateway(tmp_path, handshake_timeout=5, max_connections=2, tls=False)

    def refused() -> float:
        labels = {"listener": "http"}
        value = metrics.REGISTRY.get_sample_value("lockgate_connections_refused_total", labels)
        return value or 0.0

    before = refused()
    try:
        held = [await asyncio.open_connection("127.0.0.1", gw.http_port) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"at its cap of 2 open connections" in answer
        assert refused() == before + 1
        # a place freed is a place taken: the next client is served (404: unknown resource)
        held[0][1].close()
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n")
        writer.close()
        assert not head.startswith(b"HTTP/1.1 503"), head
        for _, w in held[1:]:
            w.close()
    finally:
        await gw.stop()


async def test_cql_and_control_close_past_their_cap(tmp_path: Path) -> None:
    gw = await _gateway(tmp_path, handshake_timeout=5, max_connections=1, tls=False)
    try:
        for port in (gw.cql_port, gw.control_port):
            _, held = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.1)
            assert await _closed_within(port, 2.0) < 1.0
            held.close()
    finally:
        await gw.stop()


async def test_metrics_show_process_and_open_connections(tmp_path: Path) -> None:
    from lockgate import metrics

    gw = await _gateway(tmp_path, handshake_timeout=5, tls=False)
    try:
        _, held = await asyncio.open_connection("127.0.0.1", gw.http_port)
        await asyncio.sleep(0.1)
        text = metrics.render().decode()
        rss = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
        fds = re.search(r"^process_open_fds (\S+)$", text, re.M)
        assert rss and fds
        assert float(rss.group(1)) == pytest.approx(rss_bytes(os.getpid()), rel=0.2)
        assert float(fds.group(1)) >= 1
        assert 'lockgate_open_connections{listener="http"} 1.0' in text
        held.close()
    finally:
        await gw.stop()
