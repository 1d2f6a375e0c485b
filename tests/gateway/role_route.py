"""What the dynamic-role end-to-end tests of every kind share: a deployment asking a real
gateway's ``POST /v1/db-role`` (and its other control routes) for a task's role."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from lockgate.server import Gateway

DEPLOYMENT_SECRET = "prod-deployment-secret-for-tests"


def task_coords(resource: str, dag: str = "etl", try_number: int = 1) -> dict[str, Any]:
    return {"resource": resource, "dag_id": dag, "task_id": "load", "run_id": "run-1",
            "try_number": try_number}  # fmt: skip


class RoleRoute:
    """Mixed into a test stack (a dataclass with ``gw``, ``http`` and ``data``)."""

    RESOURCE: ClassVar[str]
    gw: Gateway
    http: aiohttp.ClientSession
    data: Path  # the gateway's data directory (audit files)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gw.control_port}"

    async def post(self, path: str, **fields: Any) -> tuple[int, dict[str, Any]]:
        body = {"client_id": "prod", "client_secret": DEPLOYMENT_SECRET, **fields}
        async with self.http.post(self.url + path, data=body) as resp:
            return resp.status, await resp.json()

    async def role(self, dag: str = "etl", try_number: int = 1, **kw: Any) -> dict[str, Any]:
        coords = task_coords(self.RESOURCE, dag, try_number)
        status, body = await self.post("/v1/db-role", **coords, **kw)
        assert status == 200, body
        return body

    def audit_bytes(self) -> bytes:
        self.gw.audit.flush(2.0)
        return b"".join(p.read_bytes() for p in self.data.rglob("*") if p.is_file())
