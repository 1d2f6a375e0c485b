"""What a CQL request does: its statement text and policy targets (:class:`Plan`).

Strategy: QUERY and PREPARE are classified from their text against the connection's current
keyspace; EXECUTE maps the prepared id back to the text and keyspace it was prepared with
(:class:`PreparedStatements`, filled from PREPARED results) and classifies that; BATCH
classifies every child. A prepared id the gateway has not seen (restart, eviction, a
PREPARE made on another replica) yields ``plan.unprepared``: the engine answers Unprepared
(0x2500) with that id, and the driver re-prepares through the gateway and retries.
Classification is cached per (text, keyspace) for texts up to 4 KiB (:func:`classify_statement`).

Rules: targets that are reads of driver metadata tables (``system.local``, ``system.peers``,
``system_schema.*`` ...) or ``USE`` need no policy decision (``Target`` kinds ``system`` /
``use``); every other target does. The statement text kept for audit is capped; bound
values are never kept.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

from . import codec
from .classify import Target, classify, is_system_metadata_read
from .rewrite import rewrite_kind

MAX_AUDIT_TEXT = 2048
DEFAULT_PREPARED_ENTRIES = 20_000
#: Statement texts up to this length have their classification cached (drivers send the same
#: prepared/parameterised texts over and over; tokenizing each time was the hot path's cost).
CACHE_TEXT_MAX = 4096
CACHE_ENTRIES = 4096


@lru_cache(maxsize=CACHE_ENTRIES)
def _classify_cached(text: str, keyspace: str | None) -> tuple[Target, ...]:
    return tuple(classify(text, keyspace))


def classify_statement(text: str, keyspace: str | None) -> list[Target]:
    """``classify`` with a bounded cache; classification is a pure function of its inputs."""
    if len(text) > CACHE_TEXT_MAX:
        return classify(text, keyspace)
    return list(_classify_cached(text, keyspace))


@dataclass(slots=True)
class Plan:
    """One request's statement(s) and what they touch."""

    op: str  # query | prepare | execute | batch
    text: str
    targets: list[Target] = field(default_factory=list)
    keyspace: str | None = None  # in effect when the request was sent
    unprepared: bytes | None = None  # an EXECUTE/BATCH child id unknown to the gateway

    @property
    def checked(self) -> list[Target]:
        """Targets that need a policy decision."""
        return [t for t in self.targets if t.action != "use" and not is_system_metadata_read(t)]

    @property
    def rewrite(self) -> str | None:
        """The topology rewrite a result of this request needs (system.local/peers reads)."""
        if self.op == "batch":
            return None
        return rewrite_kind([t.object for t in self.targets if t.action == "read"])

    @property
    def audit_text(self) -> str:
        return self.text if len(self.text) <= MAX_AUDIT_TEXT else self.text[:MAX_AUDIT_TEXT] + "…"


class PreparedStatements:
    """Prepared id → (text, keyspace) per resource, a bounded LRU shared by all connections.

    Cassandra's prepared ids are per node and not per connection (the driver prepares on one
    connection and executes on any), so the gateway keeps one map per process.
    """

    def __init__(self, max_entries: int = DEFAULT_PREPARED_ENTRIES) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, bytes], tuple[str, str | None]] = OrderedDict()

    def remember(self, resource: str, query_id: bytes, text: str, keyspace: str | None) -> None:
        key = (resource, query_id)
        self._entries[key] = (text, keyspace)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def lookup(self, resource: str, query_id: bytes) -> tuple[str, str | None] | None:
        key = (resource, query_id)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def __len__(self) -> int:
        return len(self._entries)


def plan_for(
    event: codec.Event, resource: str, keyspace: str | None, prepared: PreparedStatements
) -> Plan | None:
    """The plan of a statement-bearing request, or None for other requests."""
    if isinstance(event, codec.Query):
        return Plan("query", event.query, classify_statement(event.query, keyspace), keyspace)
    if isinstance(event, codec.Prepare):
        return Plan("prepare", event.query, classify_statement(event.query, keyspace), keyspace)
    if isinstance(event, codec.Execute):
        found = prepared.lookup(resource, event.query_id)
        if found is None:
            return Plan("execute", "", [], keyspace, unprepared=event.query_id)
        text, ks = found
        return Plan("execute", text, classify_statement(text, ks), ks)
    if isinstance(event, codec.Batch):
        return _batch_plan(event, resource, keyspace, prepared)
    return None


def _batch_plan(
    event: codec.Batch, resource: str, keyspace: str | None, prepared: PreparedStatements
) -> Plan:
    texts: list[str] = []
    targets: list[Target] = []
    for child in event.statements:
        if child.kind == 0 and child.query is not None:
            text, ks = child.query, keyspace
        else:
            found = prepared.lookup(resource, child.query_id or b"")
            if found is None:
                return Plan("batch", "", [], keyspace, unprepared=child.query_id or b"")
            text, ks = found
        texts.append(text)
        found_targets = classify_statement(text, ks)
        # Only data changes may be batched; anything else (a SELECT, DDL) fails closed.
        if any(t.action not in ("write",) for t in found_targets):
            found_targets = [t if t.action == "write" else _unknown(t) for t in found_targets]
        targets.extend(found_targets)
    if not targets:
        targets = [Target("admin", "*", "unknown")]
    return Plan("batch", "; ".join(texts), targets, keyspace)


def _unknown(t: Target) -> Target:
    return Target("admin", "*", f"batched {t.statement_kind}")
