"""Cluster-cost guardrails for Databricks run requests.

``cluster_specs(payload)`` finds every cluster a run would start, in a ``runs/submit`` body
or in a job's ``settings`` (``jobs/get``): top-level ``new_cluster`` (single-task form),
``tasks[].new_cluster``, ``job_clusters[].new_cluster``, and ``existing_cluster_id`` uses;
a ``for_each_task`` task's inner ``task`` counts as a task of its own.
``violation(rule, specs, timeouts, principal)`` returns the first broken limit as a message
naming the limit, the value requested and the principal, or None.

Numbers may arrive as JSON strings (the Airflow provider normalises every number to a
string, and Databricks accepts both), so ``"64"`` is read as 64; only ASCII digits are
digits (``"²"`` or Arabic-Indic digits are no number here). Rules fail closed: a
cluster without ``num_workers`` or ``autoscale.max_workers`` counts as
unbounded when a cap is set; a missing or zero ``timeout_seconds`` means "no timeout" and
breaks a ``max_timeout_seconds`` limit; a missing node type (no pool, no policy) breaks an
``allowed_node_types`` limit.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lockgate.config import DatabricksGuardrail


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    key: str  # task_key / job_cluster_key / "new_cluster"
    spec: dict[str, Any] | None  # None: an existing cluster (existing_cluster_id)
    existing_id: str | None = None

    @property
    def max_workers(self) -> int | None:
        """The most workers this cluster may use; None when the spec does not bound it."""
        if self.spec is None:
            return None
        auto = self.spec.get("autoscale")
        if isinstance(auto, dict):
            return _num(auto.get("max_workers"))
        return _num(self.spec.get("num_workers"))

    def summary(self) -> dict[str, Any]:
        if self.spec is None:
            return {"key": self.key, "existing_cluster_id": self.existing_id}
        s = self.spec
        auto = s.get("autoscale") if isinstance(s.get("autoscale"), dict) else None
        out: dict[str, Any] = {"key": self.key}
        if auto is not None:
            out["autoscale"] = [auto.get("min_workers"), auto.get("max_workers")]
        else:
            out["num_workers"] = s.get("num_workers")
        for k in ("node_type_id", "instance_pool_id", "policy_id"):
            if s.get(k):
                out[k] = s[k]
        return out


def cluster_specs(payload: dict[str, Any]) -> list[ClusterSpec]:
    out: list[ClusterSpec] = []
    if isinstance(payload.get("new_cluster"), dict):
        out.append(ClusterSpec("new_cluster", payload["new_cluster"]))
    if payload.get("existing_cluster_id"):
        out.append(ClusterSpec("existing", None, str(payload["existing_cluster_id"])))
    for jc in _dicts(payload.get("job_clusters")):
        if isinstance(jc.get("new_cluster"), dict):
            key = str(jc.get("job_cluster_key", "job_cluster"))
            out.append(ClusterSpec(key, jc["new_cluster"]))
    for t in _tasks(payload):
        key = str(t.get("task_key", "task"))
        if isinstance(t.get("new_cluster"), dict):
            out.append(ClusterSpec(key, t["new_cluster"]))
        if t.get("existing_cluster_id"):
            out.append(ClusterSpec(key, None, str(t["existing_cluster_id"])))
    return out


def timeouts(payload: dict[str, Any]) -> list[tuple[str, int]]:
    """(where, timeout_seconds) of the run: top level, and each task that sets its own."""
    out = [("run", _int(payload.get("timeout_seconds")))]
    for t in _tasks(payload):
        if "timeout_seconds" in t:
            out.append((f"task {t.get('task_key', '?')}", _int(t.get("timeout_seconds"))))
    return out


def triggered(payload: dict[str, Any], kind: str, key: str) -> list[Any]:
    """``key`` of every ``kind`` task of a run, as sent: the jobs (``run_job_task``,
    ``job_id``) and pipelines (``pipeline_task``, ``pipeline_id``) a run starts."""
    return [t[kind].get(key) for t in _tasks(payload) if isinstance(t.get(kind), dict)]


def summarize(specs: list[ClusterSpec]) -> dict[str, Any]:
    """Audit detail: each cluster's size, and the total worker cap (None if unbounded)."""
    total: int | None = 0
    for s in specs:
        if s.spec is None:
            continue
        mw = s.max_workers
        total = None if mw is None or total is None else total + mw
    return {"clusters": [s.summary() for s in specs], "max_workers_total": total}


def violation(
    rule: DatabricksGuardrail,
    specs: list[ClusterSpec],
    run_timeouts: list[tuple[str, int]],
    principal: str,
) -> str | None:
    who = f"for {principal}"
    if rule.max_timeout_seconds is not None:
        for where, t in run_timeouts:
            if where != "run" and t == 0:
                continue  # a task without its own timeout runs under the run's timeout
            if t <= 0 or t > rule.max_timeout_seconds:
                shown = f"{t}" if t > 0 else "0 (no timeout)"
                return (
                    f"guardrail: timeout_seconds {shown} ({where}) exceeds the limit "
                    f"{rule.max_timeout_seconds} {who}"
                )
    for s in specs:
        if s.spec is None:
            if not rule.allow_existing_clusters:
                return (
                    f"guardrail: existing_cluster_id {s.existing_id} ({s.key}) is not allowed "
                    f"{who}; use a new job cluster"
                )
            continue
        spec = s.spec
        if rule.max_workers is not None:
            mw = s.max_workers
            if mw is None:
                return (
                    f"guardrail: cluster {s.key} does not bound its workers; the limit is "
                    f"{rule.max_workers} {who}"
                )
            if mw > rule.max_workers:
                field = "autoscale.max_workers" if "autoscale" in spec else "num_workers"
                return (
                    f"guardrail: {field} {mw} exceeds the limit {rule.max_workers} {who} "
                    f"(cluster {s.key})"
                )
        if rule.require_instance_pool and not spec.get("instance_pool_id"):
            return f"guardrail: cluster {s.key} has no instance_pool_id; one is required {who}"
        if rule.require_policy_id and not spec.get("policy_id"):
            return (
                f"guardrail: cluster {s.key} has no policy_id; a cluster policy is required {who}"
            )
        if rule.allowed_node_types is not None:
            for field in ("node_type_id", "driver_node_type_id"):
                node = spec.get(field)
                if node is None:
                    if field == "node_type_id" and not (
                        spec.get("instance_pool_id") or spec.get("policy_id")
                    ):
                        return (
                            f"guardrail: cluster {s.key} names no node_type_id; allowed node "
                            f"types {who} are {rule.allowed_node_types}"
                        )
                    continue
                if not any(fnmatch.fnmatchcase(str(node), p) for p in rule.allowed_node_types):
                    return (
                        f"guardrail: {field} {node} is not allowed {who} (cluster {s.key}); "
                        f"allowed: {rule.allowed_node_types}"
                    )
    return None


def _tasks(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Every task of a run, ``for_each_task`` inner tasks (at any depth) included."""
    out = _dicts(payload.get("tasks"))
    for task in out:  # grows as inner tasks are found, so every depth is reached
        loop = task.get("for_each_task")
        if isinstance(loop, dict) and isinstance(loop.get("task"), dict):
            out.append(loop["task"])
    return out


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _num(value: Any) -> int | None:
    """A non-negative integer from an int or a digit string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    return None


def _int(value: Any) -> int:
    return _num(value) or 0
