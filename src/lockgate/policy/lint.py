"""Policy lint: rules that are too broad, dead, duplicated or point at nothing.

Findings (severity in brackets):

* **overbroad** — an allow granting ``write``, ``admin`` or ``*``: to every principal
  (``*``, ``airflow:*``, ``airflow:*/*/*`` ...) [error], or on every resource (``*``) [warning].
* **shadowed** — an allow that can never decide because an unconditional deny covers it
  [warning]; an allow identical to, or a subset of, another allow that is no more
  restricted by conditions [warning].
* **unknown-resource** — a resource pattern matching no resource in the catalog [error].
* **no-effect** — a rule with an empty ``principals``, ``actions``, ``resources`` or
  ``objects`` list [warning].

Quotas (the ``quotas:`` list) [warnings: a quota is a brake, never an access decision]:

* **quota-unknown-resource** — a quota's resource pattern matching no configured resource;
* **quota-unreachable** — a quota no allow rule could ever reach (no allow rule's
  principals, resources and actions can meet the quota's): it would never count anything;
* **quota-no-effect** — a ``runs`` limit whose actions leave out ``run`` (run starts are
  ``run`` requests), or an empty list;
* **quota-alias** — a quota counting a resource but not another resource of the same
  upstream that an allow rule opens to its principals: a DAG would spend its budget on one
  name and go on through the other (given the upstreams: ``lockgate policy lint``).

Subset checks use :func:`~lockgate.policy.globs.covers`, which is conservative: lint may miss
a shadowed rule, but never calls a live rule shadowed.

:func:`policy_problems` is what ``lockgate config check`` asks: would the gateway load these
files, and does every resource they name exist? Each problem is one line
``file:line: field (rule id): message``, every file checked (not only the first broken one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal

from lockgate.errors import ConfigError
from lockgate.policy.engine import PolicySet, Quota, Rule
from lockgate.policy.globs import covers_all, is_literal, match_one
from lockgate.policy.loader import load_policy_texts, parse_policy_texts, read_text, yaml_lines
from lockgate.policy.model import ACTIONS, located

Severity = Literal["warning", "error"]

_DANGEROUS = frozenset({"write", "admin", "*"})
_ANY_PRINCIPAL = re.compile(r"(airflow:)?[*?/]*")  # only wildcards (and separators) after it
_ANY_RESOURCE = re.compile(r"[*?]*")


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    rule: str | None
    file: str | None
    message: str
    kind: str = ""
    field: str | None = None  # e.g. rules[2].resources[0], where a line can be looked up

    def __str__(self) -> str:
        where = PurePath(self.file).name if self.file else "<policy>"
        kind = "quota" if (self.field or "").startswith("quotas") else "rule"
        rule = f" {kind} {self.rule}:" if self.rule else ""
        return f"{self.severity}: {where}:{rule} {self.message}"


def _finding(
    sev: Severity, rule: Rule, kind: str, message: str, field: str | None = None
) -> Finding:
    return Finding(sev, rule.id, rule.source, message, kind, field or f"rules[{rule.index}]")


def _any_principal(pattern: str) -> bool:
    return "*" in pattern and _ANY_PRINCIPAL.fullmatch(pattern) is not None


def _any_resource(pattern: str) -> bool:
    return "*" in pattern and _ANY_RESOURCE.fullmatch(pattern) is not None


def _actions_cover(wide: Rule, narrow: Rule) -> bool:
    if "*" in wide.actions or wide.actions.issuperset(ACTIONS):
        return True
    return "*" not in narrow.actions and narrow.actions <= wide.actions


def _covers(wide: Rule, narrow: Rule) -> bool:
    """Every request ``narrow`` matches is matched by ``wide`` (patterns and actions only)."""
    return (
        _actions_cover(wide, narrow)
        and covers_all(wide.principals.patterns, narrow.principals.patterns, "name")
        and covers_all(wide.resources.patterns, narrow.resources.patterns, "name")
        and covers_all(wide.objects.patterns, narrow.objects.patterns, "object")
    )


def _empty(rule: Rule) -> list[str]:
    fields = {
        "principals": rule.principals.patterns,
        "actions": rule.actions,
        "resources": rule.resources.patterns,
        "objects": rule.objects.patterns,
    }
    return [name for name, value in fields.items() if not value]


def _same_conditions(a: Rule, b: Rule) -> bool:
    return (
        a.max_token_ttl == b.max_token_ttl
        and a.window == b.window
        and a.map_condition == b.map_condition
    )


def lint(
    policy_set: PolicySet,
    known_resources: set[str],
    upstreams: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Report problems in ``policy_set``, in rule order; ``upstreams`` (resource name to
    upstream URL) lets quotas be checked for a second name of the same upstream."""
    out: list[Finding] = []
    rules = policy_set.rules
    for rule in rules:
        empty = _empty(rule)
        if empty:
            out.append(
                _finding(
                    "warning",
                    rule,
                    "no-effect",
                    f"has no effect: empty {', '.join(empty)} list(s) match nothing",
                )
            )
            continue  # a rule that matches nothing cannot be broad, shadowed or unknown

        for k, pattern in enumerate(rule.resources.patterns):
            if not any(match_one(pattern, name, "name") for name in known_resources):
                out.append(
                    _finding(
                        "error",
                        rule,
                        "unknown-resource",
                        f"resource pattern {pattern!r} matches no configured resource",
                        f"rules[{rule.index}].resources[{k}]",
                    )
                )

        if rule.effect != "allow":
            continue
        risky = sorted(rule.actions & _DANGEROUS)
        if risky:
            wide_p = [p for p in rule.principals.patterns if _any_principal(p)]
            wide_r = [p for p in rule.resources.patterns if _any_resource(p)]
            if wide_p:
                out.append(
                    _finding(
                        "error",
                        rule,
                        "overbroad",
                        f"grants {', '.join(risky)} to every principal ({wide_p[0]!r})",
                    )
                )
            if wide_r:
                out.append(
                    _finding(
                        "warning",
                        rule,
                        "overbroad",
                        f"grants {', '.join(risky)} on every resource ({wide_r[0]!r})",
                    )
                )
        out.extend(_shadowing(rule, rules))
    for quota in policy_set.quotas:
        out.extend(_quota_findings(quota, rules, known_resources))
        if upstreams:
            out.extend(_quota_aliases(quota, rules, upstreams))
    return out


# -- quotas ------------------------------------------------------------------------------------
_WILD = re.compile(r"[*?\[]")


def _may_meet(a: str, b: str) -> bool:
    """Whether two name globs could match one name. Conservative: only a literal the other
    does not match, or fixed beginnings or endings that differ, prove they never meet."""
    if is_literal(a) or is_literal(b):
        literal, other = (a, b) if is_literal(a) else (b, a)
        return match_one(other, literal, "name")
    head_a, head_b = _WILD.split(a, 1)[0], _WILD.split(b, 1)[0]
    # a class's "]" would be read as a fixed ending: with one, the endings prove nothing
    tail_a = "" if "[" in a else _WILD.split(a)[-1]
    tail_b = "" if "[" in b else _WILD.split(b)[-1]
    heads_agree = head_a.startswith(head_b) or head_b.startswith(head_a)
    tails_agree = tail_a.endswith(tail_b) or tail_b.endswith(tail_a)
    return heads_agree and tails_agree


def _lists_meet(a: Sequence[str], b: Sequence[str]) -> bool:
    return any(_may_meet(x, y) for x in a for y in b)


def _reaches(rule: Rule, quota: Quota) -> bool:
    """Some request ``rule`` allows could count against ``quota``."""
    if rule.effect != "allow" or _empty(rule):
        return False
    actions = set(ACTIONS) if "*" in rule.actions else set(rule.actions)
    if quota.sessions is None and not actions & quota.actions:
        return False  # a session cap counts logins, whatever the action
    return _lists_meet(rule.principals.patterns, quota.principals.patterns) and _lists_meet(
        rule.resources.patterns, quota.resources.patterns
    )


def _quota_findings(
    quota: Quota, rules: tuple[Rule, ...], known_resources: set[str]
) -> list[Finding]:
    def finding(kind: str, message: str, field: str | None = None) -> Finding:
        where = field or f"quotas[{quota.index}]"
        return Finding("warning", quota.id, quota.source, message, kind, where)

    empty = [
        name
        for name, value in (
            ("principals", quota.principals.patterns),
            ("actions", quota.actions),
            ("resources", quota.resources.patterns),
            ("objects", quota.objects.patterns),
        )
        if not value
    ]
    if empty:
        return [finding("quota-no-effect", f"counts nothing: empty {', '.join(empty)} list(s)")]
    out: list[Finding] = []
    for k, pattern in enumerate(quota.resources.patterns):
        if not any(match_one(pattern, name, "name") for name in known_resources):
            out.append(
                finding(
                    "quota-unknown-resource",
                    f"resource pattern {pattern!r} matches no configured resource",
                    f"quotas[{quota.index}].resources[{k}]",
                )
            )
    if quota.runs is not None and "run" not in quota.actions:
        out.append(finding("quota-no-effect", "runs never counts: run starts are 'run' requests"))
    if not any(_reaches(rule, quota) for rule in rules):
        out.append(finding("quota-unreachable", "no allow rule reaches it: it would never count"))
    return out


def _same_upstream(url: str) -> str:
    return url.strip().lower().rstrip("/")


def _quota_aliases(
    quota: Quota, rules: tuple[Rule, ...], upstreams: Mapping[str, str]
) -> list[Finding]:
    """Resources of an upstream the quota counts under another name, that an allow rule
    opens to the quota's principals while the quota does not count them."""
    counted = {name for name in upstreams if quota.resources(name)}
    targets = {_same_upstream(upstreams[name]) for name in counted}
    out: list[Finding] = []
    for name in sorted(upstreams):
        if name in counted or _same_upstream(upstreams[name]) not in targets:
            continue
        actions = quota.actions if quota.sessions is None else frozenset(ACTIONS)
        opened = any(
            rule.effect == "allow"
            and not _empty(rule)
            and rule.resources(name)
            and _lists_meet(rule.principals.patterns, quota.principals.patterns)
            and ("*" in rule.actions or bool(set(rule.actions) & actions))
            for rule in rules
        )
        if opened:
            url = _same_upstream(upstreams[name])
            same = sorted(n for n in counted if _same_upstream(upstreams[n]) == url)
            out.append(
                Finding(
                    "warning",
                    quota.id,
                    quota.source,
                    f"resource {name!r} reaches the same upstream as {', '.join(same)} but "
                    "this quota does not count it: a DAG could go on through it",
                    "quota-alias",
                    f"quotas[{quota.index}].resources",
                )
            )
    return out


def _shadowing(rule: Rule, rules: tuple[Rule, ...]) -> list[Finding]:
    for other in rules:
        if other is rule or _empty(other):
            continue
        if other.effect == "deny" and not other.conditional and _covers(other, rule):
            return [
                _finding(
                    "warning",
                    rule,
                    "shadowed",
                    f"never allows anything: deny rule {other.id} "
                    f"({PurePath(other.source).name}) covers it",
                )
            ]
    for other in rules:
        if other is rule or other.effect != "allow" or _empty(other):
            continue
        if other.conditional and not _same_conditions(other, rule):
            continue  # a conditional allow does not make an unconditional one redundant
        if not _covers(other, rule):
            continue
        mutual = _covers(rule, other) and _same_conditions(other, rule)
        if mutual and rules.index(rule) < rules.index(other):
            continue  # report only the later of two identical rules
        what = "duplicates" if mutual else "is covered by"
        return [
            _finding(
                "warning",
                rule,
                "shadowed",
                f"{what} allow rule {other.id} ({PurePath(other.source).name})",
            )
        ]
    return []


# -- lockgate config check --------------------------------------------------------------------
def policy_problems(
    patterns: Sequence[str], files: Sequence[Path], known_resources: set[str]
) -> list[str]:
    """Why the gateway would not load these policy files as they are; [] when it would."""
    if patterns and not files:
        return [f"policies {list(patterns)}: no file matches, the gateway would deny everything"]
    problems: list[str] = []
    texts: list[tuple[str, str]] = []
    for path in files:
        try:
            text = read_text(Path(path))
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        try:
            parse_policy_texts([(str(path), text)], known_resources)
        except ConfigError as exc:
            problems.extend(str(exc).splitlines())  # the loader names file:line already
            continue
        texts.append((str(path), text))
    if problems:
        return problems
    try:  # across files: rule ids must be unique
        policy_set = parse_policy_texts(texts, known_resources)
    except ConfigError as exc:
        return [str(exc)]
    by_file = dict(texts)
    problems = [
        _located_finding(f, by_file.get(f.file or ""))
        for f in lint(policy_set, known_resources)
        if f.kind == "unknown-resource"
    ]
    # a broken shadow file never stops enforcement, but it watches nothing: said here
    shadow_error = load_policy_texts(texts, known_resources).shadow_error
    if shadow_error:
        problems += [f"shadow policy not loaded: {line}" for line in shadow_error.splitlines()]
    return problems


def _located_finding(f: Finding, text: str | None) -> str:
    """``file:line: field (rule x): message`` for a lint finding (the line when found)."""
    parts = re.findall(r"(\w+)|\[(\d+)\]", f.field or "")
    loc = tuple(int(index) if index else name for name, index in parts)
    where = located(f.file or "", loc, yaml_lines(text) if text is not None else None)
    return f"{where}: {f.field} (rule {f.rule}): {f.message}"
