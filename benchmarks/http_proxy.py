"""Requests/s and latency: an upstream directly vs the same upstream through Lockgate's HTTP engine.

Usage::

    .venv/bin/python benchmarks/http_proxy.py [--conns 50] [--duration 10] [--warmup 2]

Three kinds of process (this script re-runs itself in each role):

* ``upstream``: a minimal uvloop ``asyncio.Protocol`` server answering every request with a
  small fixed response (the stand-in for nginx-fast upstreams);
* ``gateway``: ``HttpEngine`` with in-process fakes that always allow (token verification,
  policy, broker, audit are trivially cheap, so the engine's own cost is what is measured);
* ``load``: ``wrk`` when it is on PATH, else a small uvloop load generator (keep-alive, one
  request in flight per connection, fixed duration) printing JSON.

Prints direct and Lockgate requests/s, p50/p99 latency, the ratio and the added p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-token"
BODY = b'{"ok":true,"items":[1,2,3]}'
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- upstream ---------------------------------------------------------------------------------
class _Upstream(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        n = buf.count(b"\r\n\r\n")  # GET only: every head end is one request
        if n:
            self.t.write(RESPONSE * n)
            buf = buf[buf.rfind(b"\r\n\r\n") + 4 :]
        self.buf = buf


def run_upstream(port: int) -> None:
    loop = _loop()
    loop.run_until_complete(loop.create_server(_Upstream, "127.0.0.1", port, backlog=1024))
    loop.run_forever()


# -- gateway ----------------------------------------------------------------------------------
def run_gateway(port: int, upstream_port: int) -> None:
    from dataclasses import dataclass

    from lockgate.config import Resource
    from lockgate.gateway.http import HttpEngine

    @dataclass
    class Claims:
        sub: str = "airflow:prod/bench/task"
        aud: str = "bench"
        jti: str = "j1"
        exp: float = time.time() + 86400
        iat: float = time.time()
        deployment: str = "prod"
        dag_id: str = "bench"
        task_id: str = "task"
        run_id: str = "r"
        try_number: int = 1
        map_index: int = -1

    claims = Claims()

    class Verifier:
        def verify(self, token: str, audience: str) -> Claims:
            return claims

    @dataclass
    class Decision:
        allowed: bool = True
        rule: str = "allow-all"
        reason: str = "matched"

        def explain(self) -> str:
            return "allowed by allow-all"

    decision = Decision()

    class PolicySet:
        def decide(self, req: Any) -> Decision:
            return decision

    class Policy:
        current = PolicySet()

    @dataclass(frozen=True)
    class Secret:
        value: str = "upstream-secret"
        version: int = 1

    secret = Secret()

    class Broker:
        async def upstream_secret(self, name: str, previous: bool = False) -> Secret:
            return secret

    class Audit:
        def check_writable(self) -> None:
            return None

        def emit(self, record: Any) -> None:
            return None

    res = Resource(
        name="bench", kind="http", upstream=f"http://127.0.0.1:{upstream_port}", credential="c"
    )
    loop = _loop()
    asyncio.set_event_loop(loop)
    engine = HttpEngine(
        [res], Verifier(), Policy(), Broker(), Audit(), lambda c, r: "assertion.jwt.sig"
    )
    loop.run_until_complete(engine.start("127.0.0.1", port))
    loop.run_forever()


# -- load generator ---------------------------------------------------------------------------
class _Client(asyncio.Protocol):
    def __init__(self, request: bytes, stats: dict[str, Any], until: float) -> None:
        self.request = request
        self.stats = stats
        self.until = until
        self.buf = b""
        self.sent = 0.0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.t = transport
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        self.t.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            m = re.search(rb"(?i)content-length: *(\d+)", buf[:end])
            size = int(m.group(1)) if m else 0
            if len(buf) < end + 4 + size:
                break
            status = buf[9:12]
            buf = buf[end + 4 + size :]
            now = time.perf_counter()
            if status == b"200":
                self.stats["lat"].append(now - self.sent)
            else:
                self.stats["errors"] += 1
            if now >= self.until:
                self.t.close()
                return
            self._send()
        self.buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _load(port: int, path: str, conns: int, duration: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()
    stats: dict[str, Any] = {"lat": [], "errors": 0}
    start = time.perf_counter()
    until = start + duration
    clients = []
    for _ in range(conns):
        _, proto = await loop.create_connection(
            lambda: _Client(request, stats, until), "127.0.0.1", port
        )
        clients.append(proto)
    await asyncio.gather(*(c.done for c in clients))
    elapsed = time.perf_counter() - start
    lat = sorted(stats["lat"])
    n = len(lat)
    return {
        "requests": n,
        "errors": stats["errors"],
        "rps": n / elapsed,
        "p50_ms": lat[n // 2] * 1000 if n else None,
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000 if n else None,
    }


def run_load(port: int, path: str, conns: int, duration: float) -> None:
    loop = _loop()
    print(json.dumps(loop.run_until_complete(_load(port, path, conns, duration))))


def _wrk(port: int, path: str, conns: int, duration: float) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{int(duration)}s", "--latency",
         "-H", f"Authorization: Bearer {TOKEN}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def ms(label: str) -> float | None:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return None
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50_ms": ms("50"), "p99_ms": ms("99")}


# -- orchestration ----------------------------------------------------------------------------
def _spawn(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, __file__, *args], env=env)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def measure(port: int, path: str, conns: int, duration: float, warmup: float) -> dict[str, Any]:
    if shutil.which("wrk"):
        if warmup:
            _wrk(port, path, conns, max(1.0, warmup))
        return {"tool": "wrk", **_wrk(port, path, conns, duration)}
    args = [str(port), path, str(conns)]
    if warmup:
        subprocess.run([sys.executable, __file__, "load", *args, str(warmup)], capture_output=True)
    out = subprocess.run(
        [sys.executable, __file__, "load", *args, str(duration)], capture_output=True, check=True
    )
    return {"tool": "asyncio", **json.loads(out.stdout)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    a = p.parse_args()
    up_port, gw_port = _free_port(), _free_port()
    procs = [_spawn("upstream", str(up_port)), _spawn("gateway", str(gw_port), str(up_port))]
    try:
        _wait_port(up_port)
        _wait_port(gw_port)
        direct = measure(up_port, "/items/1", a.conns, a.duration, a.warmup)
        gated = measure(gw_port, "/bench/items/1", a.conns, a.duration, a.warmup)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(5)
    ratio = gated["rps"] / direct["rps"] if direct["rps"] else 0.0
    added = (
        gated["p50_ms"] - direct["p50_ms"]
        if gated.get("p50_ms") is not None and direct.get("p50_ms") is not None
        else None
    )
    print(f"load tool: {direct['tool']}, {a.conns} connections, {a.duration:g}s")
    for name, r in (("direct", direct), ("lockgate", gated)):
        print(
            f"{name:>9}: {r['rps']:10.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
        )
    print(f"    ratio: {ratio:.2f}x  added p50: {added:.3f} ms" if added is not None else "")
    print(json.dumps({"direct": direct, "lockgate": gated, "ratio": ratio, "added_p50_ms": added}))


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "upstream":
        run_upstream(int(sys.argv[2]))
    elif role == "gateway":
        run_gateway(int(sys.argv[2]), int(sys.argv[3]))
    elif role == "load":
        run_load(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
