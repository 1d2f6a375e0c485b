"""How one PostgreSQL session judges a SQL text: classify (cached), re-check the token, decide.

Strategy: a text is classified once per (resource, text, name-scope key) and the result
(:class:`Judged`: every statement with the action, object and audit detail of its record,
and every access policy must allow) is kept in the engine's shared
:class:`~.context.DecisionCache`; the classification depends on nothing else, so sessions
share it. What *is* per principal is asked anew for every statement: the token
(``verifier.verify``: expiry and revocation, in memory) and policy (its own cache makes that
cheap), so a revocation, a policy reload or a time window applies to the very next
statement. The policy requests of a judged text are built once per session and claims.

Not cached: texts the classifier cannot place (rare, and a name that is unknown now may be
known after the next PREPARE or CREATE) and texts whose placing read a prepared statement's
text (``EXECUTE name``: the scope key names the prepared texts, but the classifier's own
view may differ; judging them again costs one parse).

A text is allowed only if policy allows every access of every statement (a multi-statement
query is refused whole). Statements that need no grant (``BEGIN``, ``SET application_name``,
``SELECT 1``) are admitted under the built-in rule ``builtin:no-object`` with action
``session``; reads of ``pg_catalog`` and ``information_schema`` (drivers' type lookups,
reflection) under ``builtin:catalog-read`` unless a policy rule denies them explicitly;
every one is still audited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lockgate.errors import AuthenticationError
from lockgate.gateway.engine import policy_request

from .classified import Access, Classified, Statement, Unplaceable
from .scope import NameScope

if TYPE_CHECKING:
    from lockgate.config import PostgresResource
    from lockgate.identity import Claims
    from lockgate.policy import Request

    from .context import EngineContext

#: Characters of a statement's (redacted) text kept in its audit records.
MAX_AUDIT_TEXT = 2048
#: Action and rule of a statement that touches no object (BEGIN, SHOW, SELECT 1 ...).
NO_OBJECT_ACTION = "session"
NO_OBJECT_RULE = "builtin:no-object"
#: Reads of the system catalogs (what drivers do to learn types, SQLAlchemy to reflect) are
#: every principal's unless a policy rule denies them explicitly; the server's own
#: privileges still apply (pg_authid, pg_statistic stay the superuser's).
CATALOG_SCHEMAS = ("pg_catalog.", "information_schema.")
CATALOG_RULE = "builtin:catalog-read"
#: Catalog relations that are not metadata but data: column values (pg_stats,
#: pg_statistic*), other sessions' statements and addresses (pg_stat_activity and every
#: pg_stat*/pg_statio* view), sequence values, settings, user mapping and subscription
#: passwords, server files. Reading one needs a grant.
NOT_BUILTIN_PREFIXES = ("pg_catalog.pg_stat",)
NOT_BUILTIN = frozenset(
    f"pg_catalog.{name}"
    for name in (
        "pg_authid", "pg_shadow", "pg_user_mapping", "pg_user_mappings", "pg_largeobject",
        "pg_largeobject_metadata", "pg_file_settings", "pg_hba_file_rules",
        "pg_ident_file_mappings", "pg_prepared_xacts", "pg_locks", "pg_config",
        "pg_backend_memory_contexts", "pg_shmem_allocations", "pg_replication_slots",
        "pg_replication_origin_status", "pg_subscription", "pg_policy", "pg_policies",
        "pg_seclabel", "pg_seclabels", "pg_shseclabel", "pg_db_role_setting",
        "pg_sequences", "pg_settings", "pg_foreign_server",
    )
) | {
    "information_schema.user_mapping_options", "information_schema._pg_user_mappings",
    "information_schema.foreign_server_options", "information_schema._pg_foreign_servers",
    # PUBLIC has no SELECT on these (the server refuses them to a role granted nothing)
    "information_schema._pg_foreign_data_wrappers", "information_schema._pg_foreign_tables",
    "information_schema._pg_foreign_table_columns", "information_schema.sql_parts",
    "information_schema.transforms",
}  # fmt: skip
#: Texts at least this long are classified on a worker thread by :meth:`Judge.judged_async`.
THREAD_TEXT_CHARS = 16 * 1024
#: Judged texts whose policy requests one session keeps built (past it they start over).
MAX_REQUESTS_PER_SESSION = 512

_RANK = {"read": 1, "write": 2, "admin": 3}

Classifier = Callable[[str, NameScope], Classified]


class KeyedScope(NameScope, Protocol):
    """A name scope that can say what classification under it depends on."""

    def key(self) -> tuple[object, ...]: ...


@dataclass(frozen=True, slots=True)
class StatementRecord:
    """What one statement puts in its audit records."""

    statement: Statement
    action: str  # the highest action of its accesses (``session`` without any)
    obj: str  # the object of its first access with that action ("" without any)
    detail: Mapping[str, Any]  # statement text (redacted, capped), command, objects


@dataclass(frozen=True, slots=True, eq=False)
class Judged:
    """A classified text: its statements' records and every access policy must allow."""

    records: tuple[StatementRecord, ...]
    accesses: tuple[Access, ...]  # deduplicated, in order
    copy: bool = False  # a COPY among the statements: the client may send rows
    catalog_sensitive: bool = False  # see Classified.catalog_sensitive

    @classmethod
    def of(cls, classified: Classified) -> Judged:
        statements = classified.statements
        records = tuple(statement_record(s) for s in statements)
        accesses = tuple(dict.fromkeys(a for s in statements for a in s.accesses))
        copy = any(s.command == "COPY" for s in statements)
        return cls(records, accesses, copy, classified.catalog_sensitive)


def statement_record(statement: Statement) -> StatementRecord:
    accesses = statement.accesses
    detail: dict[str, Any] = {
        "statement": audit_text(statement.text),
        "command": statement.command,
    }
    if not accesses:
        return StatementRecord(statement, NO_OBJECT_ACTION, "", detail)
    top = max(accesses, key=lambda a: _RANK.get(a.action, 3))
    objects = list(dict.fromkeys(a.obj for a in accesses))
    if len(objects) > 1:
        detail["objects"] = objects
    return StatementRecord(statement, top.action, top.obj, detail)


def _catalog_read(access: Access) -> bool:
    obj = access.obj
    return (
        access.action == "read"
        and obj.startswith(CATALOG_SCHEMAS)
        and not obj.startswith(NOT_BUILTIN_PREFIXES)
        and obj not in NOT_BUILTIN
    )


def audit_text(text: str) -> str:
    """A statement's text as records keep it (already redacted by the classifier)."""
    return text if len(text) <= MAX_AUDIT_TEXT else text[:MAX_AUDIT_TEXT] + "…"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the gateway does not run a text, and how to tell the client and the audit."""

    sqlstate: str
    message: str  # for the client's ErrorResponse
    reason: str  # slug or policy explanation, for the record
    action: str | None = None
    obj: str | None = None
    rule: str | None = None
    event: str = "denied"  # or "auth_failed" (token no longer valid)
    close: bool = False  # end the session after telling the client
    detail: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """A text policy allows, with the rule (and reason) that allowed each access.

    ``rule`` / ``reason`` are those of the first statement's own object, so a record that
    names an object names the rule that allowed *that* object; :meth:`rule_for` and
    :meth:`detail_for` give them per statement (the detail lists every object's rule when a
    statement touches several).
    """

    judged: Judged
    rule: str | None
    reason: str | None
    decisions: Mapping[Access, tuple[str | None, str | None]] = field(default_factory=dict)

    def rule_for(self, record: StatementRecord) -> tuple[str | None, str | None]:
        """The rule and reason that allowed ``record``'s own action on its object."""
        if not record.obj:
            return NO_OBJECT_RULE, None
        return self.decisions.get(Access(record.action, record.obj), (self.rule, self.reason))

    def detail_for(self, record: StatementRecord) -> Mapping[str, Any]:
        """``record``'s detail, with the rule of each object when it names several."""
        if "objects" not in record.detail:
            return record.detail
        rules = {
            f"{a.action} {a.obj}": self.decisions.get(a, (None, None))[0]
            for a in record.statement.accesses
        }
        return {**record.detail, "rules": rules}


class Judge:
    """One session's judge: token re-check, cached classification, policy decisions."""

    __slots__ = ("_classify", "_requests", "claims", "ctx", "resource", "token")

    def __init__(
        self,
        claims: Claims,
        token: str,
        resource: PostgresResource,
        ctx: EngineContext,
        classifier: Classifier | None = None,
    ) -> None:
        self.claims = claims
        self.token = token
        self.resource = resource
        self.ctx = ctx
        if classifier is None:
            from .classify import classify  # the parser loads with the first session

            classifier = classify
        self._classify: Classifier = classifier
        self._requests: dict[Judged, tuple[Claims, list[Request]]] = {}

    # -- the token ----------------------------------------------------------------------------
    def check_token(self) -> Refusal | None:
        """Verify the session's token again (in memory); a refusal ends the session."""
        try:
            self.claims = self.ctx.verifier.verify(self.token, self.resource.name)
        except AuthenticationError as exc:
            reason = str(getattr(exc, "reason", "invalid"))
            return Refusal(
                "42501",
                f"Lockgate token no longer valid ({reason}) for {self.claims.sub}; "
                "reconnect with a fresh token",
                reason,
                event="auth_failed",
                close=True,
            )
        return None

    # -- classification -----------------------------------------------------------------------
    def judged(self, text: str, scope: KeyedScope) -> Judged | Unplaceable:
        """The classification of ``text`` under ``scope``, from the shared cache if there."""
        key = self._key(text, scope)
        hit = self.ctx.decisions.get(key)
        if isinstance(hit, Judged):
            return hit
        return self._store(key, self._classified(text, scope))

    async def judged_async(self, text: str, scope: KeyedScope) -> Judged | Unplaceable:
        """:meth:`judged`, with a long text classified on a worker thread.

        Classifying a long text takes up to some hundreds of milliseconds (below the
        classifier's own size limits): on the event loop that would stall every session.
        The session's scope may move meanwhile (an answer of the server applied): a result
        is kept only if the scope's key is the one it started under, else classified again
        (at last on the loop, where nothing moves).
        """
        if len(text) < THREAD_TEXT_CHARS:
            return self.judged(text, scope)
        key = self._key(text, scope)
        hit = self.ctx.decisions.get(key)
        if isinstance(hit, Judged):
            return hit
        for _ in range(2):
            try:
                result = await asyncio.to_thread(self._classified, text, scope)
            except RuntimeError:  # the scope changed under the thread's feet
                result = None
            now = self._key(text, scope)
            if result is not None and now == key:
                return self._store(key, result)
            key = now
        return self.judged(text, scope)

    def _key(self, text: str, scope: KeyedScope) -> tuple[object, ...]:
        return ("pg-flow", self.resource.name, text, scope.key())

    def _classified(self, text: str, scope: NameScope) -> Classified | Unplaceable:
        try:
            return self._classify(text, scope)
        except Unplaceable as exc:
            return exc

    def _store(
        self, key: tuple[object, ...], classified: Classified | Unplaceable
    ) -> Judged | Unplaceable:
        if isinstance(classified, Unplaceable):
            return classified
        judged = Judged.of(classified)
        if not any(s.prepared_name for s in classified.statements):
            self.ctx.decisions.put(key, judged)
        return judged

    # -- policy -------------------------------------------------------------------------------
    def decide(self, judged: Judged) -> Admission | Refusal:
        """Ask policy for every access of ``judged``; the first denial refuses it whole."""
        if not judged.accesses:
            return Admission(judged, NO_OBJECT_RULE, None)
        policy = self.ctx.policy.current
        decisions: dict[Access, tuple[str | None, str | None]] = {}
        for access, request in zip(judged.accesses, self._requests_for(judged), strict=True):
            decision = policy.decide(request)
            if decision.allowed:
                decisions[access] = (decision.rule, decision.reason)
            elif decision.rule is None and _catalog_read(access):
                decisions[access] = (CATALOG_RULE, None)
            else:
                return self.denial(access.action, access.obj, decision.explain(), decision.rule)
        first = judged.records[0] if judged.records else None
        rule: str | None = CATALOG_RULE
        reason: str | None = None
        if first is not None and first.obj:
            rule, reason = decisions.get(Access(first.action, first.obj), (rule, reason))
        elif first is not None:
            rule = NO_OBJECT_RULE
        return Admission(judged, rule, reason, decisions)

    def denial(
        self, action: str, obj: str, reason: str, rule: str | None = None, sqlstate: str = "42501"
    ) -> Refusal:
        """A policy-style refusal naming principal, action, object and reason."""
        return Refusal(
            sqlstate,
            f"Lockgate denied {action} on {obj} in {self.resource.name} for "
            f"{self.claims.sub}: {reason}",
            reason,
            action=action,
            obj=obj,
            rule=rule,
        )

    def unplaceable(self, exc: Unplaceable) -> Refusal:
        """The refusal of a text the classifier cannot place (audited as denied)."""
        return Refusal(
            "42501",
            f"Lockgate refused a statement in {self.resource.name} for {self.claims.sub}: {exc}",
            exc.reason,
        )

    def _requests_for(self, judged: Judged) -> list[Request]:
        known = self._requests.get(judged)
        claims = self.claims
        if known is not None and known[0] is claims:
            return known[1]
        make, name = self.ctx.make_request, self.resource.name
        requests = [policy_request(make, claims, a.action, name, a.obj) for a in judged.accesses]
        if len(self._requests) >= MAX_REQUESTS_PER_SESSION:
            self._requests.clear()
        self._requests[judged] = (claims, requests)
        return requests


__all__ = [
    "MAX_AUDIT_TEXT",
    "NO_OBJECT_ACTION",
    "NO_OBJECT_RULE",
    "THREAD_TEXT_CHARS",
    "Admission",
    "Classifier",
    "Judge",
    "Judged",
    "KeyedScope",
    "Refusal",
    "StatementRecord",
    "audit_text",
]
