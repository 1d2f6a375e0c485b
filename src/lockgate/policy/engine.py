"""Decisions: :class:`Request` in, :class:`Decision` out, deny by default.

Order of evaluation for one request:

1. Rules are indexed by action at build time ("*" rules sit in every bucket), so only rules
   that name the request's action are looked at.
2. Pattern matching (principal, resource, object) is the costly part; its result (which deny
   and allow rules match) is cached in a bounded LRU keyed by
   ``(principal, action, resource, object)``. Patterns never change inside a
   :class:`PolicySet` (a reload builds a new set), so the cache never goes stale.
3. If no matched rule has conditions, the final decision is cached too and returned as is.
   Otherwise conditions are evaluated per request (they depend on the clock and the token).
4. A matching deny whose conditions hold wins over everything. Else the first matching allow
   whose conditions hold allows. Else deny, explaining either the condition that failed on the
   first matching allow, or that no rule allows the request.

Unknown condition inputs fail closed: a request without ``token_ttl`` does not satisfy an
allow rule's ``max_token_ttl``, one without ``map_index`` no allow's ``map_index`` /
``mapped`` (and it lets every such deny apply). A deny's conditions are ``time_window`` and
the map-index ones (the schema refuses ``max_token_ttl`` on a deny: a longer-lived token
would escape it). A decision that a map-index condition made says so in its explanation
(``allowed by rule x (team.yaml): map_index 3 in 0-9``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import PurePath

from lockgate.policy.globs import Matcher
from lockgate.policy.mapindex import MapCondition
from lockgate.policy.model import ACTIONS, QuotaScope, QuotaSpec, RuleSpec, parse_clock

DEFAULT_CACHE_SIZE = 65536
# Per rule with a map-index condition: explanations kept per index (rebuilt past this many).
_MAP_DECISIONS_KEPT = 1024


@dataclass(frozen=True, slots=True)
class Request:
    principal: str  # airflow:<deployment>/<dag_id>/<task_id>
    action: str  # read | write | admin | run
    resource: str
    object: str = ""
    token_ttl: float | None = None  # lifetime of the caller's token in seconds
    now: datetime | float | None = None  # UTC datetime or epoch seconds; None: the current time
    map_index: int | None = None  # the task's map index (-1: not mapped); None: unknown


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str | None  # id of the rule that decided; None when deny-by-default decided
    source: str | None  # file the rule came from
    reason: str  # the whole human explanation

    def explain(self) -> str:
        return self.reason


def target_text(resource: str, obj: str) -> str:
    """``orders-api`` + ``/orders/1`` -> ``orders-api/orders/1`` (inverse of the CLI target)."""
    if not obj:
        return resource
    return resource + obj if obj.startswith("/") else f"{resource}/{obj}"


def _source_name(source: str) -> str:
    return PurePath(source).name or source


class Rule:
    """One compiled rule: matchers built once, decisions for it pre-made."""

    __slots__ = (
        "_map_decisions",
        "actions",
        "decision",
        "description",
        "effect",
        "id",
        "index",
        "map_condition",
        "max_token_ttl",
        "objects",
        "principals",
        "resources",
        "source",
        "window",
    )

    def __init__(self, spec: RuleSpec, source: str, index: int) -> None:
        self.id = spec.id
        self.effect = spec.effect
        self.source = source
        self.index = index
        self.description = spec.description
        self.principals = Matcher(spec.principals, "name")
        self.resources = Matcher(spec.resources, "name")
        self.objects = Matcher(spec.objects, "object")
        self.actions: frozenset[str] = frozenset(spec.actions)
        self.max_token_ttl = spec.conditions.max_token_ttl
        tw = spec.conditions.time_window
        self.window: tuple[int, int, str] | None = (
            (parse_clock(tw.start), parse_clock(tw.end), f"{tw.start}-{tw.end} UTC") if tw else None
        )
        self.map_condition = MapCondition.of(spec.conditions.map_index, spec.conditions.mapped)
        verb = "allowed" if self.effect == "allow" else "denied"
        self.decision = Decision(
            self.effect == "allow",
            self.id,
            source,
            f"{verb} by rule {self.id} ({_source_name(source)})",
        )
        self._map_decisions: dict[int | None, Decision] = {}

    @property
    def conditional(self) -> bool:
        return (
            self.max_token_ttl is not None
            or self.window is not None
            or self.map_condition is not None
        )

    def decision_for(self, map_index: int | None) -> Decision:
        """This rule's decision; one a map-index condition made names the index that met it."""
        cond = self.map_condition
        if cond is None:
            return self.decision
        made = self._map_decisions.get(map_index)
        if made is None:
            if len(self._map_decisions) >= _MAP_DECISIONS_KEPT:
                self._map_decisions.clear()
            base = self.decision
            made = Decision(
                base.allowed, base.rule, base.source, f"{base.reason}: {cond.why_held(map_index)}"
            )
            self._map_decisions[map_index] = made
        return made

    def map_excludes(self, map_index: int | None) -> bool:
        """The map-index condition is known not to hold (an unknown index excludes nothing)."""
        cond = self.map_condition
        return cond is not None and map_index is not None and not cond.holds(map_index)

    @property
    def all_actions(self) -> bool:
        return "*" in self.actions or self.actions.issuperset(ACTIONS)

    def matches(self, principal: str, resource: str, obj: str) -> bool:
        # Resource first: it is the most selective and usually an exact-set hit or miss.
        return self.resources(resource) and self.principals(principal) and self.objects(obj)

    def failed_condition(
        self, token_ttl: float | None, now: datetime | float | None, map_index: int | None = None
    ) -> str | None:
        """Describe the first condition that does not hold (unknown inputs do not hold)."""
        if self.max_token_ttl is not None and (token_ttl is None or token_ttl > self.max_token_ttl):
            lives = "unknown" if token_ttl is None else f"{token_ttl:g}s"
            return f"max_token_ttl {self.max_token_ttl}s does not hold (token TTL {lives})"
        if self.window is not None:
            start, end, text = self.window
            if not in_window(now, start, end):
                return f"time_window {text} does not hold"
        cond = self.map_condition
        if cond is not None and not cond.holds(map_index):
            return cond.failure(map_index)
        return None

    def deny_applies(self, now: datetime | float | None, map_index: int | None = None) -> bool:
        """A deny's conditions say *when* it denies (a freeze window, some map indexes); an
        unknown map index lets it apply."""
        if self.window is not None and not in_window(now, self.window[0], self.window[1]):
            return False
        return not self.map_excludes(map_index)

    def __repr__(self) -> str:
        return f"<Rule {self.id} {self.effect} from {self.source}>"


class Quota:
    """One compiled quota of a policy file (its budgets live in :mod:`lockgate.quotas`)."""

    __slots__ = (
        "actions",
        "burst",
        "concurrency",
        "id",
        "index",
        "max_delay",
        "objects",
        "per",
        "principals",
        "rate",
        "resources",
        "run_max_age",
        "runs",
        "sessions",
        "source",
    )

    def __init__(self, spec: QuotaSpec, source: str, index: int) -> None:
        self.id = spec.id
        self.source = source
        self.index = index
        self.principals = Matcher(spec.principals, "name")
        self.resources = Matcher(spec.resources, "name")
        self.objects = Matcher(spec.objects, "object")
        self.actions: frozenset[str] = (
            frozenset(ACTIONS) if "*" in spec.actions else frozenset(spec.actions)
        )
        self.rate: float | None = spec.rate
        self.burst: float = spec.bucket_size
        self.concurrency: int | None = spec.concurrency
        self.sessions: int | None = spec.sessions
        self.runs: int | None = spec.runs
        self.run_max_age: int = spec.run_lifetime
        self.per: QuotaScope = spec.per
        self.max_delay: float = spec.max_delay

    def applies_to(self, principal: str, resource: str) -> bool:
        return self.resources(resource) and self.principals(principal)

    def __repr__(self) -> str:
        return f"<Quota {self.id} from {self.source}>"


def utc(now: datetime | float | None) -> datetime:
    """A UTC datetime from a datetime (naive means UTC), epoch seconds, or None (now)."""
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, int | float):
        return datetime.fromtimestamp(now, UTC)
    return now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)


def in_window(now: datetime | float | None, start: int, end: int) -> bool:
    """Half-open UTC window [start, end) in seconds after midnight; wraps if start > end."""
    t = utc(now)
    s = t.hour * 3600 + t.minute * 60 + t.second
    if start < end:
        return start <= s < end
    return s >= start or s < end


class _Match:
    """Cached pattern-match result for one (principal, action, resource, object)."""

    __slots__ = ("allows", "denies", "none", "static", "timed")

    def __init__(self, denies: tuple[Rule, ...], allows: tuple[Rule, ...], none: Decision) -> None:
        self.denies = denies
        self.allows = allows
        self.none = none
        self.static: Decision | None = None
        # Only a time window reads the clock: without one a decision builds no datetime.
        self.timed = any(r.window is not None for r in (*denies, *allows))
        if not any(r.conditional for r in denies) and not any(r.conditional for r in allows):
            self.static = denies[0].decision if denies else allows[0].decision if allows else none


class PolicySet:
    """An immutable set of compiled rules from one or more files."""

    def __init__(
        self,
        rules: Sequence[Rule],
        sources: Sequence[str] = (),
        cache_size: int = DEFAULT_CACHE_SIZE,
        quotas: Sequence[Quota] = (),
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        #: The files' ``quotas:`` entries, in file order (asked by :mod:`lockgate.quotas`).
        self.quotas: tuple[Quota, ...] = tuple(quotas)
        self.sources: tuple[str, ...] = tuple(sources)
        self._by_id = {r.id: r for r in self.rules}
        self._by_action: dict[str, tuple[Rule, ...]] = {
            a: tuple(r for r in self.rules if a in r.actions or "*" in r.actions) for a in ACTIONS
        }
        self._match = lru_cache(maxsize=cache_size)(self._match_uncached)

    @classmethod
    def empty(cls) -> PolicySet:
        return cls(())

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def rule(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)

    def quotas_for(self, principal: str, resource: str) -> tuple[Quota, ...]:
        """The quotas whose principals and resources match (actions and objects are the
        caller's to filter: they differ per request)."""
        return tuple(q for q in self.quotas if q.applies_to(principal, resource))

    def cache_info(self) -> object:
        return self._match.cache_info()

    # -- per request ---------------------------------------------------------------------------
    def decide(self, req: Request) -> Decision:
        m = self._match(req.principal, req.action, req.resource, req.object)
        if m.static is not None:
            return m.static
        return _evaluate(m, req)

    def decide_uncached(self, req: Request) -> Decision:
        """Same answer as :meth:`decide` without touching the cache (tests, tooling)."""
        m = self._match_uncached(req.principal, req.action, req.resource, req.object)
        return m.static if m.static is not None else _evaluate(m, req)

    def _match_uncached(self, principal: str, action: str, resource: str, obj: str) -> _Match:
        candidates = self._by_action.get(action)
        if candidates is None:
            return _Match((), (), Decision(False, None, None, f"unknown action {action!r}"))
        denies: list[Rule] = []
        allows: list[Rule] = []
        for r in candidates:
            if r.matches(principal, resource, obj):
                (allows if r.effect == "allow" else denies).append(r)
        none = Decision(
            False,
            None,
            None,
            f"no rule allows {principal} to {action} {target_text(resource, obj)}",
        )
        return _Match(tuple(denies), tuple(allows), none)

    # -- at token mint -------------------------------------------------------------------------
    def _mint_rules(
        self, principal: str, resource: str, map_index: int | None
    ) -> tuple[list[Rule], list[Rule]]:
        allows: list[Rule] = []
        total_denies: list[Rule] = []
        for r in self.rules:
            if not r.actions or not r.objects.patterns:
                continue
            if not (r.resources(resource) and r.principals(principal)):
                continue
            if r.effect == "allow":
                if not r.map_excludes(map_index):
                    allows.append(r)
            elif r.all_actions and r.objects.match_all and _total_for(r, map_index):
                total_denies.append(r)
        return allows, total_denies

    def mint_check(self, principal: str, resource: str, map_index: int | None = None) -> Decision:
        """May a token for ``resource`` be minted for ``principal`` at all?

        Allowed if some allow rule could match for some action and object (conditions are
        checked per request, not here), unless an unconditional deny with actions "*" and
        objects "*" covers the pair. Given the task's ``map_index``, allow rules whose
        map-index condition excludes it do not count, and a deny whose only conditions are
        map-index ones that hold for it counts as unconditional.
        """
        allows, total_denies = self._mint_rules(principal, resource, map_index)
        if total_denies:
            return total_denies[0].decision_for(map_index)
        if allows:
            return allows[0].decision
        return Decision(False, None, None, f"no rule allows {principal} to use {resource}")

    def max_ttl(self, principal: str, resource: str, map_index: int | None = None) -> int | None:
        """Smallest ``max_token_ttl`` among allow rules matching the pair (and not excluding
        ``map_index`` when it is given); None if none set."""
        allows, _ = self._mint_rules(principal, resource, map_index)
        ttls = [r.max_token_ttl for r in allows if r.max_token_ttl is not None]
        return min(ttls) if ttls else None


def _total_for(deny: Rule, map_index: int | None) -> bool:
    """A deny that applies whenever this task asks: no window, and no map-index condition
    unless the known ``map_index`` meets it."""
    if deny.window is not None:
        return False
    cond = deny.map_condition
    return cond is None or (map_index is not None and cond.holds(map_index))


def _evaluate(m: _Match, req: Request) -> Decision:
    # one clock reading for every rule of this request, and none when no rule has a window
    now = utc(req.now) if m.timed else None
    map_index = req.map_index
    for r in m.denies:
        if r.deny_applies(now, map_index):
            return r.decision_for(map_index)
    first_failure: str | None = None
    for r in m.allows:
        failed = r.failed_condition(req.token_ttl, now, map_index)
        if failed is None:
            return r.decision_for(map_index)
        if first_failure is None:
            first_failure = f"rule {r.id} matched but its condition {failed}"
    if first_failure is not None:
        return Decision(False, None, None, first_failure)
    return m.none
