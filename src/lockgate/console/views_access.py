"""The access map: what a DAG or principal may reach, who can reach a resource, and the
deciding rule of any request typed in.

- ``GET /access``: choose a DAG (the configured deployments' ``dags:`` globs and the DAGs
  the audit trail saw in the last 30 days), a principal, or a resource; or ask one request.
- ``GET /access/dag?deployment=&dag=`` (or ``?ref=deployment/dag``) and
  ``GET /access/principal?p=``: per configured resource, what policy allows and refuses and
  by which rule (file:line), conditions, the denies that shadow an allow, and how often each
  rule let the DAG through in the last 30 days ("seen in use": the way into least
  privilege; a grant never used is a candidate to remove).
- ``GET /access/resource?name=``: every rule on the resource, its principal globs and the
  known DAGs they reach.
- ``GET /access/check?principal=&resource=&action=&object=``: the decision and the text
  ``lockgate policy check`` prints, and the shadow policy's verdict when one is loaded.

The answers come from :mod:`lockgate.policy.access` over ``ctx.policy.current`` (the set
the gateway enforces now). The audit trail, the policy files and the glob comparisons run
off the event loop (the gateway's requests must not wait behind them); the DAG list and
each policy set's rule lines are kept (60 s; per set).
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from lockgate import _log
from lockgate.audit.query import AuditQuery
from lockgate.console import reads
from lockgate.console.live import visible
from lockgate.console.reads import run_read
from lockgate.console.web import ConsoleContext, context, render, requires
from lockgate.policy import ACTIONS, PolicySet
from lockgate.policy.access import (
    Grant,
    dag_principals,
    explain,
    grants_for,
    reachers_of,
    request_problem,
    rule_lines,
    where,
)
from lockgate.policy.mapindex import NOT_MAPPED

log = _log.get("console.access")

#: how far back "seen in use" and the audit's DAGs look
USE_WINDOW = 30 * 86400.0
#: how long the list of known DAGs is kept
DAGS_TTL = 60.0


@dataclass
class _Kept:
    """What the access pages keep between requests (per console app)."""

    dags: list[tuple[str, str]] = field(default_factory=list)
    dags_at: float = float("-inf")
    lines_of: PolicySet | None = None
    lines: dict[str, int] = field(default_factory=dict)


KEPT: web.AppKey[_Kept] = web.AppKey("lockgate_console_access", _Kept)


def add_routes(app: web.Application) -> None:
    reads.install(app)  # the trail's DAGs and the grants' use are read on the console's pool
    app[KEPT] = _Kept()
    app.router.add_get("/access", index, name="access")
    app.router.add_get("/access/dag", dag_page, name="access_dag")
    app.router.add_get("/access/principal", principal_page, name="access_principal")
    app.router.add_get("/access/resource", resource_page, name="access_resource")
    app.router.add_get("/access/check", check_page, name="access_check")


# -- what the pages share ----------------------------------------------------------------------


def _resources(ctx: ConsoleContext) -> list[str]:
    return sorted(r.name for r in ctx.config.resources)


def _deployments(ctx: ConsoleContext) -> dict[str, list[str]]:
    return {d.name: list(d.dags) for d in ctx.config.deployments}


def _configured_dags(ctx: ConsoleContext) -> list[tuple[str, str]]:
    return [(d.name, glob) for d in ctx.config.deployments for glob in d.dags]


def _seen_dags(ctx: ConsoleContext, now: float) -> set[str]:
    """DAG ids with a request in the audit trail in the last :data:`USE_WINDOW` (one grouped
    read: the trail's histogram with a single bucket)."""
    with ctx.audit_reader() as reader:
        buckets = reader.histogram(AuditQuery(since=now - USE_WINDOW), bucket=USE_WINDOW)
    return {b.dag for b in buckets if b.dag}


def _known_dags(ctx: ConsoleContext, seen: Iterable[str]) -> list[tuple[str, str]]:
    """Configured DAG globs, then each DAG seen under every deployment that may act for it."""
    known = _configured_dags(ctx)
    for dag in sorted(set(seen)):
        for deployment, globs in _deployments(ctx).items():
            pair = (deployment, dag)
            if pair not in known and any(fnmatch.fnmatchcase(dag, g) for g in globs):
                known.append(pair)
    return known


async def known_dags(request: web.Request) -> list[tuple[str, str]]:
    """(deployment, dag id or glob) the pages offer, kept for :data:`DAGS_TTL`."""
    ctx, kept = context(request), request.app[KEPT]
    now = time.time()
    if now - kept.dags_at >= DAGS_TTL:
        try:
            seen = await run_read(request, _seen_dags, ctx, now)
        except Exception:  # a trail that cannot be read: the configured DAGs, asked again next time
            log.warning("access map: the audit trail's DAGs could not be read", exc_info=True)
            return _known_dags(ctx, ())
        kept.dags, kept.dags_at = _known_dags(ctx, seen), now
    return kept.dags


async def _lines(request: web.Request, policy_set: PolicySet) -> dict[str, int]:
    kept = request.app[KEPT]
    if kept.lines_of is not policy_set:
        kept.lines = await asyncio.to_thread(rule_lines, policy_set)
        kept.lines_of = policy_set
    return kept.lines


def _allowed_use(ctx: ConsoleContext, q: AuditQuery) -> Counter[tuple[str, str]]:
    """Allowed requests per (rule, resource) matching ``q``: one grouped count."""
    with ctx.audit_reader() as reader:
        counted = reader.count_by(q, ("rule", "resource"))
    return Counter({(rule or "", resource or ""): n for (rule, resource), n in counted.items()})


@dataclass(frozen=True)
class ResourceSection:
    """One table of the DAG/principal page: the grants naming a resource."""

    resource: str  # "" for rules that name no configured resource
    grants: list[Grant]


def _sections(grants: Sequence[Grant], resources: Sequence[str]) -> list[ResourceSection]:
    out = [ResourceSection(r, [g for g in grants if g.on(r)]) for r in resources]
    elsewhere = [g for g in grants if not any(g.on(r) for r in resources)]
    sections = [s for s in out if s.grants]
    if elsewhere:
        sections.append(ResourceSection("", elsewhere))
    return sections


def _link(path: str, **query: str | None) -> str:
    """``/console<path>?<query>`` with the empty values left out."""
    return f"/console{path}?" + urlencode({k: v for k, v in query.items() if v})


# -- pages -------------------------------------------------------------------------------------


@requires("viewer")
async def index(request: web.Request) -> web.StreamResponse:
    # the credentials page and others link here with ?resource=
    resource = request.query.get("resource", "").strip()
    if resource:
        raise web.HTTPFound("/console/access/resource?" + urlencode({"name": resource}))
    return render(request, "access_index.html", **await _choices(request, None))


async def _choices(request: web.Request, problem: str | None) -> dict[str, Any]:
    """What the index page offers: DAGs, resources (with the rules naming each)."""
    ctx = context(request)
    resources = _resources(ctx)
    rules = ctx.policy.current.rules
    return {
        "problem": problem,
        "dags": await known_dags(request),
        "resources": resources,
        "rules_on": {name: sum(1 for r in rules if r.resources(name)) for name in resources},
    }


async def _grants_page(
    request: web.Request,
    *,
    subject: str,
    grants: list[Grant],
    use_query: AuditQuery | None,
    **extra: Any,
) -> web.Response:
    """``use_query``: the allowed requests "seen in use" counts (None: not counted, the
    subject being a glob of DAGs)."""
    ctx = context(request)
    uses: Counter[tuple[str, str]] = Counter()
    unread = False
    use_since = str(int(use_query.since)) if use_query and use_query.since else ""
    if use_query is not None:
        try:
            uses = await run_read(request, _allowed_use, ctx, use_query)
        except Exception:  # the grants are policy's answer: shown without their use
            log.warning("access map: use could not be counted", exc_info=True)
            unread = True
    sections = _sections(grants, _resources(ctx))
    # (rule, resource) grants of configured resources, and those no request used
    granted = [
        (g.rule, s.resource)
        for s in sections
        if s.resource
        for g in s.grants
        if g.effect == "allow"
    ]
    return render(
        request,
        "access_grants.html",
        shown=visible,
        subject=subject,
        sections=sections,
        granted=len(granted),
        reachable=len({resource for _, resource in granted}),
        unused=sum(1 for key in granted if not uses[key]),
        uses=uses,
        uses_counted=use_query is not None and not unread,
        uses_unread=unread,
        use_since=use_since,
        use_days=int(USE_WINDOW // 86400),
        link=_link,
        policy_error=ctx.policy.last_error,
        **extra,
    )


@requires("viewer")
async def dag_page(request: web.Request) -> web.StreamResponse:
    deployment = request.query.get("deployment", "").strip()
    dag = request.query.get("dag", "").strip()
    ref = request.query.get("ref", "").strip()
    if ref and not (deployment or dag):
        deployment, _, dag = ref.partition("/")
    if not deployment or not dag:
        return await _bad_question(
            request, "Choose a DAG: a deployment and a DAG id are both needed."
        )
    ctx = context(request)
    policy_set = ctx.policy.current
    lines = await _lines(request, policy_set)
    grants = await asyncio.to_thread(
        grants_for, policy_set, deployment=deployment, dag=dag, lines=lines
    )
    # use is counted for one DAG; a glob of DAGs (as a deployment's dags: names) is not
    literal = not any(c in dag for c in "*?[")
    since = time.time() - USE_WINDOW
    use_query = AuditQuery(deployment=deployment, dag=dag, event="admitted", since=since)
    delegated = _deployments(ctx).get(deployment)
    return await _grants_page(
        request,
        subject=f"DAG {dag} of {deployment}",
        grants=grants,
        use_query=use_query if literal else None,
        kind="dag",
        deployment=deployment,
        dag=dag,
        principal=None,
        dag_of_principal=None,
        principals=dag_principals(deployment, dag),
        delegated=delegated,
        undelegated=delegated is not None
        and literal
        and not any(fnmatch.fnmatchcase(dag, g) for g in delegated),
        dag_filter=dag if literal else None,
    )


@requires("viewer")
async def principal_page(request: web.Request) -> web.StreamResponse:
    principal = request.query.get("p", "").strip()
    if not principal:
        return await _bad_question(request, "Type a principal, like airflow:prod/etl_orders/load.")
    ctx = context(request)
    policy_set = ctx.policy.current
    lines = await _lines(request, policy_set)
    grants = await asyncio.to_thread(grants_for, policy_set, principal, lines=lines)
    since = time.time() - USE_WINDOW
    return await _grants_page(
        request,
        subject=principal,
        grants=grants,
        use_query=AuditQuery(principal=principal, event="admitted", since=since),
        kind="principal",
        deployment=None,
        dag=None,
        principal=principal,
        dag_of_principal=_dag_of(principal),
        principals=principal,
        delegated=None,
        undelegated=False,
        dag_filter=None,
    )


def _dag_of(principal: str) -> tuple[str, str] | None:
    """(deployment, dag) of ``airflow:<deployment>/<dag>/<task>``, else None."""
    if not principal.startswith("airflow:") or principal.count("/") != 2:
        return None
    deployment, dag, _task = principal[len("airflow:") :].split("/")
    return (deployment, dag) if deployment and dag else None


@requires("viewer")
async def resource_page(request: web.Request) -> web.StreamResponse:
    name = request.query.get("name", "").strip()
    ctx = context(request)
    resources = _resources(ctx)
    if not name:
        return await _bad_question(request, "Choose a resource.")
    policy_set = ctx.policy.current
    dags, lines = await known_dags(request), await _lines(request, policy_set)
    # globs compared pairwise (rules by DAGs): kept off the loop the gateway serves on
    reach = await asyncio.to_thread(reachers_of, policy_set, name, dags, lines=lines)
    return render(
        request,
        "access_resource.html",
        shown=visible,
        name=name,
        configured=name in resources,
        resources=resources,
        reach=reach,
        allows=sum(r.grant.effect == "allow" for r in reach),
        policy_error=ctx.policy.last_error,
    )


@requires("viewer")
async def check_page(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    q = request.query
    asked = {k: q.get(k, "").strip() for k in ("principal", "resource", "action", "object")}
    map_text = q.get("map_index", "").strip()
    at_text = q.get("at", "").strip()
    values: dict[str, Any] = {
        "asked": asked,
        "map_text": map_text,
        "at_text": at_text,
        "at_shown": None,
        "resources": _resources(ctx),
        "actions": ACTIONS,
        "problem": None,
        "answer": None,
        "shadow": None,
        "shadow_error": ctx.policy.shadow_error,
        "rule_where": None,
    }
    if not any(asked.values()):
        return render(request, "access_check.html", **values)
    try:
        map_index = int(map_text) if map_text else NOT_MAPPED
    except ValueError:
        values["problem"] = f"map index {map_text!r} is not a whole number"
        return render(request, "access_check.html", status=400, **values)
    try:
        at = _moment(at_text)
    except ValueError:
        values["problem"] = f"time {at_text!r} is not a time like 2026-12-05T13:00 (UTC)"
        return render(request, "access_check.html", status=400, **values)
    values["at_shown"] = at.strftime("%Y-%m-%d %H:%M:%S UTC")
    deployments = _deployments(ctx)
    problem = request_problem(
        asked["principal"],
        asked["action"],
        asked["resource"],
        map_index=map_index,
        known_resources=set(values["resources"]),
        deployments=deployments,
        target=asked["resource"],
    )
    if problem:
        values["problem"] = problem
        return render(request, "access_check.html", status=400, **values)
    policy_set = ctx.policy.current
    args = (asked["principal"], asked["resource"], asked["action"], asked["object"], map_index, at)
    answer = explain(policy_set, *args, deployments=deployments)
    values["answer"] = answer
    decided_by = policy_set.rule(answer.decision.rule) if answer.decision.rule else None
    if decided_by is not None:
        lines = await _lines(request, policy_set)
        values["rule_where"] = where(decided_by.source, lines.get(decided_by.id))
    shadow_set = ctx.policy.shadow
    if shadow_set is not None:
        values["shadow"] = explain(shadow_set, *args, deployments=deployments)
    return render(request, "access_check.html", **values)


def _moment(text: str) -> datetime:
    """The time a request is checked at: ISO 8601 or a ``datetime-local`` value (no offset:
    UTC), else now."""
    if not text:
        return datetime.now(UTC)
    when = datetime.fromisoformat(text)
    try:
        return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    except OverflowError:  # 9999-12-31T23:59-14:00 is past the calendar in UTC
        raise ValueError(f"{text!r} is past the calendar in UTC") from None


async def _bad_question(request: web.Request, message: str) -> web.Response:
    values = await _choices(request, message)
    return render(request, "access_index.html", status=400, **values)
