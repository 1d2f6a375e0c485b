"""A whole local Lockgate stack in a background thread: demo upstream + gateway.

Used by ``lockgate demo`` and by the end-to-end tests. Everything binds to 127.0.0.1 on
free ports; ``stop()`` (or leaving the ``with`` block) shuts it all down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import socket
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from aiohttp import web

from lockgate.config import LockgateConfig, load_config
from lockgate.demo.upstream import DemoUpstream, start_upstream
from lockgate.scaffold import write_init

if TYPE_CHECKING:  # the server loads when the stack starts, not when the demo is imported
    from lockgate.server import Gateway

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_DAGS = REPO_ROOT / "examples" / "dags"
BACKEND_CLASS = "lockgate.airflow.secrets.LockgateSecretsBackend"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalStack:
    """``lockgate init`` into ``workdir``, then run the demo upstream and the gateway."""

    def __init__(self, workdir: Path, *, tls: bool = True) -> None:
        self.workdir = workdir.resolve()
        self.upstream_port = free_port()
        self.control_port = free_port()
        self.http_port = free_port()
        self.written = write_init(
            self.workdir,
            force=True,
            tls=tls,
            control_port=self.control_port,
            http_port=self.http_port,
            upstream=f"http://127.0.0.1:{self.upstream_port}",
        )
        self.config_path = self.written["config"]
        self.upstream_secret = secrets.token_urlsafe(24)
        self.upstream = DemoUpstream(accepted={self.upstream_secret})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.gateway: Gateway | None = None
        self._runner: web.AppRunner | None = None

    @property
    def config(self) -> LockgateConfig:
        return load_config(self.config_path)

    @property
    def deployment_secret(self) -> str:
        return self.written["deployment_secret"].read_text().strip()

    @property
    def ca_file(self) -> Path | None:
        return self.written.get("tls_ca")

    @property
    def control_url(self) -> str:
        scheme = "https" if self.ca_file else "http"
        return f"{scheme}://127.0.0.1:{self.control_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.ca_file else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def set_credential(self, value: str, *, rotate: bool = False) -> int:
        from lockgate.server import State

        st = State(self.config)
        fn = st.credentials.rotate if rotate else st.credentials.set
        return int(fn("orders-api-key", value))

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> LocalStack:
        self.set_credential(self.upstream_secret)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(30) or self.gateway is None:
            raise RuntimeError("the local Lockgate stack did not start within 30 s")
        return self

    def _run(self, ready: threading.Event) -> None:
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            from lockgate.server import Gateway

            self._runner, _ = await start_upstream(self.upstream, port=self.upstream_port)
            self.gateway = gateway = Gateway(self.config)
            await gateway.start()

        try:
            loop.run_until_complete(boot())
        finally:
            ready.set()
        loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def restart_gateway(self) -> None:
        """Stop and start the gateway (same data dir), as a process restart would."""
        from lockgate.server import Gateway

        async def bounce() -> None:
            if self.gateway is not None:
                await self.gateway.stop()
            self.gateway = gateway = Gateway(self.config)
            await gateway.start()

        self.call(bounce())

    def stop(self) -> None:
        if self._loop is None:
            return

        async def down() -> None:
            if self.gateway is not None:
                await self.gateway.stop()
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            self.call(down())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread:
                self._thread.join(10)
            self._loop = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- Airflow ------------------------------------------------------------------------------
    def airflow_env(self, airflow_home: Path, dags_folder: Path = EXAMPLE_DAGS) -> dict[str, str]:
        kwargs = {
            "url": self.control_url,
            "deployment": "prod",
            "client_secret_file": str(self.written["deployment_secret"]),
        }
        if self.ca_file:
            kwargs["ca_file"] = str(self.ca_file)
        env = dict(os.environ)
        env.update(
            {
                "AIRFLOW_HOME": str(airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__WORKERS__SECRETS_BACKEND": BACKEND_CLASS,
                "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps(kwargs),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # The HTTPS listeners use the dev CA; requests (HttpHook) trusts it through this.
        if self.ca_file:
            env["REQUESTS_CA_BUNDLE"] = str(self.ca_file)
        return env


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
