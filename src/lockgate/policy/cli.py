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

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePath

from lockgate.errors import ConfigError
from lockgate.policy.access import explain, request_problem
from lockgate.policy.engine import PolicySet
from lockgate.policy.lint import lint
from lockgate.policy.mapindex import NOT_MAPPED
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
    resource, obj = split_target(target)
    if database_resources and resource in database_resources:
        obj = obj[1:]
    problem = request_problem(
        principal,
        action,
        resource,
        map_index=map_index,
        known_resources=known_resources,
        deployments=deployments,
        target=target,
    )
    if problem:
        return 2, problem
    answer = explain(
        policy_set,
        principal,
        resource,
        action,
        obj,
        map_index,
        at,
        token_ttl=token_ttl,
        deployments=deployments,
    )
    return (0 if answer.allowed else 1), answer.text


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
