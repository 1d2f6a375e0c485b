"""What a CQL request does: its statement text and policy targets (:class:`Plan`).

Strategy: QUERY and PREPARE are classified from their text against the keyspace the upstream
will run them under (the session holds frames behind a USE until its answer, so that keyspace
is exact); EXECUTE maps the prepared id back to the text and keyspace that produced it
(:class:`PreparedStatements`, filled from PREPARED results) and classifies that; BATCH
classifies every child. A prepared id the gateway has not seen (restart, eviction, a
PREPARE made on another replica) yields ``plan.unprepared``: the engine answers Unprepared
(0x2500) with that id, and the driver re-prepares through the gateway and retries. An id
the gateway has seen for two statements that are judged differently yields
``plan.ambiguous``: the engine refuses it rather than guess which one the upstream runs.
Classification is cached per (text, keyspace) for texts up to 4 KiB (:func:`classify_statement`).

Rules: targets that are reads of driver metadata tables (``system.local``, ``system.peers``,
``system_schema.*`` ...) or ``USE`` need no policy decision; they are allowed to every
authenticated principal by a built-in rule (:attr:`Plan.builtin_rule`) and audited like any
other statement. Every other target needs a policy decision. The statement text kept for
audit is capped and has its password literals redacted; bound values are never kept.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

from lockgate import _log

from . import codec
from .classify import ANY_OBJECT, Target, classify, is_system_metadata_read, redact_secrets
from .rewrite import rewrite_kind

log = _log.get("gateway.cql")

MAX_AUDIT_TEXT = 2048
DEFAULT_PREPARED_ENTRIES = 20_000
#: Memory the registry's texts may hold in all. A text may be as long as a frame (16 MiB by
#: default), so a count alone let a reader of one table pin 20,000 frames' worth of texts;
#: Cassandra bounds its own prepared cache by size too.
DEFAULT_PREPARED_BYTES = 64 * 1024 * 1024
#: Statement texts up to this length have their classification cached (drivers send the same
#: prepared/parameterised texts over and over; tokenizing each time was the hot path's cost).
CACHE_TEXT_MAX = 4096
CACHE_ENTRIES = 4096
#: Rules named in the audit for what every authenticated principal may do.
BUILTIN_USE = "builtin:use"
BUILTIN_DRIVER_METADATA = "builtin:driver-metadata"
#: Statement kinds a BATCH may hold (Parser.g ``batchStatementObjective``).
_BATCHABLE = frozenset({"insert", "update", "delete"})


@lru_cache(maxsize=CACHE_ENTRIES)
def _classify_cached(text: str, keyspace: str | None) -> tuple[Target, ...]:
    return tuple(classify(text, keyspace))


def classify_statement(text: str, keyspace: str | None) -> list[Target]:
    """``classify`` with a bounded cache; classification is a pure function of its inputs."""
    if len(text) > CACHE_TEXT_MAX:
        return classify(text, keyspace)
    return list(_classify_cached(text, keyspace))


@lru_cache(maxsize=CACHE_ENTRIES)
def _audit_text_cached(text: str) -> str:
    return audit_text(text)


def audit_text(text: str) -> str:
    """``text`` as it may appear in an audit record or a log line: passwords redacted, capped."""
    safe = redact_secrets(text)
    return safe if len(safe) <= MAX_AUDIT_TEXT else safe[:MAX_AUDIT_TEXT] + "…"


@dataclass(slots=True)
class Plan:
    """One request's statement(s) and what they touch."""

    op: str  # query | prepare | execute | batch
    text: str
    targets: list[Target] = field(default_factory=list)
    keyspace: str | None = None  # the keyspace the upstream runs the request under
    unprepared: bytes | None = None  # an EXECUTE/BATCH child id unknown to the gateway
    ambiguous: bytes | None = None  # an EXECUTE/BATCH child id known for two statements

    @property
    def checked(self) -> list[Target]:
        """Targets that need a policy decision."""
        return [t for t in self.targets if t.action != "use" and not is_system_metadata_read(t)]

    @property
    def builtin_rule(self) -> str:
        """The built-in allowance of a plan that needs no policy decision (:attr:`checked`
        is empty): ``builtin:use`` for a USE, ``builtin:driver-metadata`` for metadata reads."""
        if any(t.action == "use" for t in self.targets):
            return BUILTIN_USE
        return BUILTIN_DRIVER_METADATA

    @property
    def changes_keyspace(self) -> bool:
        """True when running this request may change the connection's keyspace: a USE, or a
        statement the classifier could not place (it is refused unless allowed on ``*``)."""
        if self.op not in ("query", "execute"):
            return False  # PREPARE never switches; BATCH holds only data changes
        return any(t.action == "use" or t.object == ANY_OBJECT for t in self.targets)

    @property
    def rewrite(self) -> str | None:
        """The topology rewrite a result of this request needs (system.local/peers reads)."""
        if self.op == "batch":
            return None
        return rewrite_kind([t.object for t in self.targets if t.action == "read"])

    @property
    def audit_text(self) -> str:
        if len(self.text) <= CACHE_TEXT_MAX:
            return _audit_text_cached(self.text)
        return audit_text(self.text)


@dataclass(frozen=True, slots=True)
class PreparedEntry:
    """What produced a prepared id: its text and the keyspace the upstream prepared it under.
    ``ambiguous``: the id was also seen for a statement judged differently; never executed."""

    text: str
    keyspace: str | None
    ambiguous: bool = False


class PreparedStatements:
    """Prepared id → :class:`PreparedEntry` per resource, an LRU shared by all connections,
    bounded by entries and by the memory of their texts (the newest entry always stays).

    Cassandra's prepared ids are per node and not per connection (the driver prepares on one
    connection and executes on any), so the gateway keeps one map per process. An entry is
    never overwritten by a different statement: a second (text, keyspace) for a known id
    that classifies differently makes the id ambiguous until it is evicted, so no connection,
    principal or keyspace can make an id stand for a statement other than the one it runs.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_PREPARED_ENTRIES,
        max_bytes: int = DEFAULT_PREPARED_BYTES,
    ) -> None:
        self._max = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0  # sys.getsizeof of the texts held
        self._entries: OrderedDict[tuple[str, bytes], PreparedEntry] = OrderedDict()

    def remember(self, resource: str, query_id: bytes, text: str, keyspace: str | None) -> bool:
        """Record what the upstream prepared under ``query_id``; False when the id is (now)
        ambiguous."""
        key = (resource, query_id)
        known = self._entries.get(key)
        if known is not None and not _same_statement(known, text, keyspace):
            if not known.ambiguous:
                log.warning(
                    "cql prepared id seen for two different statements; refusing it",
                    extra={
                        "fields": {
                            "resource": resource,
                            "query_id": query_id.hex(),
                            "known": audit_text(known.text),
                            "known_ks": known.keyspace,
                            "new": audit_text(text),
                            "new_ks": keyspace,
                        }
                    },
                )
                self._entries[key] = PreparedEntry(known.text, known.keyspace, ambiguous=True)
            self._entries.move_to_end(key)
            return False
        if known is None:
            self._entries[key] = PreparedEntry(text, keyspace)
            self._bytes += sys.getsizeof(text)
        self._entries.move_to_end(key)
        while len(self._entries) > 1 and (
            len(self._entries) > self._max or self._bytes > self._max_bytes
        ):
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= sys.getsizeof(evicted.text)
        return True

    def lookup(self, resource: str, query_id: bytes) -> PreparedEntry | None:
        key = (resource, query_id)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def __len__(self) -> int:
        return len(self._entries)


def _same_statement(known: PreparedEntry, text: str, keyspace: str | None) -> bool:
    """One id, one judgement: same text, and the same targets under either keyspace (a
    qualified statement prepared under two keyspaces is still one statement)."""
    if known.ambiguous or known.text != text:
        return False
    return known.keyspace == keyspace or classify_statement(
        text, known.keyspace
    ) == classify_statement(text, keyspace)


def tables_outside_plan(plan: Plan, prepared: codec.Prepared) -> list[str]:
    """Tables a PREPARED result's metadata names that the plan's read/write targets do not.

    Bind and result columns carry the keyspace and table the upstream resolved the statement
    against; for a read or a write they must be among the objects it was judged on, or the
    upstream prepared something other than what policy allowed. Statements without read or
    write targets (DDL, roles, USE) are not checked: their metadata names no judged table.
    """
    objects = {t.object for t in plan.targets if t.action in ("read", "write")}
    if not objects or ANY_OBJECT in objects:
        return []
    columns = [*prepared.metadata.columns, *(prepared.result_metadata.columns or ())]
    named = {f"{c.keyspace}.{c.table}" for c in columns}
    return sorted(named - objects)


def plan_for(
    event: codec.Event, resource: str, keyspace: str | None, prepared: PreparedStatements
) -> Plan | None:
    """The plan of a statement-bearing request, or None for other requests."""
    if isinstance(event, codec.Query):
        return Plan("query", event.query, classify_statement(event.query, keyspace), keyspace)
    if isinstance(event, codec.Prepare):
        return Plan("prepare", event.query, classify_statement(event.query, keyspace), keyspace)
    if isinstance(event, codec.Execute):
        return execute_plan(prepared.lookup(resource, event.query_id), event.query_id, keyspace)
    if isinstance(event, codec.Batch):
        return _batch_plan(event, resource, keyspace, prepared)
    return None


def execute_plan(found: PreparedEntry | None, query_id: bytes, keyspace: str | None) -> Plan:
    """The plan of an EXECUTE of ``query_id``, whose registry entry is ``found``."""
    if found is None:
        return Plan("execute", "", [], keyspace, unprepared=query_id)
    if found.ambiguous:
        return Plan("execute", found.text, [], keyspace, ambiguous=query_id)
    return Plan(
        "execute", found.text, classify_statement(found.text, found.keyspace), found.keyspace
    )


def _batch_plan(
    event: codec.Batch, resource: str, keyspace: str | None, prepared: PreparedStatements
) -> Plan:
    texts: list[str] = []
    targets: list[Target] = []
    for child in event.statements:
        if child.kind == 0 and child.query is not None:
            text, ks = child.query, keyspace
        else:
            query_id = child.query_id or b""
            found = prepared.lookup(resource, query_id)
            if found is None:
                return Plan("batch", "", [], keyspace, unprepared=query_id)
            if found.ambiguous:
                return Plan("batch", found.text, [], keyspace, ambiguous=query_id)
            text, ks = found.text, found.keyspace
        texts.append(text)
        found_targets = classify_statement(text, ks)
        # Only data changes may be batched (a conditional one also reads its table);
        # anything else (a SELECT, DDL) fails closed.
        if any(t.statement_kind not in _BATCHABLE for t in found_targets):
            found_targets = [
                t if t.statement_kind in _BATCHABLE else _unknown(t) for t in found_targets
            ]
        targets.extend(found_targets)
    if not targets:
        targets = [Target("admin", "*", "unknown")]
    return Plan("batch", "; ".join(texts), targets, keyspace)


def _unknown(t: Target) -> Target:
    return Target("admin", "*", f"batched {t.statement_kind}")
