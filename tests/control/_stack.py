"""A running gateway with a control listener, for tests of the control routes."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from lockgate.config import parse_config
from lockgate.server import Gateway, State


def deployment(name: str, secret: str, dags: tuple[str, ...] = ("*",)) -> dict[str, Any]:
    sha = hashlib.sha256(secret.encode()).hexdigest()
    return {"name": name, "dags": list(dags),
            "proof": {"type": "client_secret", "secret_sha256": sha}}  # fmt: skip


def basic(user: str, secret: str) -> dict[str, str]:
    """What the secrets backend's client sends."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    *,
    policy: str,
    deployments: list[dict[str, Any]],
    resources: list[dict[str, Any]],
    secrets: Mapping[str, str] = {},
    **config: Any,
) -> AsyncIterator[Gateway]:
    """A started Gateway (control and http listeners on free ports) with these deployments,
    resources, one policy file and static credentials ``secrets`` (name → value)."""
    (tmp_path / "p.yaml").write_text(policy)
    cfg = parse_config(
        {"data_dir": str(tmp_path / "data"),
         "listeners": {"control": {"port": 0}, "http": {"port": 0}},
         "deployments": deployments, "resources": resources,
         "credentials": [{"name": name, "type": "static"} for name in secrets],
         "policies": [str(tmp_path / "p.yaml")], **config},
        tmp_path / "lockgate.yaml",
    )  # fmt: skip
    state = State(cfg)
    for name, value in secrets.items():
        state.credentials.set(name, value)
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def post_form(
    gw: Gateway, route: str, headers: Mapping[str, str] | None = None, **form: str
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a form POST to the control listener."""
    url = f"http://127.0.0.1:{gw.control_port}{route}"
    async with aiohttp.ClientSession() as s, s.post(url, data=form, headers=headers) as r:
        return r.status, await r.json(content_type=None)
