"""Least privilege from observed use: the smallest rules that cover what a DAG was allowed.

Input is the audit trail as plain rows (mappings with the record's field names: ``event``,
``ts``, ``deployment``, ``dag_id``, ``task_id``, ``run_id``, ``resource``, ``action``,
``object``, ``decision``), given by the caller as an iterable so a million rows stream
through without being held: :class:`Evidence` keeps one counter per distinct
(deployment, task, resource, action, object), never the rows.

What counts as use: a request the gateway let through (``admitted``, the record written
ahead of forwarding; or ``allowed`` without a ``ref``, which has no ``admitted`` before it).
A policy ``denied`` request is an "ask" listed apart: a suggestion never grants it.

How far objects are generalised, and only as far as the evidence goes:

* exact objects are kept, unless at least ``min_siblings`` of them differ in one ``/``
  segment only and that segment looks like an id (digits, uuid, date, hash): then a
  one-segment glob (``/orders/*``);
* ``**`` only when objects under one top-level prefix were seen at ``deep_after`` or more
  distinct depths;
* never a glob that would cover an ask that was denied (the exact objects stay instead);
* principals stay per task, unless every task of the DAG seen in the window ends up with
  the same grant (then ``airflow:<deployment>/<dag>/*``); actions are never widened.

:func:`suggest` returns a :class:`Suggestion`; ``policy_yaml()`` is a policy file the real
loader accepts and ``tests_yaml()`` its policy tests (one allow per observed use, one deny
per denied ask), so ``lockgate policy test`` passes on the suggestion.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quoted  # JSON string, C speed
from typing import Any

import yaml

from lockgate.policy.globs import Matcher, match_one
from lockgate.policy.model import ACTIONS

#: Events that record a request the gateway let through (see the module docstring).
USE_EVENTS = frozenset({"admitted", "allowed"})

_ID_SEGMENT = re.compile(
    r"""^(?:
        \d+                                                      # 1234
      | [0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}     # uuid
      | \d{4}-\d{2}-\d{2}(?:[T_ ]?[\d:.]*Z?)?                    # 2026-12-04, ...T10:00:00Z
      | \d{8}                                                    # 20261204
      | [0-9a-fA-F]{16,}                                         # hash, hex digest
    )$""",
    re.VERBOSE,
)
#: Denied asks listed at the head of a suggested policy file (all of them are in its tests).
_SHOWN_ASKS = 50
_RULE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def looks_like_id(segment: str) -> bool:
    """True for a path segment that names one item among many (digits, uuid, date, hash)."""
    return bool(_ID_SEGMENT.match(segment))


@dataclass(slots=True)
class Seen:
    """How often something was seen, when, and in how many runs."""

    count: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    runs: set[str] = field(default_factory=set)
    rules: set[str] = field(default_factory=set)  # the rules that decided (when known)

    def add(self, ts: float, run: str | None, rule: str | None = None) -> None:
        self.count += 1
        self.first = min(self.first, ts)
        self.last = max(self.last, ts)
        if run:
            self.runs.add(run)
        if rule:
            self.rules.add(rule)

    def merge(self, other: Seen) -> None:
        self.count += other.count
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        self.runs |= other.runs
        self.rules |= other.rules

    def describe(self) -> str:
        runs = len(self.runs)
        span = f"{_day(self.first)}..{_day(self.last)}" if self.count else "never"
        times = f"{self.count:,} time{'s' * (self.count != 1)}"
        return f"seen {times} across {runs:,} run{'s' * (runs != 1)}, {span}"


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


# (deployment, task, resource, action, object)
UseKey = tuple[str, str, str, str, str]


@dataclass(slots=True)
class Evidence:
    """What the DAG's tasks did (``used``) and asked for in vain (``denied``), per
    (deployment, task, resource, action, object); ``tasks``: every task seen per deployment."""

    dag: str
    used: dict[UseKey, Seen] = field(default_factory=dict)
    denied: dict[UseKey, Seen] = field(default_factory=dict)
    tasks: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    rows: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one audit row (rows of other DAGs are ignored)."""
        if row.get("dag_id") != self.dag:
            return
        self.rows += 1
        deployment, task = row.get("deployment"), row.get("task_id")
        if not deployment or not task:
            return
        self.tasks[deployment].add(task)
        action, resource = row.get("action"), row.get("resource")
        if action not in ACTIONS or not resource:
            return  # connect/cancel and token records are not policy actions
        event, decision = row.get("event"), row.get("decision")
        if event in USE_EVENTS and decision == "allow":
            detail = row.get("detail") or {}
            if event == "allowed" and isinstance(detail, Mapping) and "ref" in detail:
                return  # the outcome of an "admitted" record already counted
            book = self.used
        elif event == "denied" and decision == "deny":
            book = self.denied
        else:
            return
        key = (deployment, task, resource, action, row.get("object") or "")
        seen = book.get(key)
        if seen is None:
            seen = book[key] = Seen()
        seen.add(float(row.get("ts") or 0.0), row.get("run_id"), row.get("rule"))

    def only_denied(self) -> list[tuple[UseKey, Seen]]:
        """The denied asks never allowed at another time, in order."""
        return sorted((k, s) for k, s in self.denied.items() if k not in self.used)


def collect(rows: Iterable[Mapping[str, Any]], dag: str) -> Evidence:
    evidence = Evidence(dag)
    for row in rows:
        evidence.add(row)
    return evidence


@dataclass(frozen=True, slots=True)
class Grant:
    """One object pattern and the observed objects it stands for."""

    pattern: str
    objects: tuple[str, ...]
    why: str  # empty for an exact object


@dataclass(slots=True)
class SuggestedRule:
    """One allow rule of a suggestion: a principal, a resource, its actions and objects."""

    id: str
    principal: str
    resource: str
    actions: list[str]
    objects: list[Grant]
    seen: Seen
    _matchers: tuple[Matcher, Matcher] | None = None

    @property
    def description(self) -> str:
        parts = [self.seen.describe()]
        parts += [f"{g.pattern}: {g.why}" for g in self.objects if g.why]
        if self.seen.rules:
            parts.append("allowed so far by " + ", ".join(sorted(self.seen.rules)))
        return "; ".join(parts)

    def grants(self, principal: str, resource: str, action: str, obj: str) -> bool:
        """Whether this rule allows the request (as the engine's matchers would)."""
        if resource != self.resource or action not in self.actions:
            return False
        if self._matchers is None:
            self._matchers = (
                Matcher([self.principal], "name"),
                Matcher([g.pattern for g in self.objects], "object"),
            )
        principals, objects = self._matchers
        return principals(principal) and objects(obj)

    def to_spec(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "effect": "allow",
            "principals": [self.principal],
            "actions": list(self.actions),
            "resources": [self.resource],
            "objects": [g.pattern for g in self.objects],
            "description": self.description,
        }


@dataclass(slots=True)
class Suggestion:
    """The rules suggested for ``dag`` and the evidence they stand on."""

    dag: str
    rules: list[SuggestedRule]
    evidence: Evidence

    def policy(self) -> dict[str, Any]:
        return {"rules": [r.to_spec() for r in self.rules]}

    def policy_yaml(self) -> str:
        asks = self.denied_asks()
        head = (
            f"# Suggested from observed use of DAG {self.dag}: "
            f"{len(self.evidence.used)} distinct uses, {len(asks)} denied asks (not granted).\n"
        )
        if not self.rules:
            head += "# Nothing was allowed in the window: no rule to suggest.\n"
        if asks:
            head += "# Asked but denied (never granted here; decide by hand):\n"
        for (dep, task, resource, action, obj), seen in asks[:_SHOWN_ASKS]:
            head += f"#   airflow:{dep}/{self.dag}/{task} {action} {resource} {obj!r}: "
            head += f"{seen.describe()}\n"
        if len(asks) > _SHOWN_ASKS:
            head += f"#   ... and {len(asks) - _SHOWN_ASKS:,} more (see the policy tests)\n"
        return head + _dump(self.policy())

    def tests(self) -> list[dict[str, Any]]:
        """One allow per observed use (with the rule that should decide it: the first that
        matches, as the engine picks), one deny per denied ask."""
        cases: list[dict[str, Any]] = []
        candidates: dict[tuple[str, str], list[SuggestedRule]] = defaultdict(list)
        for r in self.rules:  # in order: the first that matches decides
            for action in r.actions:
                candidates[(r.resource, action)].append(r)
        for (dep, task, resource, action, obj), seen in sorted(self.evidence.used.items()):
            principal = f"airflow:{dep}/{self.dag}/{task}"
            name = f"{task} {action} {resource} {obj} ({seen.count:,}x)"
            case = _case(name, principal, action, resource, obj, "allow")
            rule = next(
                (
                    r
                    for r in candidates[(resource, action)]
                    if r.grants(principal, resource, action, obj)
                ),
                None,
            )
            if rule is not None:
                case["rule"] = rule.id
            cases.append(case)
        for (dep, task, resource, action, obj), seen in self.denied_asks():
            principal = f"airflow:{dep}/{self.dag}/{task}"
            name = f"asked but denied: {task} {action} {resource} {obj} ({seen.count:,}x)"
            cases.append(_case(name, principal, action, resource, obj, "deny"))
        return cases

    def tests_yaml(self) -> str:
        # Written by hand: a case per distinct use can be tens of thousands of flat string
        # maps, which PyYAML's representer takes seconds over. A JSON string is a valid
        # YAML double-quoted scalar, so every value stays exact.
        lines = ["tests:"]
        for case in self.tests():
            mark = "  - "
            for key, value in case.items():
                lines.append(f"{mark}{key}: {_quoted(value)}")
                mark = "    "
        return "\n".join(lines) + "\n" if len(lines) > 1 else "tests: []\n"

    def denied_asks(self) -> list[tuple[UseKey, Seen]]:
        """Requests only ever denied: one also allowed at another time (a revoked token, a
        time window) is a use, and granted as one."""
        return self.evidence.only_denied()


def _case(
    name: str, principal: str, action: str, resource: str, obj: str, expect: str
) -> dict[str, Any]:
    return {"name": name, "principal": principal, "action": action, "resource": resource,
            "object": obj, "expect": expect}  # fmt: skip


# libyaml's emitter when PyYAML has it: tens of thousands of test cases dump in a blink
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump(data: object) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def _dag_wide(deployment: str, dag: str) -> str:
    return f"airflow:{deployment}/{dag}/*"


def generalise(
    objects: Iterable[str],
    denied: Iterable[str] = (),
    *,
    min_siblings: int = 2,
    deep_after: int = 4,
) -> list[Grant]:
    """The fewest patterns covering ``objects`` that the evidence supports (module
    docstring); none of them covers an object in ``denied``."""
    exact = sorted(set(objects))
    refused = tuple(sorted(set(denied)))
    grants: list[Grant] = []
    taken: set[str] = set()
    for pattern, members in _deep_groups(exact, deep_after):
        if not any(match_one(pattern, d, "object") for d in refused):
            depths = len({m.count("/") for m in members})
            why = f"{len(members):,} objects seen at {depths} depths"
            grants.append(Grant(pattern, tuple(members), why))
            taken.update(members)
    rest = [o for o in exact if o not in taken]
    for pattern, members in _sibling_groups(rest, min_siblings):
        if any(o in taken for o in members):
            continue  # one object stands for one pattern: groups on other segments lose
        if any(match_one(pattern, d, "object") for d in refused):
            continue  # the glob would grant an ask that was denied: keep exact objects
        why = f"{len(members):,} objects differing in one id segment"
        grants.append(Grant(pattern, tuple(members), why))
        taken.update(members)
    grants += [Grant(_literal(o), (o,), "") for o in exact if o not in taken]
    return sorted(grants, key=lambda g: g.pattern)


def _literal(obj: str) -> str:
    """An object as a pattern that matches only itself (glob characters in a class)."""
    return re.sub(r"([*?\[])", r"[\1]", obj)


def _sibling_groups(objects: list[str], min_siblings: int) -> list[tuple[str, list[str]]]:
    """``(pattern, members)`` for each set of objects equal but for one id-like segment,
    largest first (the deepest segment wins a tie)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for obj in objects:
        if any(c in obj for c in "*?["):
            continue
        segments = obj.split("/")
        for i, seg in enumerate(segments):
            if looks_like_id(seg):
                groups["/".join([*segments[:i], "*", *segments[i + 1 :]])].append(obj)
    found = [(p, m) for p, m in groups.items() if len(m) >= min_siblings]
    return sorted(found, key=lambda pm: (-len(pm[1]), -pm[0].rfind("*"), pm[0]))


def _deep_groups(objects: list[str], deep_after: int) -> list[tuple[str, list[str]]]:
    """``(prefix/**, members)`` for a top-level prefix under which objects were seen at
    ``deep_after`` or more distinct depths."""
    groups: dict[str, list[str]] = defaultdict(list)
    for obj in objects:
        segments = obj.split("/")
        head = 2 if obj.startswith("/") else 1  # "/orders/..." or "sales/..."
        if len(segments) > head and segments[head - 1] and not any(c in obj for c in "*?["):
            groups["/".join(segments[:head])].append(obj)
    out = []
    for prefix, members in sorted(groups.items()):
        if len({m.count("/") for m in members}) >= deep_after:
            out.append((prefix + "/**", members))
    return out


def suggest(
    rows: Iterable[Mapping[str, Any]],
    dag: str,
    *,
    min_siblings: int = 2,
    deep_after: int = 4,
) -> Suggestion:
    """Stream ``rows`` and suggest the rules for ``dag`` (see the module docstring)."""
    evidence = collect(rows, dag)
    # (deployment, task, resource, action) -> objects used / denied
    used: dict[tuple[str, str, str, str], dict[str, Seen]] = defaultdict(dict)
    for (dep, task, res, act, obj), seen in evidence.used.items():
        used[(dep, task, res, act)][obj] = seen
    refused: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    for (dep, task, res, act, obj), _seen in evidence.only_denied():
        refused[(dep, task, res, act)].append(obj)
    # per task: (deployment, resource, action) -> grants
    per_task: dict[tuple[str, str], dict[tuple[str, str], tuple[Grant, ...]]] = defaultdict(dict)
    for (dep, task, res, act), objs in used.items():
        per_task[(dep, task)][(res, act)] = tuple(
            generalise(
                objs,
                refused[(dep, task, res, act)],
                min_siblings=min_siblings,
                deep_after=deep_after,
            )
        )
    entries: dict[tuple[str, str, tuple[str, ...]], SuggestedRule] = {}
    for dep in sorted(evidence.tasks):
        tasks = sorted(evidence.tasks[dep])
        # (resource, action, object patterns) -> the tasks granted exactly that
        holders: dict[tuple[str, str, tuple[str, ...]], list[str]] = defaultdict(list)
        for t in tasks:
            for (res, act), grants in per_task.get((dep, t), {}).items():
                holders[(res, act, tuple(g.pattern for g in grants))].append(t)
        for (res, act, _patterns), granted in sorted(holders.items()):
            if len(granted) == len(tasks) > 1:
                principals = {_dag_wide(dep, dag): granted}
            else:
                principals = {f"airflow:{dep}/{dag}/{t}": [t] for t in granted}
            for principal, of_tasks in principals.items():
                grants, seen = _joined([per_task[(dep, t)][(res, act)] for t in of_tasks])
                for t in of_tasks:
                    for g in per_task[(dep, t)][(res, act)]:
                        for obj in g.objects:
                            seen.merge(evidence.used[(dep, t, res, act, obj)])
                _add(entries, principal, res, act, grants, seen)
    rules = sorted(entries.values(), key=lambda r: (r.principal, r.resource, r.actions))
    prefix = f"suggested-{_RULE_ID_UNSAFE.sub('-', dag)}"[:110]
    for n, rule in enumerate(rules, 1):
        rule.id = f"{prefix}-{n}"
    return Suggestion(dag, rules, evidence)


def _joined(same: list[tuple[Grant, ...]]) -> tuple[tuple[Grant, ...], Seen]:
    """Grants with the same patterns (one per task) as one, their objects pooled."""
    joined = []
    for i, g in enumerate(same[0]):
        pooled = tuple(sorted({o for gs in same for o in gs[i].objects}))
        why = re.sub(r"^[\d,]+", f"{len(pooled):,}", g.why) if g.why else ""
        joined.append(Grant(g.pattern, pooled, why))
    return tuple(joined), Seen()


def _add(
    entries: dict[tuple[str, str, tuple[str, ...]], SuggestedRule],
    principal: str,
    resource: str,
    action: str,
    grants: tuple[Grant, ...],
    seen: Seen,
) -> None:
    """One rule per (principal, resource, object patterns): actions with the very same
    patterns share it (exact, not wider)."""
    key = (principal, resource, tuple(g.pattern for g in grants))
    rule = entries.get(key)
    if rule is None:
        entries[key] = SuggestedRule("", principal, resource, [action], list(grants), seen)
        return
    rule.actions = sorted({*rule.actions, action}, key=ACTIONS.index)
    rule.seen.merge(seen)


_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def suggestion_name(dag: str) -> str:
    """The file stem a DAG's suggestion is written under (``policy suggest --out``, the
    console's downloads)."""
    return f"suggested-{_FILE_UNSAFE.sub('-', dag)}"
