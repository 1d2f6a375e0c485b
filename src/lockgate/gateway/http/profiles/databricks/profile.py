"""``profile: databricks``: jobs and runs as policy objects, cluster-cost guardrails.

Classification (``/api/2.0|2.1|2.2/...``; anything else falls back to the route table):

=========================  ======  ===============================================
request                    action  object
=========================  ======  ===============================================
POST jobs/run-now          run     ``job:<job_id>`` (or ``job-name:<settings.name>``)
POST jobs/runs/cancel-all  run     ``job:<job_id>`` (or ``job-name:<name>``)
POST jobs/runs/submit      run     ``job:submit`` (and each ``run_job_task``'s job, below)
GET  jobs/get              read    ``job:<job_id>`` (or ``job-name:<name>``)
GET  jobs/runs/get         read    ``run:<run_id>``  — only runs this DAG started here
GET  jobs/runs/get-output  read    ``run:<run_id>``  — idem
POST jobs/runs/cancel      run     ``run:<run_id>``  — idem
POST jobs/runs/repair      run     ``run:<run_id>``  — idem
GET  clusters/get          read    ``cluster:<cluster_id>``
=========================  ======  ===============================================

A run start (``run-now``, ``runs/submit``, and ``runs/repair``, which sets a finished run
running again) asks the ``runs`` quota; the run counts until a ``runs/get`` shows it
terminal.

Ids come from the query string or the JSON body (the hook's async client sends GET
parameters as a JSON body). A parameter named twice — twice in the query, in both the query
and the body, or a key twice in one JSON object anywhere in the body — is refused (400):
which copy the workspace reads is not ours to guess, and a decoy copy would be judged.
A job-name grant is consulted when the job id is not granted;
an explicit deny on either object wins. Runs are owned: ``run:<id>`` objects are refused
unless the run was started through Lockgate by the same deployment and DAG (see
:mod:`.registry`); triggerer poll tokens (task ``@poll``) may only read such runs.

A submitted run's ``run_job_task`` (at any depth, ``for_each_task`` included) triggers an
existing job: each is judged as a run-now of that job (``run`` on ``job:<id>`` or its
``job-name:``, an explicit deny on either wins, the job's own spec under the guardrails), so
``job:submit`` is no door to a job policy does not grant. A ``pipeline_task`` starts an
existing pipeline on its own clusters, out of the guardrails' sight: it needs ``run`` on
``pipeline:<pipeline_id>``.

Guardrails (``databricks.guardrails``, first entry whose principal glob matches) are
checked on the submitted spec (runs/submit) or on the job's spec fetched with the gateway's
own credential (run-now; cached ``job_cache_seconds``). ``GET /.well-known/databricks-config``
is answered 404 by the gateway itself, without a token: the SDK's probe is best effort and
workspace metadata is not the caller's business.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import aiohttp

from lockgate import _log
from lockgate.gateway.http import responses
from lockgate.gateway.http.profiles.databricks import guardrails as g
from lockgate.gateway.http.profiles.databricks.registry import RunRecord, RunRegistry
from lockgate.gateway.http.profiles.hooks import (
    Decide,
    Headers,
    ProfileBase,
    ProfileRequest,
    UpstreamHeaders,
    Verdict,
)

if TYPE_CHECKING:
    from lockgate.config import DatabricksGuardrail, HttpResource
    from lockgate.gateway.http.upstream import UpstreamTarget
    from lockgate.identity import Claims

log = _log.get("gateway.http.databricks")

POLL_TASK = "@poll"  # task_id of triggerer poll tokens (not a valid Airflow task id)
DEPLOYMENT_WIDE = "@triggerer"  # dag_id of a poll token not narrowed to one DAG
ANY_RUN = "@any"  # run_id of a poll token not narrowed to one DAG run
_PIPELINE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
# Case and trailing slashes aside: a workspace lenient about them must not see a run start
# judged as some other request (no guardrails, no run cap).
_API = re.compile(r"^/api/2\.[012]/(?P<op>[a-z/_-]+?)/*$", re.IGNORECASE)
_BODY_OPS = frozenset(
    {"jobs/run-now", "jobs/runs/submit", "jobs/runs/get", "jobs/runs/get-output",
     "jobs/runs/cancel", "jobs/runs/repair", "jobs/runs/cancel-all", "jobs/get", "clusters/get"}
)  # fmt: skip
_RUN_OPS = {
    "jobs/runs/get": "read",
    "jobs/runs/get-output": "read",
    "jobs/runs/cancel": "run",
    "jobs/runs/repair": "run",
}
_JOB_OPS = {"jobs/run-now": "run", "jobs/runs/cancel-all": "run", "jobs/get": "read"}
_CAPTURE_LIMIT = 256 * 1024
#: ``state.life_cycle_state`` values of a run that will not change any more
TERMINAL_STATES = frozenset({"TERMINATED", "SKIPPED", "INTERNAL_ERROR"})
_NOT_FOUND = responses.json_response(
    404, {"error_code": "NOT_FOUND", "message": "not served by the Lockgate gateway"}
)


class _Refusal(Exception):
    def __init__(self, status: int, slug: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.slug, self.reason = status, slug, reason


class DatabricksProfile(ProfileBase):
    def __init__(
        self, resource: HttpResource, target: UpstreamTarget, registry: RunRegistry
    ) -> None:
        self.resource = resource
        self.name: str = resource.name
        self.settings = resource.databricks
        self.max_body: int = self.settings.max_body_bytes
        self.registry = registry
        self._base = resource.upstream.rstrip("/")
        self._ssl = target.ssl
        self._jobs: dict[int, tuple[float, int, dict[str, Any] | None]] = {}
        self._http: aiohttp.ClientSession | None = None

    # -- Profile API ---------------------------------------------------------------------
    def local_answer(self, method: str, path: str) -> bytes | None:
        if path == "/.well-known/databricks-config" and method in ("GET", "HEAD"):
            return _NOT_FOUND
        return None

    def wants_body(self, method: str, path: str) -> bool:
        return _op(path) in _BODY_OPS

    async def authorize(
        self, req: ProfileRequest, decide: Decide, headers: UpstreamHeaders
    ) -> Verdict:
        try:
            return await self._authorize(req, decide, headers)
        except _Refusal as exc:
            action, obj = req.default
            return Verdict(False, action, obj, exc.reason, status=exc.status, slug=exc.slug)

    def on_response(
        self, verdict: Verdict, status: int, headers: Headers, body: bytes
    ) -> dict[str, Any]:
        st: dict[str, Any] = verdict.state or {}
        detail = dict(verdict.detail)
        if status != 200 or not body:
            return detail
        data = _json(_decode(headers, body))
        if not isinstance(data, dict):
            return detail
        op = st.get("op")
        claims = st.get("claims")
        if op in ("jobs/run-now", "jobs/runs/submit") and isinstance(data.get("run_id"), int):
            run_id = data["run_id"]
            detail["run_id"] = run_id
            self.registry.add(
                RunRecord(
                    resource=self.name,
                    run_id=run_id,
                    deployment=getattr(claims, "deployment", None),
                    dag_id=getattr(claims, "dag_id", None),
                    airflow_run_id=getattr(claims, "run_id", None),
                    task_id=getattr(claims, "task_id", None),
                    job_id=st.get("job_id"),
                    clusters=detail.get("cluster") or {},
                    created_at=time.time(),
                    workspace=self._base,
                )
            )
        elif op == "jobs/runs/get":
            url = data.get("run_page_url")
            raw_state = data.get("state")
            state: dict[str, Any] = raw_state if isinstance(raw_state, dict) else {}
            for k in ("job_id", "run_page_url"):
                if data.get(k) is not None:
                    detail[k] = data[k]
            for k in ("life_cycle_state", "result_state"):
                if state.get(k):
                    detail[k] = state[k]
            if isinstance(url, str) and isinstance(st.get("run_id"), int):
                self.registry.set_page_url(self.name, st["run_id"], url, self._base)
        return detail

    def finished_run(self, verdict: Verdict, detail: dict[str, Any]) -> str | None:
        """A relayed ``runs/get`` whose life cycle state is terminal names a finished run."""
        st = verdict.state if isinstance(verdict.state, dict) else {}
        if st.get("op") == "jobs/runs/get" and detail.get("life_cycle_state") in TERMINAL_STATES:
            run_id = st.get("run_id")
            return str(run_id) if run_id is not None else None
        return None

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any] | None:
        """A throttled request is answered as the workspace answers a rate limit (the
        Databricks SDK and hook retry ``REQUEST_LIMIT_EXCEEDED``); the rest in the gateway's
        own shape."""
        if body.get("error") != "throttled":
            return None
        return {
            "error_code": "REQUEST_LIMIT_EXCEEDED",
            "message": f"Lockgate: {body.get('principal')} is over quota {body.get('limit')} "
            f"on {body.get('resource')} ({body.get('kind')}); retry after "
            f"{body.get('retry_after')} s",
            "lockgate": body,
        }

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        self.registry.close()

    # -- classification ------------------------------------------------------------------
    async def _authorize(
        self, req: ProfileRequest, decide: Decide, headers: UpstreamHeaders
    ) -> Verdict:
        claims = req.claims
        poll = getattr(claims, "task_id", None) == POLL_TASK
        op = _op(req.path)
        if poll and not (op in ("jobs/runs/get", "jobs/runs/get-output") and req.method == "GET"):
            action, obj = req.default
            return Verdict(
                False, action, obj, "poll tokens may only read runs (jobs/runs/get)",
                rule="databricks-poll-token",
            )  # fmt: skip
        if op is None or (op not in _RUN_OPS and op not in _JOB_OPS and op not in (
            "jobs/runs/submit", "clusters/get")):  # fmt: skip
            action, obj = req.default
            return _policy(decide, action, obj)
        params = _params(req)
        st: dict[str, Any] = {"op": op, "claims": claims}
        if op in _RUN_OPS:
            run_id = _id(params, "run_id")
            st["run_id"] = run_id
            v = _policy(decide, _RUN_OPS[op], f"run:{run_id}")
            if v.allowed:
                why = self._ownership(claims, run_id, poll)
                if why is not None:
                    return Verdict(False, v.action, v.obj, why, rule="databricks-run-ownership")
            v.state, v.capture = st, op == "jobs/runs/get"
            v.detail = {"run_id": run_id}
            # A repair re-runs the run's tasks: it is running again, so it counts again.
            v.starts_run = op == "jobs/runs/repair"
            if v.starts_run and v.allowed:
                rec = self.registry.get(self.name, run_id, self._base)
                if rec is not None and rec.job_id is not None:
                    v.quota_objects = (f"job:{rec.job_id}",)  # a quota on its job counts it
            return v
        if op == "clusters/get":
            cluster = str(params.get("cluster_id") or "")
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", cluster):
                raise _Refusal(400, "bad_request", "cluster_id missing or malformed")
            return _policy(decide, "read", f"cluster:{cluster}")
        if op == "jobs/runs/submit":
            v = _policy(decide, "run", "job:submit")
            if not v.allowed:
                return v
            touched: list[str] = []  # what a quota on a job or pipeline counts it as
            for pipeline in g.triggered(params, "pipeline_task", "pipeline_id"):
                # An existing pipeline runs on its own clusters: no guardrail sees them.
                if not isinstance(pipeline, str) or not _PIPELINE_ID.fullmatch(pipeline):
                    raise _Refusal(400, "bad_request", "pipeline_id missing or malformed")
                by_pipeline = _policy(decide, "run", f"pipeline:{pipeline}")
                if not by_pipeline.allowed:
                    by_pipeline.reason = f"runs/submit starts a pipeline: {by_pipeline.reason}"
                    return by_pipeline
                touched.append(f"pipeline:{pipeline}")
            for raw in g.triggered(params, "run_job_task", "job_id"):
                triggered = await self._run_of_job(
                    req, decide, headers, _id({"job_id": raw}, "job_id")
                )
                if not triggered.allowed:
                    triggered.reason = f"runs/submit triggers a job: {triggered.reason}"
                    return triggered
                touched.extend((triggered.obj, *triggered.quota_objects))
            why = self._violation(req, params)
            if why is not None:
                return _guardrail_refusal(v, why, params, None)
            v.quota_objects = tuple(dict.fromkeys(o for o in touched if o != v.obj))
            return _admit(v, st, params)
        job_id = _id(params, "job_id")
        st["job_id"] = job_id
        if op == "jobs/run-now":
            v = await self._run_of_job(req, decide, headers, job_id)
            return _admit(v, st, v.state) if v.allowed else v
        v, _status, _job = await self._job_verdict(decide, _JOB_OPS[op], job_id, headers, False)
        if v.allowed:
            v.detail = {"job_id": job_id}
        return v

    async def _job_verdict(
        self, decide: Decide, action: str, job_id: int, headers: UpstreamHeaders, spec: bool
    ) -> tuple[Verdict, int, dict[str, Any] | None]:
        """``action`` on job ``job_id`` by id or by name (an explicit deny on either wins);
        the job's settings are fetched when ``spec`` or when only its name can grant."""
        v = _policy(decide, action, f"job:{job_id}")
        need_job = spec or (not v.allowed and v.rule is None)
        status, job = await self._job(job_id, headers) if need_job else (0, None)
        name = job.get("name") if isinstance(job, dict) else None
        if isinstance(name, str) and name:
            by_name = _policy(decide, action, f"job-name:{name}")
            if not by_name.allowed and by_name.rule is not None:
                v = by_name  # an explicit deny on the name beats an allow on the id
            elif not v.allowed and v.rule is None and by_name.allowed:
                v = by_name
        return v, status, job

    async def _run_of_job(
        self, req: ProfileRequest, decide: Decide, headers: UpstreamHeaders, job_id: int
    ) -> Verdict:
        """A run of job ``job_id``: policy, then the guardrails on the job's own spec. An
        allowed verdict carries the spec in ``state`` (for the audit's cluster summary)."""
        v, status, job = await self._job_verdict(decide, "run", job_id, headers, True)
        if not v.allowed:
            return v
        if status == 404:
            raise _Refusal(404, "job_not_found", f"job {job_id} does not exist upstream")
        if job is None:
            raise _Refusal(502, "job_lookup_failed", f"job {job_id}: cluster spec unavailable")
        why = self._violation(req, job)
        if why is not None:
            return _guardrail_refusal(v, why, job, job_id)
        v.state = job
        name = job.get("name")
        names = (f"job:{job_id}", f"job-name:{name}" if isinstance(name, str) and name else "")
        v.quota_objects = tuple(o for o in names if o and o != v.obj)
        return v

    def _violation(self, req: ProfileRequest, payload: dict[str, Any]) -> str | None:
        """The first guardrail ``payload``'s clusters break for this principal, or None."""
        rule = next(
            (r for r in self.settings.guardrails
             if any(fnmatchcase(req.principal, p) for p in r.principals)),
            None,
        )  # fmt: skip
        if rule is None:
            return None
        specs = g.cluster_specs(payload)
        return g.violation(rule, specs, g.timeouts(payload), _glob_for(rule, req.principal))

    def _ownership(self, claims: Claims, run_id: int, poll: bool) -> str | None:
        rec = self.registry.get(self.name, run_id, self._base)
        dep = getattr(claims, "deployment", None)
        dag = getattr(claims, "dag_id", None)
        if rec is None or rec.deployment != dep:
            return f"run {run_id} was not started through Lockgate by deployment {dep}"
        if poll:
            if time.time() - rec.created_at > self.settings.run_read_max_age:
                return f"run {run_id} is older than the poll window"
            if dag == DEPLOYMENT_WIDE:
                return None
            aruns = getattr(claims, "run_id", None)
            if rec.dag_id != dag or (
                aruns not in (None, "", ANY_RUN) and rec.airflow_run_id != aruns
            ):
                return f"run {run_id} was not started by {dag} run {aruns}"
            return None
        if rec.dag_id != dag:
            return f"run {run_id} was started by DAG {rec.dag_id}, not {dag}"
        return None

    # -- upstream lookups ----------------------------------------------------------------
    async def _job(
        self, job_id: int, headers: UpstreamHeaders
    ) -> tuple[int, dict[str, Any] | None]:
        """(upstream status, the job's ``settings``) — cached; (0, None) when unreachable."""
        now = time.monotonic()
        hit = self._jobs.get(job_id)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._http.get(
                f"{self._base}/api/2.2/jobs/get",
                params={"job_id": str(job_id)},
                headers=await headers(),
                ssl=self._ssl if self._ssl is not None else True,
            ) as resp:
                status = resp.status
                data = await resp.json(content_type=None) if status == 200 else None
        except Exception as exc:  # unreachable, credential trouble, bad JSON: fail closed
            log.warning(
                "jobs/get failed", extra={"fields": {"job_id": job_id, "error": type(exc).__name__}}
            )
            return 0, None
        settings = data.get("settings") if isinstance(data, dict) else None
        if not isinstance(settings, dict):
            return status, None
        if len(self._jobs) > 1024:
            self._jobs.clear()
        self._jobs[job_id] = (now + self.settings.job_cache_seconds, status, settings)
        return status, settings


def _cluster_detail(payload: dict[str, Any], job_id: int | None) -> dict[str, Any]:
    detail: dict[str, Any] = {"cluster": g.summarize(g.cluster_specs(payload))}
    if job_id is not None:
        detail["job_id"] = job_id
    return detail


def _admit(v: Verdict, st: dict[str, Any], payload: dict[str, Any]) -> Verdict:
    """An allowed run: its clusters in the audit detail, its answer captured (run id), the
    ``runs`` quota asked."""
    v.detail = _cluster_detail(payload, st.get("job_id"))
    v.state, v.capture, v.starts_run = st, True, True
    return v


def _guardrail_refusal(
    v: Verdict, why: str, payload: dict[str, Any], job_id: int | None
) -> Verdict:
    detail = _cluster_detail(payload, job_id)
    return Verdict(False, v.action, v.obj, why, rule="databricks-guardrail", detail=detail)


def _op(path: str) -> str | None:
    """The API operation a path names (``jobs/run-now``), whatever its case or trailing
    slashes; None outside the versioned API."""
    m = _API.match(path)
    return m.group("op").lower() if m else None


def _policy(decide: Decide, action: str, obj: str) -> Verdict:
    d = decide(action, obj)
    return Verdict(bool(d.allowed), action, obj, d.reason, rule=d.rule, decision=d)


def _glob_for(rule: DatabricksGuardrail, principal: str) -> str:
    return next((p for p in rule.principals if fnmatchcase(principal, p)), principal)


def _params(req: ProfileRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parse_qsl(req.query, keep_blank_values=True):
        if key in out:
            raise _Refusal(400, "bad_request", f"query parameter {key!r} given twice")
        out[key] = value
    if req.body:
        try:
            data = json.loads(req.body, object_pairs_hook=_unique_keys)
        except _Refusal:
            raise
        except (ValueError, RecursionError):  # RecursionError: [[[[...]]]]
            data = None
        if not isinstance(data, dict):
            raise _Refusal(400, "bad_request", "request body is not a JSON object")
        both = out.keys() & data.keys()
        if both:
            raise _Refusal(
                400, "bad_request", f"parameter {min(both)!r} given in both query and body"
            )
        out.update(data)
    return out


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refusal(400, "bad_request", "a JSON object in the body names a key twice")
    return obj


def _id(params: dict[str, Any], key: str) -> int:
    v = params.get(key)
    if isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 19:
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _Refusal(400, "bad_request", f"{key} missing or not an integer")
    return v


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _decode(headers: Headers, body: bytes) -> bytes:
    enc = next((v.strip().lower() for k, v in headers if k.lower() == b"content-encoding"), b"")
    if enc in (b"", b"identity"):
        return body
    if enc not in (b"gzip", b"deflate"):
        return b""
    # Bounded inflation: a small compressed body must not become a large one here.
    d = zlib.decompressobj(wbits=47 if enc == b"gzip" else 15)
    try:
        return d.decompress(body, _CAPTURE_LIMIT * 4)
    except zlib.error:
        return b""


CAPTURE_LIMIT = _CAPTURE_LIMIT
