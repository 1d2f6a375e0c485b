"""Azure Data Factory's ARM REST surface (api-version 2018-06-01) as far as pipeline runs
go, written from the public REST reference.

Routes (under ``/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DataFactory``,
matched without case like ARM):

- ``GET  factories/{f}`` — the factory;
- ``GET  factories/{f}/pipelines/{p}`` — a pipeline;
- ``POST factories/{f}/pipelines/{p}/createRun`` — ``{"runId": <guid>}``;
- ``GET  factories/{f}/pipelineruns/{runId}`` — the run; its status moves Queued →
  InProgress → Succeeded (or Failed for pipelines in ``failing``) by the number of polls
  (``queued_polls``, ``running_polls``);
- ``POST factories/{f}/pipelineruns/{runId}/cancel`` — Cancelled.

Every call needs ``Authorization: Bearer <Entra access token>``: checked with ``verify``
(the Entra fake's signature check, audience ``https://management.azure.com``), else 401
with ARM's ``{"error": {"code", "message"}}``. ``throttle(n)`` answers the next ``n``
calls 429 with ``Retry-After``. ``seen`` records method, path and whether it was authorised.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lockgate.demo.standins._serving import serve_stand_in

ARM = "https://management.azure.com"
_BASE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)"
    r"/providers/microsoft\.datafactory/factories/(?P<f>[^/]+)(?P<rest>/.*)?$",
    re.IGNORECASE,
)


@dataclass
class Run:
    run_id: str
    factory: str
    pipeline: str
    parameters: dict[str, Any]
    fail: bool
    polls: int = 0
    cancelled: bool = False
    start: float = field(default_factory=time.time)


@dataclass
class Seen:
    method: str
    path: str
    authorised: bool


def _arm_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


class FakeAdf:
    def __init__(
        self,
        verify: Callable[[str, str], Any],
        *,
        subscription: str = "sub-1",
        resource_group: str = "rg-data",
        factories: dict[str, set[str]] | None = None,
        failing: set[str] | None = None,
        queued_polls: int = 1,
        running_polls: int = 1,
    ) -> None:
        self.verify = verify
        self.subscription = subscription
        self.resource_group = resource_group
        self.factories = {k.lower(): {p.lower() for p in v} for k, v in (factories or {}).items()}
        self.failing = {p.lower() for p in failing or set()}
        self.queued_polls = queued_polls
        self.running_polls = running_polls
        self.runs: dict[str, Run] = {}
        self.seen: list[Seen] = []
        self._throttle = 0
        self.base_url = ""

    def throttle(self, n: int) -> None:
        self._throttle = n

    def calls(self, fragment: str) -> list[Seen]:
        return [s for s in self.seen if fragment.lower() in s.path.lower()]

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        auth = request.headers.get("Authorization", "")
        claims = None
        if auth.startswith("Bearer "):
            try:
                claims = self.verify(auth[7:], ARM)
            except Exception:
                claims = None
        self.seen.append(Seen(request.method, path, claims is not None))
        if claims is None:
            return _arm_error(
                401, "InvalidAuthenticationToken", "The access token is invalid.",
                **{"WWW-Authenticate": 'Bearer authorization_uri="x", error="invalid_token"'},
            )  # fmt: skip
        if self._throttle > 0:
            self._throttle -= 1
            return _arm_error(429, "TooManyRequests", "throttled", **{"Retry-After": "0"})
        if request.query.get("api-version") != "2018-06-01":
            return _arm_error(400, "InvalidApiVersionParameter", "api-version 2018-06-01")
        m = _BASE.match(path)
        if (
            m is None
            or m["sub"] != self.subscription
            or m["rg"].lower() != (self.resource_group.lower())
        ):
            return _arm_error(404, "ResourceNotFound", "resource not found")
        factory = m["f"].lower()
        if factory not in self.factories:
            return _arm_error(404, "ResourceNotFound", f"factory {factory} not found")
        rest = m["rest"] or ""
        if rest in ("", "/") and request.method == "GET":
            return web.json_response({"name": factory, "id": path, "location": "westeurope",
                                      "type": "Microsoft.DataFactory/factories"})  # fmt: skip
        pm = re.fullmatch(r"/pipelines/([^/]+)(/createrun)?", rest, re.IGNORECASE)
        if pm is not None:
            pipeline = pm[1].lower()
            if pipeline not in self.factories[factory]:
                return _arm_error(404, "PipelineNotFound", f"pipeline {pipeline} not found")
            if pm[2] and request.method == "POST":
                params = await request.json() if request.can_read_body else {}
                run = Run(str(uuid.uuid4()), factory, pipeline, params or {},
                          pipeline in self.failing)  # fmt: skip
                self.runs[run.run_id] = run
                return web.json_response({"runId": run.run_id})
            if not pm[2] and request.method == "GET":
                return web.json_response({"name": pipeline, "properties": {"activities": []}})
        rm = re.fullmatch(r"/pipelineruns/([^/]+)(/cancel)?", rest, re.IGNORECASE)
        if rm is not None:
            found = self.runs.get(rm[1].lower())
            if found is None or found.factory != factory:
                return _arm_error(404, "PipelineRunNotFound", "run not found")
            if rm[2] and request.method == "POST":
                found.cancelled = True
                return web.Response(status=200)
            if not rm[2] and request.method == "GET":
                found.polls += 1
                return web.json_response(self._run_json(found))
        return _arm_error(404, "NotFound", "operation not supported by the fake")

    def _run_json(self, run: Run) -> dict[str, Any]:
        if run.cancelled:
            status = "Cancelled"
        elif run.polls <= self.queued_polls:
            status = "Queued"
        elif run.polls <= self.queued_polls + self.running_polls:
            status = "InProgress"
        else:
            status = "Failed" if run.fail else "Succeeded"
        done = status in ("Succeeded", "Failed", "Cancelled")
        iso = time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime(run.start))
        return {
            "runId": run.run_id, "pipelineName": run.pipeline, "status": status,
            "parameters": run.parameters, "runStart": iso, "runEnd": iso if done else None,
            "durationInMs": 1000 if done else None, "isLatest": True, "runGroupId": run.run_id,
            "invokedBy": {"name": "Manual", "id": "x", "invokedByType": "Manual"},
            "message": "activity 'copy' failed" if status == "Failed" else "",
            "lastUpdated": iso,
        }  # fmt: skip


def make_app(adf: FakeAdf) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", adf.handle)
    return app


async def start(adf: FakeAdf, port: int = 0, ssl_context: Any = None) -> web.AppRunner:
    return await serve_stand_in(adf, make_app(adf), port, ssl_context)
