"""What ``lockgate policy check | lint | test`` do, as pure functions.

Each returns ``(exit_code, text)`` and prints nothing, so the CLI stays a thin argparse layer
and these stay testable. Exit codes: 0 ok/allow, 1 deny / findings / failing tests,
2 bad input (unknown action, resource or deployment, unreadable test file).

``cmd_check`` answers for the world the configuration describes when given its catalog
(``known_resources``) and delegations (``deployments``: name -> DAG globs): a request to a
resource that does not exist, or from a deployment that does not exist, is a mistake in the
question, not a DENY; a DAG its deployment is not delegated gets DENY, because no token would
ever be minted for it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePath

from lockgate.errors import ConfigError
from lockgate.policy.engine import PolicySet, Request
from lockgate.policy.lint import lint
from lockgate.policy.mapindex import MAX_MAP_INDEX, NOT_MAPPED
from lockgate.policy.model import ACTIONS
from lockgate.policy.testrunner import run_policy_tests


def split_target(target: str) -> tuple[str, str]:
    """``orders-api/orders/1`` -> ``("orders-api", "/orders/1")``; ``orders-api`` -> ``(.., "")``.

    The object is everything after the first ``/``, with that ``/`` kept (HTTP paths).
    """
    cut = target.find("/")
    if cut == -1:
        return target, ""
    return target[:cut], target[cut:]


def cmd_check(
    policy_set: PolicySet,
    principal: str,
    action: str,
    target: str,
    *,
    token_ttl: int | None = None,
    at: datetime | None = None,
    known_resources: set[str] | None = None,
    deployments: Mapping[str, Sequence[str]] | None = None,
    database_resources: set[str] | None = None,
    map_index: int = NOT_MAPPED,
) -> tuple[int, str]:
    """Decide one request. Without ``token_ttl``, assume a token freshly minted for the pair.

    ``database_resources`` (cql, postgres): their objects (``sales.orders``) carry no
    leading ``/``, unlike HTTP paths, so ``pg/sales.orders`` asks for ``sales.orders``.
    ``map_index``: the instance of a mapped task asking (default: the task is not mapped)."""
    if action not in ACTIONS:
        return 2, f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}"
    resource, obj = split_target(target)
    if database_resources and resource in database_resources:
        obj = obj[1:]
    if not resource:
        return 2, f"bad target {target!r}; expected RESOURCE[/OBJECT]"
    if not NOT_MAPPED <= map_index <= MAX_MAP_INDEX:
        return (
            2,
            f"bad map index {map_index}; expected {NOT_MAPPED} (not mapped) to {MAX_MAP_INDEX}",
        )
    if known_resources is not None and resource not in known_resources:
        known = ", ".join(sorted(known_resources)) or "none configured"
        return 2, f"unknown resource {resource!r} (known: {known}); nothing can be decided"
    undelegated = None
    if deployments is not None:
        problem, undelegated = _principal_problem(principal, deployments)
        if problem:
            return 2, problem
    ttl = token_ttl if token_ttl is not None else policy_set.max_ttl(principal, resource, map_index)
    decision = policy_set.decide(Request(principal, action, resource, obj, ttl, at, map_index))
    verdict = "ALLOW" if decision.allowed else "DENY"
    lines = [
        f"{verdict} {principal} {action} {resource}"
        + (f" object {obj}" if obj else "")
        + (f" map_index {map_index}" if map_index != NOT_MAPPED else ""),
        f"  {decision.explain()}",
    ]
    rule = policy_set.rule(decision.rule) if decision.rule else None
    if rule is not None and rule.description:
        lines.append(f"  rule description: {rule.description}")
    if decision.rule is None:
        lines.append("  no rule decided; denied by default")
    if decision.allowed:
        lines.extend(_quota_lines(policy_set, principal, action, resource, obj))
    if undelegated:
        lines[0] = "DENY" + lines[0][len(verdict) :]
        lines.append(f"  {undelegated}")
        return 1, "\n".join(lines)
    return (0 if decision.allowed else 1), "\n".join(lines)


def _quota_lines(
    policy_set: PolicySet, principal: str, action: str, resource: str, obj: str
) -> list[str]:
    """The quotas an allowed request would count against (every one applies)."""
    lines: list[str] = []
    for q in policy_set.quotas_for(principal, resource):
        if q.objects.match_all or q.objects(obj):
            limits = [
                f"rate {q.rate:g}/s (burst {q.burst:g}"
                + (f", waits up to {q.max_delay:g}s)" if q.max_delay else ")")
                if q.rate is not None and action in q.actions
                else "",
                f"{q.concurrency} in flight"
                if q.concurrency is not None and action in q.actions
                else "",
                f"{q.sessions} sessions" if q.sessions is not None else "",
                f"{q.runs} runs" if q.runs is not None and action == "run" else "",
            ]
            shown = ", ".join(limit for limit in limits if limit)
            if shown:
                lines.append(f"  quota {q.id} ({PurePath(q.source).name}): {shown} per {q.per}")
    return lines


def _principal_problem(
    principal: str, deployments: Mapping[str, Sequence[str]]
) -> tuple[str | None, str | None]:
    """(why the question is wrong, why no token would be minted), either or both None."""
    shape = "expected airflow:DEPLOYMENT/DAG/TASK"
    if not principal.startswith("airflow:") or principal.count("/") != 2:
        return f"bad principal {principal!r}; {shape}", None
    deployment, dag_id, _task = principal[len("airflow:") :].split("/")
    if deployment not in deployments:
        known = ", ".join(sorted(deployments)) or "none configured"
        return f"unknown deployment {deployment!r} in {principal!r} (known: {known})", None
    globs = deployments[deployment]
    if not any(fnmatch.fnmatchcase(dag_id, g) for g in globs):
        return None, (
            f"but deployment {deployment} may not act for dag {dag_id} "
            f"(its dags: {', '.join(globs)}), so no token would be minted"
        )
    return None, None


def cmd_lint(
    policy_set: PolicySet,
    known_resources: set[str],
    *,
    strict: bool = False,
    upstreams: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """Exit 1 on any error finding, or on any finding at all with ``strict``;
    ``upstreams`` (resource name to upstream URL) adds the quota-alias check."""
    findings = lint(policy_set, known_resources, upstreams)
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    lines = [str(f) for f in findings]
    files = ", ".join(PurePath(s).name for s in policy_set.sources) or "no files"
    counted = f"{len(policy_set)} rules"
    if policy_set.quotas:
        counted += f", {len(policy_set.quotas)} quotas"
    lines.append(
        f"{counted} in {files}: {errors} error(s), {warnings} warning(s)"
        if findings
        else f"{counted} in {files}: no problems found"
    )
    failed = errors > 0 or (strict and warnings > 0)
    return (1 if failed else 0), "\n".join(lines)


def cmd_test(policy_set: PolicySet, test_file: Path) -> tuple[int, str]:
    """Run a policy test file; exit 1 if any case fails, 2 if the file is invalid."""
    try:
        results = run_policy_tests(policy_set, test_file)
    except ConfigError as exc:
        return 2, str(exc)
    failures = [r for r in results if not r.passed]
    lines = [str(r) for r in failures]
    lines.append(f"{len(results) - len(failures)} passed, {len(failures)} failed")
    return (1 if failures else 0), "\n".join(lines)
