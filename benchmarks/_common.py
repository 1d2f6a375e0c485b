"""What the gateway benchmarks share: the targets of the fast data path, the trivially cheap
collaborators of an engine measured alone, and a keep-alive client load for the profile
benchmarks (Cosmos DB, Databricks).

Targets (measured against baselines in the same run, audit durability in place):

* HTTP, default config, one process: >= 0.5x nginx ``proxy_pass`` requests/s; added p50 at
  8 connections <= 0.2 ms; p99 at 8 connections <= 2 ms;
* Cosmos DB point reads and Databricks ``runs/get``: >= 0.7x direct.

Every benchmark prints one ``PASS``/``MISS`` line per target (:func:`judge`), so a reader of
``make bench`` sees at once which ones hold. The *engine alone* rows run the same engine with
:class:`FakeVerifier`, :class:`AllowAll` and :class:`NullAudit` in place of identity, policy
and audit: the difference to the full gateway is what those three cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Lockgate / nginx requests/s (HTTP, one process, default config).
HTTP_VS_NGINX = 0.5
#: Lockgate p50 - direct p50 at 8 connections, ms.
HTTP_ADDED_P50_MS = 0.2
#: Lockgate p99 at 8 connections, ms.
HTTP_P99_MS = 2.0
#: Lockgate / direct requests/s for the Cosmos DB and Databricks profiles.
PROFILE_VS_DIRECT = 0.7


def judge(label: str, value: float | None, target: float, *, at_least: bool, unit: str) -> str:
    """One line: the measured value, the target and PASS or MISS (``?`` when not measured)."""
    sign = ">=" if at_least else "<="
    if value is None:
        return f"  {label}: not measured (target {sign} {target:g}{unit}) ?"
    ok = value >= target if at_least else value <= target
    return (
        f"  {label}: {value:.3g}{unit} (target {sign} {target:g}{unit}) {'PASS' if ok else 'MISS'}"
    )


# -- the engine alone: collaborators that cost (almost) nothing ---------------------------------
@dataclass(frozen=True)
class BenchClaims:
    """What a verified token says; the shape of ``lockgate.identity.Claims``."""

    sub: str = "airflow:prod/finance_daily/read_orders"
    aud: str = "orders-api"
    jti: str = "bench-jti"
    exp: float = time.time() + 86400
    iat: float = time.time()
    deployment: str = "prod"
    dag_id: str = "finance_daily"
    task_id: str = "read_orders"
    run_id: str = "bench"
    try_number: int = 1
    map_index: int = -1


class FakeVerifier:
    """Every token verifies, as the same claims."""

    def __init__(self, claims: Any = None) -> None:
        self.claims = claims if claims is not None else BenchClaims()

    def verify(self, token: str, audience: str) -> Any:
        return self.claims


@dataclass(frozen=True)
class _Allow:
    allowed: bool = True
    rule: str = "allow-all"
    reason: str = "matched"

    def explain(self) -> str:
        return "allowed by allow-all"


class _AllowSet:
    _decision = _Allow()

    def decide(self, req: Any) -> _Allow:
        return self._decision


class AllowAll:
    """A policy source whose only rule allows everything."""

    current = _AllowSet()


@dataclass(frozen=True)
class FixedSecret:
    value: str
    version: int = 1


class FixedBroker:
    """Hands out one upstream secret for every credential."""

    def __init__(self, value: str) -> None:
        self._secret = FixedSecret(value)

    async def upstream_secret(self, name: str, previous: bool = False) -> FixedSecret:
        return self._secret


class NullAudit:
    """Takes every record and keeps none."""

    def check_writable(self) -> None:
        return None

    def write_ahead(self, record: Any) -> str:
        return ""

    def durable(self) -> None:
        return None

    def emit(self, record: Any) -> None:
        return None


def engine_alone(gw: Any, claims: Any) -> Any:
    """The gateway's HTTP engine again, with identity, policy and audit that cost nothing."""
    from dataclasses import replace

    from lockgate.gateway.http import HttpEngine

    shared = replace(
        gw.engines["http"].shared,
        verifier=FakeVerifier(claims),
        policy=AllowAll(),
        audit=NullAudit(),
    )
    return HttpEngine(gw.config.resources, shared)


# -- profile benchmarks: each server in a process of its own, aiohttp load from this one -------
# The client, the fake upstream and the gateway must not share one interpreter: with one GIL
# between them the ratio would measure the GIL, not the gateway.
Role = Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]
_READY = b"BENCH-READY "


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # what lockgate serve runs on

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


class ServerProcess:
    """``python -m <module> --serve <role> <json>``: starts one server, then reports what the
    client needs (ports, keys, tokens) as one JSON line and serves until terminated."""

    def __init__(self, module: str, role: str, args: dict[str, Any]) -> None:
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ)
        path = [str(root / "src"), str(root), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--serve", role, json.dumps(args)],
            stdout=subprocess.PIPE,
            env=env,
        )
        out = self.proc.stdout
        assert out is not None
        for line in out:
            if line.startswith(_READY):
                self.info: dict[str, Any] = json.loads(line[len(_READY) :])
                break
        else:
            raise RuntimeError(f"{module} {role} exited with {self.proc.wait()} before serving")
        threading.Thread(target=out.read, daemon=True).start()  # a full pipe would block it

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def serve(role: Role, args: dict[str, Any]) -> None:
    """The child side of :class:`ServerProcess`."""
    loop = _event_loop()
    asyncio.set_event_loop(loop)
    info = loop.run_until_complete(role(args))
    sys.stdout.buffer.write(_READY + json.dumps(info).encode() + b"\n")
    sys.stdout.flush()
    loop.run_forever()


class Servers:
    """The server processes of one benchmark run, stopped together."""

    def __init__(self, module: str, workdir: Path) -> None:
        self.module = module
        self.workdir = workdir
        self._procs: list[ServerProcess] = []

    def start(self, role: str, **args: Any) -> dict[str, Any]:
        proc = ServerProcess(self.module, role, {"workdir": str(self.workdir), **args})
        self._procs.append(proc)
        return proc.info

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.stop()


async def start_gateway(
    workdir: Path, policy: str, resource: dict[str, Any], credential: dict[str, Any], secret: str
) -> Any:
    """The real Gateway (no TLS, ports picked by the system) for one resource, its policy and
    its stored credential; started on the running loop."""
    from lockgate.config import parse_config
    from lockgate.server import Gateway, State

    (workdir / "p.yaml").write_text(policy)
    cfg = parse_config(
        {
            "data_dir": str(workdir / "data"),
            "listeners": {"control": {"port": 0}, "http": {"port": 0}},
            "deployments": [{"name": "prod", "dags": ["bench_*"], "proof": {
                "type": "client_secret", "secret_sha256": "0" * 64}}],
            "resources": [resource],
            "credentials": [credential],
            "policies": [str(workdir / "p.yaml")],
        },
        workdir / "lockgate.yaml",
    )  # fmt: skip
    State(cfg).credentials.set(credential["name"], secret)
    gw = Gateway(cfg)
    await gw.start()
    return gw


def run_profile(
    argv: list[str] | None,
    doc: str,
    label: str,
    roles: dict[str, Role],
    client: Callable[[Servers, int, int], Coroutine[Any, Any, int]],
) -> int:
    """The command line of a profile benchmark: ``client`` starts the server processes it
    needs (``roles``) and measures; ``--serve <role> <json>`` is one such server process."""
    if argv and argv[0] == "--serve":
        serve(roles[argv[1]], json.loads(argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory() as d:
        spec = getattr(sys.modules[client.__module__], "__spec__", None)  # "-m": __main__
        servers = Servers(spec.name if spec else client.__module__, Path(d))
        try:
            print(f"{label} x{args.requests}, {args.concurrency} connections")
            return asyncio.run(client(servers, args.requests, args.concurrency))
        finally:
            servers.stop()


@dataclass
class Load:
    """One measured load: requests/s and latency quantiles (ms), failures counted."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


async def load(url: str, headers: Callable[[], Mapping[str, str]], n: int, conc: int) -> Load:
    """``n`` GETs of ``url`` over ``conc`` keep-alive connections, ``headers()`` per request."""
    import aiohttp

    lat: list[float] = []
    errors = 0
    left = n
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as http:

        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                t = time.perf_counter()
                async with http.get(url, headers=headers()) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        took = time.perf_counter() - t0
    lat.sort()
    return Load(
        rps=n / took,
        p50_ms=statistics.median(lat) * 1000,
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        errors=errors,
    )


async def compare(
    targets: dict[str, tuple[str, Callable[[], Mapping[str, str]]]], n: int, conc: int
) -> dict[str, Load]:
    """Warm every path up, then measure each in turn; prints one row per path."""
    for url, headers in targets.values():
        await load(url, headers, 200, conc)
    out: dict[str, Load] = {}
    for name, (url, headers) in targets.items():
        r = out[name] = await load(url, headers, n, conc)
        print(
            f"  {name:12} {r.rps:8.0f} req/s   p50 {r.p50_ms:6.2f} ms"
            f"   p99 {r.p99_ms:6.2f} ms   errors {r.errors}"
        )
    return out


def report_profile(results: dict[str, Load]) -> int:
    """Ratios to direct, added latency and the target line; 1 when any request failed."""
    direct = results["direct"]
    for name in ("lockgate", "engine alone"):
        r = results.get(name)
        if r is None:
            continue
        print(
            f"  {name}: {r.rps / direct.rps:.2f}x direct, added p50 "
            f"{r.p50_ms - direct.p50_ms:.2f} ms, added p99 {r.p99_ms - direct.p99_ms:.2f} ms"
        )
    lg = results["lockgate"]
    print(
        judge("lockgate / direct", lg.rps / direct.rps, PROFILE_VS_DIRECT, at_least=True, unit="x")
    )
    return 1 if any(r.errors for r in results.values()) else 0
