"""Run aiohttp fakes on a background event loop, for tests whose clients are synchronous
(azure-identity, the Azure SDK, Airflow).

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from lockgate.tlsgen import write_dev_tls


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[Any] = []

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, start_coro: Coroutine[Any, Any, Any]) -> Any:
        runner = self.call(start_coro)
        self._runners.append(runner)
        return runner

    def stop(self) -> None:
        for r in self._runners:
            self.call(r.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def server_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """(server context for 127.0.0.1/localhost, the CA file clients trust)."""
    paths = write_dev_tls(directory, ["127.0.0.1", "localhost"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(paths["cert"]), str(paths["key"]))
    return ctx, paths["ca"]
