"""``profile: arm``: Azure Data Factory over Azure Resource Manager, pipelines as objects.

Classification (paths are case-insensitive in ARM, so they are matched without case and
factory, pipeline and run names are lower-cased in objects — ``LOAD`` and ``load`` are the
same pipeline upstream, so they must be the same object here):

================================================  ======  ===================================
request (under .../providers/Microsoft.DataFactory)  action  object
================================================  ======  ===================================
POST factories/{f}/pipelines/{p}/createRun         run     ``factory:<f>/pipeline:<p>``
GET  factories/{f}/pipelineruns/{id}               read    the run's pipeline object (below)
POST factories/{f}/pipelineruns/{id}/cancel        run     idem
POST factories/{f}/pipelineruns/{id}/queryActivityruns  read  idem
GET  factories/{f}/pipelines/{p}                   read    ``factory:<f>/pipeline:<p>``
GET  factories/{f}                                 read    ``factory:<f>``
anything else                                      admin   ``arm:<path>`` (deny by default)
================================================  ======  ===================================

A run started through Lockgate is recorded from the ``createRun`` answer (run id →
factory, pipeline, who started it: :mod:`.runs`), so reading or cancelling it is judged on
its pipeline: ``factory:<f>/pipeline:<p>``. A run Lockgate did not start (an ADF trigger,
another tool) is ``factory:<f>/run:<id>``, which needs its own grant. Requests outside the
configured subscription (and resource group, when set) are refused whatever the policy says.

A deferred operator's trigger polls with a *poll token* (task ``@poll``, ``/v1/poll-token``).
Such a token may only read a pipeline run (GET) or cancel it (``AzureDataFactoryTrigger``
cancels the run when its polling fails), and only a run started through Lockgate by a task
of its deployment, within :data:`POLL_WINDOW`, and by its DAG run when the token is narrowed
to one (:func:`poll_refusal`); it starts nothing. Policy is asked first, as for any token.

Names are checked against what ADF can hold before policy is asked: a factory name is
letters, digits and inner hyphens; a pipeline name starts with a letter, digit or ``_`` and
holds none of ``<>*#.%&:\\+?/`` nor ends with a space; a run id is letters, digits and
hyphens. Anything else is refused (400 ``bad_name``): no such object exists, and ARM (IIS,
.NET) may read ``drop.`` or ``drop%20`` as ``drop``, past a deny on ``drop``.

Refusals are shaped as ARM errors (``{"error": {"code", "message"}}``) so the Azure SDK
puts Lockgate's reason in the exception message, i.e. in the Airflow task log.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from lockgate.gateway.http.profiles.arm.runs import AdfRun, AdfRuns
from lockgate.gateway.http.profiles.databricks import ANY_RUN, DEPLOYMENT_WIDE, POLL_TASK
from lockgate.gateway.http.profiles.hooks import (
    Decide,
    Headers,
    ProfileBase,
    ProfileRequest,
    UpstreamHeaders,
    Verdict,
)

_ADF = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)"
    r"/providers/microsoft\.datafactory/factories/(?P<f>[^/]+)(?P<rest>/.*)?$",
    re.IGNORECASE,
)
_PIPELINE = re.compile(r"^/pipelines/(?P<p>[^/]+)(?P<op>/createrun)?$", re.IGNORECASE)
_RUN = re.compile(
    r"^/pipelineruns/(?P<id>[^/]+)(?P<op>/cancel|/queryactivityruns)?$", re.IGNORECASE
)
_FACTORY_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_PIPELINE_NAME = re.compile(r"[a-z0-9_][^<>*#.%&:\\+?/\x00-\x1f]*(?<! )")
_RUN_ID = re.compile(r"[a-z0-9-]{1,64}")
if TYPE_CHECKING:
    from lockgate.config import HttpResource
    from lockgate.identity import Claims


#: what a triggerer's poll token may do: read a run's status, cancel it (the Data Factory
#: trigger cancels the run when its polling fails)
POLL_OPS = frozenset({"get_run", "cancel"})
POLL_RULE = "arm-poll-token"
#: poll tokens read runs started this recently (a trigger outlives no pipeline run longer)
POLL_WINDOW = 7 * 86400.0
#: a pipeline run's ``status`` once it will not change any more
TERMINAL_STATUSES = frozenset({"Succeeded", "Failed", "Cancelled"})


def poll_refusal(claims: Claims | None, run_id: str, started: AdfRun | None) -> str | None:
    """Why a poll token may not touch pipeline run ``run_id``, or None when it may: the run
    was started through Lockgate by a task of the token's deployment, recently, and (for a
    token narrowed to a DAG or a DAG run) by that DAG and DAG run."""
    deployment = getattr(claims, "deployment", None)
    if started is None or started.deployment != deployment:
        return f"pipeline run {run_id} was not started through Lockgate by deployment {deployment}"
    if time.time() - started.created_at > POLL_WINDOW:
        return f"pipeline run {run_id} is older than the poll window"
    dag_id = getattr(claims, "dag_id", None)
    if dag_id == DEPLOYMENT_WIDE:
        return None
    dag_run = getattr(claims, "run_id", None)
    if started.dag_id != dag_id or (
        dag_run not in (None, "", ANY_RUN) and started.airflow_run_id != dag_run
    ):
        return f"pipeline run {run_id} was not started by {dag_id} run {dag_run}"
    return None


def _name(segment: str) -> str:
    return unquote(segment).lower()


class _BadName(ValueError):
    """A factory, pipeline or run name that ADF cannot hold."""


def _checked(kind: str, pattern: re.Pattern[str], segment: str) -> str:
    name = _name(segment)
    if pattern.fullmatch(name) is None:
        raise _BadName(f"not a valid {kind} name")
    return name


class ArmProfile(ProfileBase):
    def __init__(self, resource: HttpResource, runs: AdfRuns) -> None:
        if resource.arm is None:
            raise ValueError(f"resource {resource.name}: profile arm needs an arm section")
        self.name: str = resource.name
        self.settings = resource.arm
        self.max_body: int = self.settings.max_body_bytes
        self.runs = runs

    # -- Profile API ---------------------------------------------------------------------
    def local_answer(self, method: str, path: str) -> bytes | None:
        return None

    def wants_body(self, method: str, path: str) -> bool:
        return False  # classification needs only the path

    async def authorize(
        self, req: ProfileRequest, decide: Decide, headers: UpstreamHeaders
    ) -> Verdict:
        try:
            action, obj, st = self.classify(req.method, req.path)
        except _BadName as exc:
            action, obj = req.default
            return Verdict(False, action, obj, str(exc), status=400, slug="bad_name")
        scope = self._out_of_scope(req.path)
        if scope is not None:
            return Verdict(False, action, obj, scope, rule="arm-scope")
        poll = getattr(req.claims, "task_id", None) == POLL_TASK
        if poll and st.get("op") not in POLL_OPS:
            return Verdict(
                False, action, obj, "poll tokens may only read or cancel pipeline runs",
                rule=POLL_RULE,
            )  # fmt: skip
        d = decide(action, obj)
        v = Verdict(bool(d.allowed), action, obj, d.reason, rule=d.rule, decision=d)
        if not v.allowed:
            v.reason = d.explain() if hasattr(d, "explain") else d.reason
            return v
        if poll:
            why = poll_refusal(req.claims, st["run_id"], st.get("started"))
            if why is not None:
                return Verdict(False, action, obj, why, rule=POLL_RULE)
        st.pop("started", None)
        v.state = {**st, "claims": req.claims}
        v.capture = st.get("op") in ("createrun", "get_run")
        v.starts_run = st.get("op") == "createrun"
        v.detail = {k: st[k] for k in ("factory", "pipeline", "run_id") if st.get(k)}
        return v

    def on_response(
        self, verdict: Verdict, status: int, headers: Headers, body: bytes
    ) -> dict[str, Any]:
        st = verdict.state or {}
        detail = dict(verdict.detail)
        if status != 200 or not body:
            return detail
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return detail
        if not isinstance(data, dict):
            return detail
        if st.get("op") == "createrun" and isinstance(data.get("runId"), str):
            run_id = data["runId"].lower()
            if re.fullmatch(r"[A-Za-z0-9-]{1,64}", run_id):
                self.runs.add(self.name, st["factory"], run_id, st["pipeline"], st.get("claims"))
                detail["run_id"] = run_id
        elif st.get("op") == "get_run":
            for key, out in (("status", "status"), ("pipelineName", "pipeline_name")):
                if isinstance(data.get(key), str):
                    detail[out] = data[key][:128]
        return detail

    def finished_run(self, verdict: Verdict, detail: dict[str, Any]) -> str | None:
        """A relayed pipeline run whose status is terminal names a finished run."""
        st = verdict.state if isinstance(verdict.state, dict) else {}
        if st.get("op") == "get_run" and detail.get("status") in TERMINAL_STATUSES:
            run_id = st.get("run_id")
            return str(run_id) if run_id else None
        return None

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        """An ARM-shaped error around the gateway's own refusal body."""
        if body.get("error") == "throttled":
            message = (
                f"Lockgate: {body.get('principal')} is over quota {body.get('limit')} on "
                f"{body.get('resource')} ({body.get('kind')}); retry after "
                f"{body.get('retry_after')} s"
            )
            code = "TooManyRequests"
        elif body.get("error") == "forbidden":
            message = (
                f"Lockgate denied {body.get('principal')} {body.get('action')} on "
                f"{body.get('object')} of {body.get('resource')}: {body.get('reason')}"
            )
            code = "LockgateAccessDenied"
        else:
            message = f"Lockgate: {body.get('reason') or body.get('error')}"
            code = "Lockgate" + "".join(p.title() for p in str(body.get("error")).split("_"))
        return {"error": {"code": code, "message": message}, "lockgate": body}

    async def close(self) -> None:
        self.runs.close()

    # -- classification ------------------------------------------------------------------
    def classify(self, method: str, path: str) -> tuple[str, str, dict[str, Any]]:
        m = _ADF.match(path)
        if m is None:
            return "admin", f"arm:{path.lower()}", {}
        factory = _checked("factory", _FACTORY_NAME, m.group("f"))
        rest = m.group("rest") or ""
        st: dict[str, Any] = {"factory": factory}
        if rest in ("", "/"):
            return ("read" if method in ("GET", "HEAD") else "admin"), f"factory:{factory}", st
        pm = _PIPELINE.match(rest)
        if pm is not None:
            st["pipeline"] = pipeline = _checked("pipeline", _PIPELINE_NAME, pm.group("p"))
            obj = f"factory:{factory}/pipeline:{pipeline}"
            if pm.group("op") and method == "POST":
                st["op"] = "createrun"
                return "run", obj, st
            if not pm.group("op") and method in ("GET", "HEAD"):
                return "read", obj, st
            return "admin", obj, st
        rm = _RUN.match(rest)
        if rm is not None:
            st["run_id"] = run_id = _checked("run id", _RUN_ID, rm.group("id"))
            started = self.runs.get(self.name, factory, run_id)
            if started is not None:
                st["pipeline"], st["started"] = started.pipeline, started
                obj = f"factory:{factory}/pipeline:{started.pipeline}"
            else:
                obj = f"factory:{factory}/run:{run_id}"
            op = (rm.group("op") or "").lower()
            if op == "" and method in ("GET", "HEAD"):
                st["op"] = "get_run"
                return "read", obj, st
            if op == "/cancel" and method == "POST":
                st["op"] = "cancel"
                return "run", obj, st
            if op == "/queryactivityruns" and method == "POST":
                return "read", obj, st
            return "admin", obj, st
        return "admin", f"arm:{path.lower()}", st

    def _out_of_scope(self, path: str) -> str | None:
        m = re.match(r"^/subscriptions/([^/]+)(?:/resourcegroups/([^/]+))?", path, re.IGNORECASE)
        if m is None:
            return None  # tenant-level paths: classified admin, left to policy (deny)
        s = self.settings
        if _name(m.group(1)) != s.subscription_id.lower():
            return f"subscription {_name(m.group(1))} is not served by resource {self.name}"
        rg = m.group(2)
        if rg is not None and s.resource_group and _name(rg) != s.resource_group.lower():
            return f"resource group {_name(rg)} is not served by resource {self.name}"
        return None


__all__ = ["POLL_OPS", "AdfRun", "AdfRuns", "ArmProfile", "poll_refusal"]
