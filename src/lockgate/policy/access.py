"""The access map: what a principal or a DAG may reach, who can reach a resource, and the
deciding rule of one request, read from a :class:`PolicySet`.

- :func:`grants_for`: every rule that applies to a principal (exact) or to a DAG (every
  task of it, ``airflow:<deployment>/<dag>/*``), with what it grants or refuses, its
  conditions, and the denies that shadow an allow (wholly, or for part of it).
- :func:`reachers_of`: every rule on a resource, with the principal globs it names and
  which known DAGs they cover.
- :func:`explain`: the decision and the text ``lockgate policy check`` prints (the CLI's
  ``cmd_check`` is a caller), decided by the engine itself (:meth:`PolicySet.decide`) so the
  map can never say something the gateway would not do.

A DAG's principals are read as a path-aware glob (task and DAG ids hold no ``/``) and
compared with a rule's principal globs by :func:`lockgate.policy.overlap.intersects`.
Everything here is pure except :func:`rule_lines`, which reads the policy files once to name
each rule's line.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePath

import yaml

from lockgate.policy.engine import Decision, PolicySet, Request, Rule
from lockgate.policy.globs import covers, covers_all
from lockgate.policy.mapindex import MAX_MAP_INDEX, NOT_MAPPED
from lockgate.policy.model import ACTIONS
from lockgate.policy.overlap import any_intersect, intersects


@dataclass(frozen=True, slots=True)
class Shadow:
    """A deny laid over an allow: ``whole`` when it refuses everything the allow grants
    (unconditionally), else only where they overlap or when its conditions hold."""

    rule: str
    where: str
    whole: bool
    conditions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Grant:
    """One rule as it applies to the question asked."""

    rule: str
    effect: str  # allow | deny
    source: str
    line: int | None
    principals: tuple[str, ...]  # the rule's principal globs that apply
    whole: bool  # applies to every principal of the question (every task of a DAG)
    resources: tuple[str, ...]
    objects: tuple[str, ...]
    actions: tuple[str, ...]  # in ACTIONS order, "*" spelled out
    conditions: tuple[str, ...]  # as written: "time_window 06:00-20:00 UTC", "map_index 0-9"
    description: str = ""
    shadowed_by: tuple[Shadow, ...] = ()

    @property
    def where(self) -> str:
        """``team.yaml:12`` (the file's name, and the rule's line when known)."""
        return where(self.source, self.line)

    @property
    def unconditional(self) -> bool:
        return not self.conditions

    def on(self, resource: str) -> bool:
        """The rule names ``resource`` (one of its resource globs matches it)."""
        return any(fnmatch.fnmatchcase(resource, p) for p in self.resources)


@dataclass(frozen=True, slots=True)
class DagReach:
    """A known DAG a rule's principal globs reach: ``whole`` when every task of it."""

    deployment: str
    dag: str
    whole: bool


@dataclass(frozen=True, slots=True)
class Reach:
    """A rule on a resource and the known DAGs its principal globs cover."""

    grant: Grant
    dags: tuple[DagReach, ...] = field(default=())


def where(source: str, line: int | None) -> str:
    """``team.yaml:12``: a rule's file by name, and its line when known."""
    name = PurePath(source).name or source
    return f"{name}:{line}" if line else name


def dag_principals(deployment: str, dag: str) -> str:
    """The principals of every task of ``dag`` (either may be a glob): ``airflow:d/g/*``."""
    return f"airflow:{deployment}/{dag}/*"


def _dag_touches(dag_glob: str, pattern: str) -> bool:
    # the DAG's glob as a path-aware one: its ids and its task ids hold no "/"
    return intersects(dag_glob, pattern, "object", "name")


def conditions_of(rule: Rule) -> tuple[str, ...]:
    """A rule's conditions as explanations word them."""
    out: list[str] = []
    if rule.max_token_ttl is not None:
        out.append(f"max_token_ttl {rule.max_token_ttl}s")
    if rule.window is not None:
        out.append(f"time_window {rule.window[2]}")
    if rule.map_condition is not None:
        out.append(rule.map_condition.text)
    return tuple(out)


def _actions(rule: Rule) -> tuple[str, ...]:
    return ACTIONS if "*" in rule.actions else tuple(a for a in ACTIONS if a in rule.actions)


def _grant(rule: Rule, principals: Sequence[str], whole: bool, lines: Mapping[str, int]) -> Grant:
    return Grant(
        rule=rule.id,
        effect=rule.effect,
        source=rule.source,
        line=lines.get(rule.id),
        principals=tuple(principals),
        whole=whole,
        resources=rule.resources.patterns,
        objects=rule.objects.patterns,
        actions=_actions(rule),
        conditions=conditions_of(rule),
        description=rule.description,
    )


def _grants_anything(rule: Rule) -> bool:
    # an empty list matches nothing: such a rule neither grants nor refuses
    return bool(rule.actions and rule.objects.patterns and rule.resources.patterns)


def _shadowed(allow: Grant, denies: Sequence[Grant], one_resource: bool) -> Grant:
    """``allow`` with the denies that overlap it (``one_resource``: both are already known to
    name the resource asked about)."""
    shadows: list[Shadow] = []
    for deny in denies:
        if not set(deny.actions) & set(allow.actions):
            continue
        if not any_intersect(deny.principals, allow.principals, "name"):
            continue
        if not one_resource and not any_intersect(deny.resources, allow.resources, "name"):
            continue
        if not any_intersect(deny.objects, allow.objects, "object"):
            continue
        whole = (
            deny.unconditional
            and set(deny.actions) >= set(allow.actions)
            and (deny.whole or covers_all(deny.principals, allow.principals, "name"))
            and (one_resource or covers_all(deny.resources, allow.resources, "name"))
            and covers_all(deny.objects, allow.objects, "object")
        )
        shadows.append(Shadow(deny.rule, deny.where, whole, deny.conditions))
    if not shadows:
        return allow
    return replace(allow, shadowed_by=tuple(shadows))


def _with_shadows(grants: list[Grant], one_resource: bool = False) -> list[Grant]:
    denies = [g for g in grants if g.effect == "deny"]
    return [g if g.effect == "deny" else _shadowed(g, denies, one_resource) for g in grants]


def grants_for(
    policy_set: PolicySet,
    principal: str | None = None,
    *,
    deployment: str | None = None,
    dag: str | None = None,
    lines: Mapping[str, int] | None = None,
) -> list[Grant]:
    """Every rule that applies to ``principal`` (exact), or to some task of ``dag`` of
    ``deployment``, in policy order; allows carry the denies that shadow them.

    ``lines``: rule id -> line in its file (:func:`rule_lines`), for :attr:`Grant.where`."""
    known_lines = lines or {}
    out: list[Grant] = []
    if principal is not None:
        for rule in policy_set.rules:
            if _grants_anything(rule) and rule.principals(principal):
                matching = [
                    p for p in rule.principals.patterns if fnmatch.fnmatchcase(principal, p)
                ]
                out.append(_grant(rule, matching, True, known_lines))
        return _with_shadows(out)
    if deployment is None or dag is None:
        raise ValueError("grants_for needs a principal, or a deployment and a dag")
    tasks = dag_principals(deployment, dag)
    for rule in policy_set.rules:
        if not _grants_anything(rule):
            continue
        touching = [p for p in rule.principals.patterns if _dag_touches(tasks, p)]
        if touching:
            whole = any(covers(p, tasks, "name") for p in touching)
            out.append(_grant(rule, touching, whole, known_lines))
    return _with_shadows(out)


def reachers_of(
    policy_set: PolicySet,
    resource: str,
    dags: Iterable[tuple[str, str]] = (),
    *,
    lines: Mapping[str, int] | None = None,
) -> list[Reach]:
    """Every rule naming ``resource``, in policy order, each with the known ``dags``
    (deployment, dag id or glob) its principal globs reach; allows carry the denies on the
    resource that shadow them."""
    known_dags = list(dags)
    grants = [
        _grant(rule, rule.principals.patterns, False, lines or {})
        for rule in policy_set.rules
        if _grants_anything(rule) and rule.resources(resource)
    ]
    out: list[Reach] = []
    for grant in _with_shadows(grants, one_resource=True):
        reached: list[DagReach] = []
        for deployment, dag in known_dags:
            tasks = dag_principals(deployment, dag)
            touching = [p for p in grant.principals if _dag_touches(tasks, p)]
            if touching:
                whole = any(covers(p, tasks, "name") for p in touching)
                reached.append(DagReach(deployment, dag, whole))
        out.append(Reach(grant, tuple(reached)))
    return out


# -- one request: the decision and its explanation ------------------------------------------


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decided request and what ``lockgate policy check`` says of it."""

    principal: str
    action: str
    resource: str
    object: str
    map_index: int
    decision: Decision  # the engine's own
    description: str  # the deciding rule's description ("" without one)
    quotas: tuple[str, ...]  # the quotas an allowed request counts against, worded
    undelegated: str | None  # why no token would be minted for the principal, when so

    @property
    def allowed(self) -> bool:
        return self.decision.allowed and self.undelegated is None

    @property
    def verdict(self) -> str:
        return "ALLOW" if self.allowed else "DENY"

    def lines(self) -> list[str]:
        """The lines ``lockgate policy check`` prints."""
        decision = self.decision
        head = (
            f"{'ALLOW' if decision.allowed else 'DENY'} {self.principal} {self.action} "
            f"{self.resource}"
            + (f" object {self.object}" if self.object else "")
            + (f" map_index {self.map_index}" if self.map_index != NOT_MAPPED else "")
        )
        lines = [head, f"  {decision.explain()}"]
        if self.description:
            lines.append(f"  rule description: {self.description}")
        if decision.rule is None:
            lines.append("  no rule decided; denied by default")
        if decision.allowed:
            lines.extend(self.quotas)
        if self.undelegated:
            lines[0] = "DENY" + head[len("ALLOW" if decision.allowed else "DENY") :]
            lines.append(f"  {self.undelegated}")
        return lines

    @property
    def text(self) -> str:
        return "\n".join(self.lines())


def explain(
    policy_set: PolicySet,
    principal: str,
    resource: str,
    action: str,
    obj: str = "",
    map_index: int = NOT_MAPPED,
    at: datetime | float | None = None,
    *,
    token_ttl: int | None = None,
    deployments: Mapping[str, Sequence[str]] | None = None,
) -> Explanation:
    """Decide one request as the gateway would. Without ``token_ttl``, a token freshly
    minted for the pair is assumed (its lifetime the rules' smallest ``max_token_ttl``).
    ``deployments`` (name -> DAG globs): a DAG its deployment may not act for is denied,
    since no token would ever be minted for it."""
    ttl = token_ttl if token_ttl is not None else policy_set.max_ttl(principal, resource, map_index)
    decision = policy_set.decide(Request(principal, action, resource, obj, ttl, at, map_index))
    rule = policy_set.rule(decision.rule) if decision.rule else None
    quotas = quota_lines(policy_set, principal, action, resource, obj) if decision.allowed else []
    undelegated = None
    if deployments is not None:
        undelegated = principal_problems(principal, deployments)[1]
    return Explanation(
        principal,
        action,
        resource,
        obj,
        map_index,
        decision,
        rule.description if rule is not None else "",
        tuple(quotas),
        undelegated,
    )


def request_problem(
    principal: str,
    action: str,
    resource: str,
    *,
    map_index: int = NOT_MAPPED,
    known_resources: set[str] | None = None,
    deployments: Mapping[str, Sequence[str]] | None = None,
    target: str | None = None,
) -> str | None:
    """Why the question itself is wrong (nothing can be decided), or None. ``target``: the
    ``RESOURCE[/OBJECT]`` it was typed as, named when the resource is missing."""
    if action not in ACTIONS:
        return f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}"
    if not resource:
        return f"bad target {target or ''!r}; expected RESOURCE[/OBJECT]"
    if not NOT_MAPPED <= map_index <= MAX_MAP_INDEX:
        return f"bad map index {map_index}; expected {NOT_MAPPED} (not mapped) to {MAX_MAP_INDEX}"
    if known_resources is not None and resource not in known_resources:
        known = ", ".join(sorted(known_resources)) or "none configured"
        return f"unknown resource {resource!r} (known: {known}); nothing can be decided"
    if deployments is not None:
        return principal_problems(principal, deployments)[0]
    return None


def quota_lines(
    policy_set: PolicySet, principal: str, action: str, resource: str, obj: str
) -> list[str]:
    """The quotas an allowed request would count against (every one applies), worded."""
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


def principal_problems(
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


# -- where each rule is written ---------------------------------------------------------------


def rule_lines(policy_set: PolicySet, read: Callable[[str], str] | None = None) -> dict[str, int]:
    """Rule id -> the line of its ``id:`` in its file; a file that cannot be read or parsed
    again (changed since it was loaded) is left out, never guessed. ``read``: source -> text
    (default: the file on disk)."""
    reader = read or (lambda source: Path(source).read_text(encoding="utf-8"))
    by_source: dict[str, list[Rule]] = {}
    for rule in policy_set.rules:
        by_source.setdefault(rule.source, []).append(rule)
    found: dict[str, int] = {}
    for source, rules in by_source.items():
        try:
            node = yaml.compose(reader(source), Loader=yaml.SafeLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        entries = _rules_node(node)
        for rule in rules:
            if rule.index < len(entries):
                line = _id_line(entries[rule.index], rule.id)
                if line is not None:
                    found[rule.id] = line
    return found


def _rules_node(node: yaml.Node | None) -> list[yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if key.value == "rules" and isinstance(value, yaml.SequenceNode):
            return list(value.value)
    return []


def _id_line(entry: yaml.Node, rule_id: str) -> int | None:
    if not isinstance(entry, yaml.MappingNode):
        return None
    for key, value in entry.value:
        if key.value == "id" and value.value == rule_id:
            return int(key.start_mark.line) + 1
    return None
