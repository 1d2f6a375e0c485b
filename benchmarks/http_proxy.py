"""Requests/s and latency: an upstream directly, through nginx, and through the real Lockgate.

Usage::

    .venv/bin/python -m benchmarks.http_proxy [--conns 50] [--moderate 8] [--duration 10]

One run measures, against the same upstream and with the same load tool:

* ``direct``: straight to the upstream (the client sends the upstream secret itself);
* ``nginx``: ``nginx proxy_pass`` (worker_processes auto, access_log off, upstream keepalive
  64, the secret added by ``proxy_set_header``) when ``nginx`` is installed;
* ``lockgate``: the real :class:`lockgate.server.Gateway` in its own uvloop process (audit
  written by a thread in the gateway process, the default), built from
  ``lockgate.scaffold.write_init`` (no TLS) with the ``orders-api-key`` credential stored in
  the encrypted credential store, the scaffold policy, a real minted token (verified on every
  request, cached), real policy decisions and the real hash-chained SQLite audit trail
  (one record per request);
* ``lockgate-process``: the same with ``audit.writer: process`` (a separate writer process),
  for comparison;
* ``lockgate-w2``: ``lockgate serve --workers 2`` (two SO_REUSEPORT worker processes, one
  audit writer process);
* ``lockgate-fsync``: ``lockgate`` with ``audit.durability: fsync`` (an allowed request is
  forwarded once its journal line is on the device: group-committed ``fdatasync``);
* ``lockgate-traced``: ``lockgate`` with ``tracing.enabled`` (sample ratio 1, a token
  carrying a sampled ``traceparent``, so every request records a span and its upstream
  attempt) exporting over OTLP/HTTP (batch processor) to a local sink that answers 200 to
  every export; the ``tracing overhead`` line compares it with ``lockgate`` measured in the
  same run (run both: ``--variants lockgate,lockgate-traced``; on a busy machine add
  ``--rounds 3``: the variants are measured in turn three times and each keeps its median);
* ``engine``: ``HttpEngine`` alone with trivially cheap fakes for verifier, policy, broker
  and audit (the engine's own cost; the difference to ``lockgate`` is identity, policy and
  audit).

The upstream is a minimal uvloop ``asyncio.Protocol`` server with a small fixed JSON answer;
it checks the upstream credential on every request (a bytes search for the exact
``Authorization: Bearer <secret>`` line) and answers 401 without it, so a gateway that does
not inject the credential shows up as errors. Load is ``wrk`` (2 threads, keep-alive) when it
is installed, else a small uvloop load generator (one request in flight per connection).

Two load levels: *saturation* (``--conns``, default 50) gives requests/s and the ratios;
*moderate* (``--moderate``, default 8 connections) gives the latency Lockgate adds at a load
far from saturation (added p50 = Lockgate p50 - direct p50 at that load). The last lines
judge the default config (``lockgate``) against the fast data path's targets
(``benchmarks._common``): >= 0.5x nginx, added p50 <= 0.2 ms and p99 <= 2 ms at 8
connections, each PASS or MISS; ``engine`` is measured at both loads too, so the cost of
identity, policy and audit is the difference between its rows and ``lockgate``'s.

``main()`` returns 0, or 1 when a measurement saw errors (non-2xx or socket errors).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import HTTP_ADDED_P50_MS, HTTP_P99_MS, HTTP_VS_NGINX, judge

BODY = b'{"ok":true,"items":[1,2,3]}'
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
DENIED = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
FAKE_TOKEN = "bench-token"
PATH = "/orders"


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
def run_upstream(port: int, secret: str) -> None:
    need = b"\r\nAuthorization: Bearer " + secret.encode() + b"\r\n"

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data if self.buf else data
            out = []
            start = 0
            while True:  # GET only: every head end is one request
                end = buf.find(b"\r\n\r\n", start)
                if end < 0:
                    break
                ok = buf.find(need, start, end + 2) >= 0
                out.append(RESPONSE if ok else DENIED)
                start = end + 4
            if out:
                self.t.write(b"".join(out))
            self.buf = buf[start:]

    loop = _loop()
    loop.run_until_complete(loop.create_server(Upstream, "127.0.0.1", port, backlog=1024))
    loop.run_forever()


def _maybe_profile() -> None:
    """With LOCKGATE_BENCH_PROFILE=<file>, cProfile this process until SIGTERM."""
    out = os.environ.get("LOCKGATE_BENCH_PROFILE")
    if not out:
        return
    import cProfile
    import signal

    prof = cProfile.Profile()

    def stop(*_: Any) -> None:
        prof.disable()
        prof.dump_stats(out)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    prof.enable()


# -- gateways ---------------------------------------------------------------------------------
def run_fake_gateway(port: int, upstream_port: int, secret_value: str) -> None:
    """HttpEngine with fakes: the engine's own cost per request."""
    from benchmarks._common import AllowAll, FakeVerifier, FixedBroker, NullAudit
    from lockgate.config import HttpResource as Resource
    from lockgate.gateway.engine import Collaborators
    from lockgate.gateway.http import HttpEngine

    res = Resource(
        name="orders-api",
        kind="http",
        upstream=f"http://127.0.0.1:{upstream_port}",
        credential="orders-api-key",
    )
    _maybe_profile()
    loop = _loop()
    asyncio.set_event_loop(loop)
    shared = Collaborators(
        FakeVerifier(),
        AllowAll(),
        FixedBroker(secret_value),
        NullAudit(),
        lambda c, r: "assertion.jwt.sig",
    )
    engine = HttpEngine([res], shared)
    loop.run_until_complete(engine.start("127.0.0.1", port))
    loop.run_forever()


def run_otlp_sink(port: int) -> None:
    """An OTLP/HTTP collector stand-in: reads each export and answers 200, decoding nothing."""
    from aiohttp import web

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", accept)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def run_real_gateway(config_path: str, variant: str = "lockgate", otlp_port: str = "") -> None:
    """The real Lockgate process: ``lockgate.server.run`` on uvloop."""
    import logging

    from lockgate import server
    from lockgate.config import load_config
    from lockgate.config.tracing import TracingSettings

    cfg = load_config(config_path)
    if variant == "lockgate-traced":  # every request's span exported to the local sink
        traced = TracingSettings(enabled=True, otlp_endpoint=f"http://127.0.0.1:{otlp_port}")
        cfg = cfg.model_copy(update={"tracing": traced})
    if variant == "lockgate-process":  # audit written by a separate writer process
        cfg = cfg.model_copy(update={"audit": cfg.audit.model_copy(update={"writer": "process"})})
    elif variant == "lockgate-fsync":  # each request waits for its journal line's fdatasync
        audit = cfg.audit.model_copy(update={"durability": "fsync"})
        cfg = cfg.model_copy(update={"audit": audit})
    _maybe_profile()
    logging.disable(logging.INFO)  # the benchmark measures the data path, not log output
    server.run(cfg, workers=2 if variant == "lockgate-w2" else 1)


def make_lockgate_config(directory: Path, upstream_port: int, secret: str) -> tuple[Path, str]:
    """Scaffold config + stored credential + a minted token; returns (config path, token)."""
    from lockgate.config import load_config
    from lockgate.identity import TaskIdentity, TokenIssuer
    from lockgate.scaffold import write_init
    from lockgate.server import State

    written = write_init(
        directory,
        tls=False,
        control_port=_free_port(),
        http_port=_free_port(),
        upstream=f"http://127.0.0.1:{upstream_port}",
    )
    config = load_config(written["config"])
    state = State(config)
    state.credentials.set("orders-api-key", secret)
    identity = TaskIdentity("prod", "finance_daily", "read_orders", "bench", 1, -1)
    # As the secrets backend's tokens do: the task's trace context (sampled), so a traced
    # gateway records every request as a child of it.
    task_trace = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    issuer = TokenIssuer(state.keys, config.issuer_url)
    token, _ = issuer.mint(identity, "orders-api", 900, traceparent=task_trace)
    return written["config"], token


# -- nginx ------------------------------------------------------------------------------------
NGINX_CONF = """\
worker_processes auto;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {secret}";
        }}
    }}
}}
"""


def start_nginx(directory: Path, port: int, upstream_port: int, secret: str) -> Any:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        return None
    conf = directory / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(dir=directory, port=port, upstream=upstream_port, secret=secret)
    )
    return subprocess.Popen(
        [nginx, "-p", str(directory), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


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


async def _load(port: int, path: str, auth: str, conns: int, duration: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {auth}\r\n\r\n"
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


def run_load(port: int, path: str, auth: str, conns: int, duration: float) -> None:
    loop = _loop()
    print(json.dumps(loop.run_until_complete(_load(port, path, auth, conns, duration))))


def _wrk(port: int, path: str, auth: str, conns: int, duration: float) -> dict[str, Any]:
    threads = max(1, min(2, conns))
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency",
         "-H", f"Authorization: Bearer {auth}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def ms(label: str) -> float | None:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return None
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return {
        "requests": int(total.group(1)) if total else 0,
        "errors": errors,
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
    }


def measure(
    port: int, path: str, auth: str, conns: int, duration: float, warmup: float
) -> dict[str, Any]:
    if shutil.which("wrk"):
        if warmup:
            _wrk(port, path, auth, conns, max(1.0, warmup))
        return {"tool": "wrk", **_wrk(port, path, auth, conns, duration)}
    args = [str(port), path, auth, str(conns)]
    if warmup:
        subprocess.run(_self("load", *args, str(warmup)), capture_output=True, env=_env())
    out = subprocess.run(
        _self("load", *args, str(duration)), capture_output=True, check=True, env=_env()
    )
    return {"tool": "asyncio", **json.loads(out.stdout)}


# -- orchestration ----------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[1]  # the roles run as a script: benchmarks too
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root), env.get("PYTHONPATH", "")])
    return env


def _self(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(_self(*args), env=_env())


def _wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def _stop(proc: Any) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


VARIANTS = ("lockgate", "lockgate-process", "lockgate-w2", "lockgate-fsync", "lockgate-traced")


def _wait_closed(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.05)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median req/s (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: float(r["rps"]))
    return ordered[(len(ordered) - 1) // 2]


def _fmt(name: str, r: dict[str, Any] | None) -> str:
    if r is None:
        return f"{name:>18}: (not measured)"
    p50 = f"{r['p50_ms']:.3f}" if r.get("p50_ms") is not None else "?"
    p99 = f"{r['p99_ms']:.3f}" if r.get("p99_ms") is not None else "?"
    err = f"  errors {r['errors']}" if r.get("errors") else ""
    return f"{name:>18}: {r['rps']:10.0f} req/s  p50 {p50} ms  p99 {p99} ms{err}"


def _figures(
    r: dict[str, Any],
    m: dict[str, Any] | None,
    direct: dict[str, Any],
    ngx: dict[str, Any] | None,
    dm: dict[str, Any],
) -> dict[str, float | None]:
    """Ratios at saturation; added p50/p99 and p99 at moderate load (None: not measured)."""

    def minus(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    return {
        "vs_direct": r["rps"] / direct["rps"] if direct["rps"] else None,
        "vs_nginx": r["rps"] / ngx["rps"] if ngx and ngx["rps"] else None,
        "added_p50_ms": minus(m.get("p50_ms") if m else None, dm.get("p50_ms")),
        "added_p99_ms": minus(m.get("p99_ms") if m else None, dm.get("p99_ms")),
        "p99_ms": m.get("p99_ms") if m else None,
    }


def _explain(key: str, value: float | None) -> str:
    if value is None:
        return f"{key} ?"
    if key.startswith("vs_"):
        return f"{value:.2f}x {key[3:]}"
    return f"{key[:-3].replace('_', ' ')} {value:.3f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conns", type=int, default=50, help="connections at saturation")
    p.add_argument("--moderate", type=int, default=8, help="connections at moderate load")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the variants this many times, "
        "interleaved, and keep each one's median run (by req/s) against noisy neighbours",
    )
    p.add_argument("--no-engine", action="store_true", help="skip the engine-only (fakes) run")
    p.add_argument("--no-nginx", action="store_true")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="Lockgate variants to run, comma-separated"
    )
    a = p.parse_args(argv)
    variants = tuple(v for v in a.variants.split(",") if v in VARIANTS)
    secret = secrets.token_urlsafe(24)
    results: dict[str, dict[str, Any] | None] = {}
    procs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="lockgate-bench-") as tmp:
        tmpdir = Path(tmp)
        up_port = _free_port()
        procs.append(_spawn("upstream", str(up_port), secret))
        try:
            _wait_port(up_port)
            config_path, token = make_lockgate_config(tmpdir / "lockgate", up_port, secret)
            from lockgate.config import load_config

            gw_port = load_config(config_path).listeners.http.port
            nginx_port = _free_port()
            nginx = None
            if not a.no_nginx:
                (tmpdir / "nginx").mkdir()
                nginx = start_nginx(tmpdir / "nginx", nginx_port, up_port, secret)
                procs.append(nginx)

            def run(port: int, path: str, auth: str, conns: int) -> dict[str, Any]:
                return measure(port, path, auth, conns, a.duration, a.warmup)

            gpath = "/orders-api" + PATH
            results["direct"] = run(up_port, PATH, secret, a.conns)
            results["direct@moderate"] = run(up_port, PATH, secret, a.moderate)
            if nginx is not None:
                _wait_port(nginx_port)
                results["nginx"] = run(nginx_port, PATH, "client-token-ignored", a.conns)
                results["nginx@moderate"] = run(nginx_port, PATH, "x", a.moderate)
                _stop(nginx)
            otlp_port = _free_port()
            if "lockgate-traced" in variants:
                procs.append(_spawn("otlp-sink", str(otlp_port)))
                _wait_port(otlp_port)
            rounds: dict[str, list[dict[str, Any]]] = {}
            for _round in range(a.rounds):  # interleaved, so a busy moment hits every variant
                for variant in variants:
                    gw = _spawn("gateway", str(config_path), variant, str(otlp_port))
                    procs.append(gw)
                    _wait_port(gw_port)
                    time.sleep(1.0)  # every worker in the port group, writer connected
                    rounds.setdefault(variant, []).append(run(gw_port, gpath, token, a.conns))
                    moderate = run(gw_port, gpath, token, a.moderate)
                    rounds.setdefault(f"{variant}@moderate", []).append(moderate)
                    _stop(gw)
                    _wait_closed(gw_port)
            results.update({key: _median(runs) for key, runs in rounds.items()})
            if not a.no_engine:
                eng_port = _free_port()
                eng = _spawn("engine", str(eng_port), str(up_port), secret)
                procs.append(eng)
                _wait_port(eng_port)
                results["engine"] = run(eng_port, gpath, FAKE_TOKEN, a.conns)
                results["engine@moderate"] = run(eng_port, gpath, FAKE_TOKEN, a.moderate)
                _stop(eng)
        finally:
            for proc in procs:
                _stop(proc)
    direct, ngx, dm = results["direct"], results.get("nginx"), results["direct@moderate"]
    assert direct is not None and dm is not None
    print(
        f"load tool: {direct['tool']}; saturation {a.conns} connections, moderate "
        f"{a.moderate} connections; {a.duration:g}s each after {a.warmup:g}s warm-up"
    )
    for name in ("direct", "nginx", *VARIANTS, "engine"):
        if name in results or name != "nginx":
            print(_fmt(name, results.get(name)))
    for name in ("direct", "nginx", *VARIANTS, "engine"):
        if f"{name}@moderate" in results:
            print(_fmt(f"{name}@moderate", results[f"{name}@moderate"]))
    summary: dict[str, Any] = dict(results)
    for variant in (*VARIANTS, "engine"):
        r, m = results.get(variant), results.get(f"{variant}@moderate")
        if r is None:
            continue
        figures = _figures(r, m, direct, ngx, dm)
        summary.update({f"{variant}_{k}": v for k, v in figures.items()})
        print(f"{variant}: " + ", ".join(_explain(k, v) for k, v in figures.items()))
    traced, untraced = results.get("lockgate-traced"), results.get("lockgate")
    if traced is not None and untraced is not None and untraced["rps"]:
        on, off = results.get("lockgate-traced@moderate"), results.get("lockgate@moderate")
        added = {k: on[k] - off[k] if on and off and on.get(k) is not None
                 and off.get(k) is not None else None for k in ("p50_ms", "p99_ms")}  # fmt: skip
        summary["tracing_ratio"] = traced["rps"] / untraced["rps"]
        summary.update({f"tracing_added_{k}": v for k, v in added.items()})
        print(
            f"tracing overhead: traced/off {summary['tracing_ratio']:.3f}x req/s at saturation; "
            + ", ".join(_explain(f"added_{k}", v) for k, v in added.items())
            + f" at {a.moderate} connections"
        )
    lockgate = results.get("lockgate")
    if lockgate is not None:  # the targets are for the default config, one process
        figures = _figures(lockgate, results.get("lockgate@moderate"), direct, ngx, dm)
        print(f"targets (lockgate, default config, {a.moderate} connections for latency):")
        print(judge("vs nginx", figures["vs_nginx"], HTTP_VS_NGINX, at_least=True, unit="x"))
        print(judge("added p50", figures["added_p50_ms"], HTTP_ADDED_P50_MS, at_least=False,
                    unit=" ms"))  # fmt: skip
        print(judge("p99", figures["p99_ms"], HTTP_P99_MS, at_least=False, unit=" ms"))
    print(json.dumps(summary))
    errors = sum(r.get("errors", 0) for r in results.values() if r)
    if errors:
        print(f"errors seen: {errors}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "upstream":
        run_upstream(int(sys.argv[2]), sys.argv[3])
    elif role == "engine":
        run_fake_gateway(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif role == "gateway":
        run_real_gateway(sys.argv[2], *sys.argv[3:5])
    elif role == "otlp-sink":
        run_otlp_sink(int(sys.argv[2]))
    elif role == "load":
        run_load(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
    else:
        sys.exit(main())
