"""A Databricks workspace REST API, as far as jobs, runs and clusters go, written from the
public REST reference (Jobs API 2.2 / 2.1, Clusters API 2.0, OAuth M2M).

Auth is real: ``POST /oidc/v1/token`` with HTTP Basic ``client_id:client_secret`` and
``grant_type=client_credentials`` (scope ``all-apis``) issues opaque bearer tokens with an
``expires_in``; every ``/api/`` call needs one that is unexpired, else 401 with Databricks'
``{"error_code", "message"}`` body. Client secrets can be added and withdrawn while running
(rotation); tokens already issued stay valid until they expire, as upstream. The same
endpoint takes ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange`` (OAuth token
federation, see :mod:`.federation`): an identity provider's JWT under a federation policy,
for the same kind of token. ``token_principals`` says whom each token was issued to and
``token_requests`` what each token request sent (secrets and subject tokens redacted).

Runs move PENDING → RUNNING → TERMINATED by the number of ``runs/get`` polls
(``pending_polls``, ``running_polls``); a job whose settings carry ``"fail": true``
(a test-only marker) ends FAILED, else SUCCESS; ``runs/cancel`` ends it CANCELED.
``throttle(n, retry_after)`` answers the next ``n`` API calls 429 with ``Retry-After``.
Everything seen is recorded in ``seen`` (method, path, authorised, JSON body).

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import json
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from lockgate.demo.standins._serving import serve
from lockgate.demo.standins.entra.issuer_keys import IssuerKeys

from .federation import TOKEN_EXCHANGE, FederationPolicies, FederationPolicy, Refused

DEFAULT_CLIENT_ID = "lockgate-sp"
DEFAULT_ACCOUNT_ID = "0d5b2f3c-7a61-4f4e-9c1a-databricks01"
_REDACTED = ("client_secret", "subject_token")
PARAMS = web.RequestKey("params", dict[str, Any])  # the JSON body and query, merged


@dataclass
class Seen:
    method: str
    path: str
    authorised: bool
    body: Any


@dataclass
class Run:
    run_id: int
    job_id: int | None
    run_name: str
    spec: dict[str, Any]
    fail: bool
    number_in_job: int
    polls: int = 0
    cancelled: bool = False
    start_time: int = field(default_factory=lambda: int(time.time() * 1000))


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error_code": code, "message": message}, status=status, headers=headers
    )


class FakeDatabricks:
    def __init__(
        self,
        client_secrets: set[str],
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        token_ttl: int = 3600,
        pending_polls: int = 1,
        running_polls: int = 1,
        account_id: str = DEFAULT_ACCOUNT_ID,
        federation_ca: Path | str | None = None,
    ) -> None:
        self.client_id = client_id
        self.account_id = account_id
        # Identities of the account a federated token may act as (service principals by
        # application id, users by name); the M2M service principal is one.
        self.principals: set[str] = {client_id}
        self.federation = FederationPolicies(account_id, IssuerKeys(federation_ca))
        self.token_principals: dict[str, str] = {}
        self.token_requests: list[dict[str, str]] = []
        self.client_secrets = set(client_secrets)
        self.token_ttl = token_ttl
        self.pending_polls = pending_polls
        self.running_polls = running_polls
        self.tokens: dict[str, float] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.runs: dict[int, Run] = {}
        self.clusters: dict[str, dict[str, Any]] = {}
        self.seen: list[Seen] = []
        self.token_calls = 0
        self.base_url = "http://127.0.0.1"
        self._ids = itertools.count(9_001)
        self._throttle = 0
        self._retry_after = "1"

    # -- test controls -------------------------------------------------------------------
    def add_job(self, job_id: int, settings: dict[str, Any]) -> None:
        self.jobs[job_id] = settings

    def throttle(self, n: int, retry_after: str = "1") -> None:
        self._throttle, self._retry_after = n, retry_after

    def api_calls(self, suffix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith(suffix)]

    # -- federation policies (what the account console manages) ---------------------------
    def add_federation_policy(
        self,
        *,
        issuer: str,
        audiences: list[str] | None = None,
        subject: str | None = None,
        subject_claim: str = "sub",
        service_principal: str | None = None,
        jwks_uri: str | None = None,
        jwks_json: str | None = None,
    ) -> FederationPolicy:
        """An account-wide policy, or one for ``service_principal`` (its application id)."""
        if service_principal is not None:
            self.principals.add(service_principal)
        return self.federation.add(
            issuer=issuer, audiences=audiences, subject=subject, subject_claim=subject_claim,
            service_principal=service_principal, jwks_uri=jwks_uri, jwks_json=jwks_json,
        )  # fmt: skip

    def remove_federation_policy(self, policy_id: str) -> None:
        self.federation.remove(policy_id)

    def trust_issuer_ca(self, ca_file: Path | str | None) -> None:
        """Check identity providers' https with ``ca_file`` from now on (keys fetched anew)."""
        self.federation.keys = IssuerKeys(ca_file)

    # -- OAuth M2M and token federation ------------------------------------------------------
    def _issue(self, principal: str) -> web.Response:
        tok = "dbx-" + secrets.token_urlsafe(24)
        self.tokens[tok] = time.time() + self.token_ttl
        self.token_principals[tok] = principal
        return web.json_response(
            {"access_token": tok, "token_type": "Bearer", "expires_in": self.token_ttl,
             "scope": "all-apis"}
        )  # fmt: skip

    async def token(self, request: web.Request) -> web.Response:
        self.token_calls += 1
        form = await request.post()
        self.token_requests.append(
            {k: "<redacted>" if k in _REDACTED else str(v) for k, v in form.items()}
        )
        if form.get("grant_type") == TOKEN_EXCHANGE:
            try:
                principal, _ = await self.federation.exchange(form, self.principals)
            except Refused as why:
                return web.json_response(
                    {"error": "invalid_request", "error_description": str(why)}, status=400
                )
            return self._issue(principal)
        basic = request.headers.get("Authorization", "")
        scheme, _, cred = basic.partition(" ")
        try:
            cid, sep, secret = base64.b64decode(cred, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            cid, sep, secret = "", "", ""
        ok = (
            scheme.lower() == "basic"
            and sep == ":"
            and hmac.compare_digest(cid, self.client_id)
            and any(hmac.compare_digest(secret, s) for s in self.client_secrets)
        )
        if not ok:
            return web.json_response(
                {"error": "invalid_client", "error_description": "Client authentication failed"},
                status=401,
            )
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("scope", "all-apis") != "all-apis":
            return web.json_response({"error": "invalid_scope"}, status=400)
        return self._issue(cid)

    async def oauth_metadata(self, request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        return web.json_response(
            {"issuer": f"{base}/oidc", "token_endpoint": f"{base}/oidc/v1/token",
             "authorization_endpoint": f"{base}/oidc/v1/authorize",
             "grant_types_supported": ["client_credentials", "authorization_code",
                                       TOKEN_EXCHANGE]}
        )  # fmt: skip

    async def workspace_config(self, request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        return web.json_response({"oidc_endpoint": f"{base}/oidc", "workspace_id": "1234567890"})

    # -- API -------------------------------------------------------------------------------
    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            response: web.StreamResponse = await handler(request)
            return response
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("latin-1")
        tok = request.headers.get("Authorization", "").removeprefix("Bearer ")
        exp = self.tokens.get(tok)
        authorised = exp is not None and exp > time.time()
        self.seen.append(Seen(request.method, request.path, authorised, body))
        if not authorised:
            return _error(401, "UNAUTHENTICATED", "Invalid access token.")
        if self._throttle > 0:
            self._throttle -= 1
            return _error(
                429,
                "REQUEST_LIMIT_EXCEEDED",
                "Too many requests.",
                **{"Retry-After": self._retry_after},
            )
        request[PARAMS] = {**(body if isinstance(body, dict) else {}), **request.query}
        answered: web.StreamResponse = await handler(request)
        return answered

    def _int(self, request: web.Request, key: str) -> int:
        v: Any = request[PARAMS].get(key)
        try:
            return int(v)
        except (TypeError, ValueError):
            raise web.HTTPBadRequest(
                text=json.dumps({"error_code": "INVALID_PARAMETER_VALUE",
                                 "message": f"Missing required field: {key}"}),
                content_type="application/json",
            ) from None  # fmt: skip

    async def jobs_get(self, request: web.Request) -> web.Response:
        job_id = self._int(request, "job_id")
        if job_id not in self.jobs:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", f"Job {job_id} does not exist.")
        return web.json_response(
            {"job_id": job_id, "creator_user_name": "admin@example.com",
             "created_time": 1700000000000, "settings": self.jobs[job_id]}
        )  # fmt: skip

    async def jobs_list(self, request: web.Request) -> web.Response:
        name = request.query.get("name")
        jobs = [
            {"job_id": j, "settings": s} for j, s in self.jobs.items()
            if name is None or s.get("name") == name
        ]  # fmt: skip
        return web.json_response({"jobs": jobs, "has_more": False})

    async def run_now(self, request: web.Request) -> web.Response:
        job_id = self._int(request, "job_id")
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", f"Job {job_id} does not exist.")
        run = self._start(job_id, str(job.get("name", "")), job, bool(job.get("fail")))
        return web.json_response({"run_id": run.run_id, "number_in_job": run.number_in_job})

    async def submit(self, request: web.Request) -> web.Response:
        spec = request[PARAMS]
        tasks = spec.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            return _error(400, "INVALID_PARAMETER_VALUE", "At least one task is required.")
        for t in tasks:
            if not isinstance(t, dict) or not t.get("task_key"):
                return _error(400, "INVALID_PARAMETER_VALUE", "Missing required field: task_key")
        run = self._start(None, str(spec.get("run_name", "Untitled")), spec, bool(spec.get("fail")))
        return web.json_response({"run_id": run.run_id})

    def _start(self, job_id: int | None, name: str, spec: dict[str, Any], fail: bool) -> Run:
        run_id = next(self._ids)
        number = sum(1 for r in self.runs.values() if r.job_id == job_id) + 1
        run = Run(run_id, job_id, name, spec, fail, number)
        self.runs[run_id] = run
        return run

    def _state(self, run: Run) -> dict[str, Any]:
        if run.cancelled:
            return {
                "life_cycle_state": "TERMINATED",
                "result_state": "CANCELED",
                "state_message": "Run cancelled.",
                "user_cancelled_or_timedout": True,
            }
        if run.polls <= self.pending_polls:
            return {"life_cycle_state": "PENDING", "state_message": "Waiting for cluster",
                    "user_cancelled_or_timedout": False}  # fmt: skip
        if run.polls <= self.pending_polls + self.running_polls:
            return {"life_cycle_state": "RUNNING", "state_message": "In run",
                    "user_cancelled_or_timedout": False}  # fmt: skip
        result = "FAILED" if run.fail else "SUCCESS"
        return {"life_cycle_state": "TERMINATED", "result_state": result,
                "state_message": "" if not run.fail else "Task failed with error",
                "user_cancelled_or_timedout": False}  # fmt: skip

    def _run_json(self, run: Run, request: web.Request) -> dict[str, Any]:
        state = self._state(run)
        base = f"{request.scheme}://{request.host}"
        tasks = run.spec.get("tasks") or [{"task_key": "main"}]
        return {
            "job_id": run.job_id if run.job_id is not None else run.run_id,
            "run_id": run.run_id,
            "number_in_job": run.number_in_job,
            "run_name": run.run_name,
            "creator_user_name": "lockgate-sp",
            "state": state,
            "start_time": run.start_time,
            "run_page_url": f"{base}/?o=1234567890#job/{run.job_id or 0}/run/{run.run_id}",
            "run_type": "JOB_RUN" if run.job_id is not None else "SUBMIT_RUN",
            "tasks": [
                {"run_id": run.run_id * 10 + i, "task_key": t.get("task_key", f"t{i}"),
                 "state": state}
                for i, t in enumerate(tasks) if isinstance(t, dict)
            ],
        }  # fmt: skip

    async def runs_get(self, request: web.Request) -> web.Response:
        run = self.runs.get(self._int(request, "run_id"))
        if run is None:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", "Run does not exist.")
        run.polls += 1
        return web.json_response(self._run_json(run, request))

    async def runs_output(self, request: web.Request) -> web.Response:
        rid = self._int(request, "run_id")
        run = self.runs.get(rid) or self.runs.get(rid // 10)
        if run is None:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", "Run does not exist.")
        out: dict[str, Any] = {"metadata": self._run_json(run, request)}
        if run.fail:
            out["error"] = "ZeroDivisionError: division by zero"
        return web.json_response(out)

    async def runs_cancel(self, request: web.Request) -> web.Response:
        run = self.runs.get(self._int(request, "run_id"))
        if run is None:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", "Run does not exist.")
        run.cancelled = True
        return web.json_response({})

    async def clusters_get(self, request: web.Request) -> web.Response:
        cid = str(request[PARAMS].get("cluster_id", ""))
        c = self.clusters.get(cid)
        if c is None:
            return _error(400, "INVALID_PARAMETER_VALUE", f"Cluster {cid} does not exist")
        return web.json_response({"cluster_id": cid, **c})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard])
        r = app.router
        r.add_post("/oidc/v1/token", self.token)
        r.add_get("/oidc/.well-known/oauth-authorization-server", self.oauth_metadata)
        r.add_get("/.well-known/databricks-config", self.workspace_config)
        for v in ("2.0", "2.1", "2.2"):
            r.add_get(f"/api/{v}/jobs/get", self.jobs_get)
            r.add_get(f"/api/{v}/jobs/list", self.jobs_list)
            r.add_post(f"/api/{v}/jobs/run-now", self.run_now)
            r.add_post(f"/api/{v}/jobs/runs/submit", self.submit)
            r.add_get(f"/api/{v}/jobs/runs/get", self.runs_get)
            r.add_get(f"/api/{v}/jobs/runs/get-output", self.runs_output)
            r.add_post(f"/api/{v}/jobs/runs/cancel", self.runs_cancel)
            r.add_get(f"/api/{v}/clusters/get", self.clusters_get)
        return app


async def start(
    fake: FakeDatabricks, port: int = 0, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Serve ``fake`` on 127.0.0.1 (free port by default; HTTPS with ``ssl_context``);
    returns (runner, port)."""
    served = await serve(fake.app(), port, ssl_context)
    fake.base_url = served.url
    return served.runner, served.port
