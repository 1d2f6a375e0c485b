"""What every PostgreSQL client session shares: collaborators, catalogs, caches, cancel keys.

One :class:`EngineContext` per engine, built from the process's
:class:`~lockgate.gateway.engine.Collaborators`:

* ``resources`` — the catalog, replaced whole by
  :meth:`~.engine.PostgresEngine.update_resources` (a login reads the old or the new one,
  never a mix);
* ``relations`` — the upstream's relation names per resource (:mod:`.catalog`), for
  resolving unqualified names through ``search_path``;
* ``decisions`` — judged statements by (text, scope key, principal...), a bounded cache
  the flow reads and fills (:class:`DecisionCache`);
* ``cancels`` — the gateway's backend keys of open sessions (:mod:`.cancel`);
* ``refusals`` — login and cancel refusals, audited with the peer; those before a token
  verified spend a per-peer budget, so garbage at line rate does not grow the trail at
  line rate (:mod:`lockgate.gateway.refusals`);
* the collaborators, taken out of ``shared`` (one attribute read on the hot path):
  ``verifier`` (called per statement: it re-checks expiry and revocation in memory),
  ``policy``, ``audit``, ``secrets``, ``clock``, ``make_request``, ``records``, and the
  helpers ``record(event, claims, resource, t0, ...)`` (audit an outcome or refusal, never
  blocking), ``count(resource, action, decision)`` and ``observe_upstream``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lockgate import _log
from lockgate.config import PostgresResource
from lockgate.gateway.engine import (
    AuditSink,
    Clock,
    Collaborators,
    PolicySource,
    RequestFactory,
    ResourceConfig,
    SecretCache,
    TokenVerifier,
)
from lockgate.gateway.records import RecordBuilder
from lockgate.gateway.refusals import RefusalRecorder
from lockgate.quotas import QuotaGate

from .cancel import CancelKeys
from .catalog import RelationCatalogs

#: Largest startup packet or password message before the client has logged in.
PRE_AUTH_MAX_MESSAGE_BYTES = 10_000
#: Largest message the upstream may send (a DataRow holds up to 1 GiB of one value).
UPSTREAM_MAX_MESSAGE_BYTES = (1 << 30) + (1 << 20)
#: Bytes read from a socket at once.
READ_SIZE = 256 * 1024
#: Judged statements kept (statement texts are bounded by the client's message cap).
DECISION_CACHE_SIZE = 4096

V = TypeVar("V")


class DecisionCache(Generic[V]):
    """A bounded least-recently-used map; the flow decides what keys and values are."""

    __slots__ = ("_items", "max_items")

    def __init__(self, max_items: int = DECISION_CACHE_SIZE) -> None:
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self.max_items = max_items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


@dataclass(eq=False)
class EngineContext:
    shared: Collaborators
    resources: dict[str, PostgresResource] = field(default_factory=dict)
    decisions: DecisionCache[object] = field(default_factory=DecisionCache)
    cancels: CancelKeys = field(default_factory=CancelKeys)
    relations: RelationCatalogs = field(init=False)
    # taken from ``shared`` (attribute reads on the hot path, not two hops)
    verifier: TokenVerifier = field(init=False)
    policy: PolicySource = field(init=False)
    audit: AuditSink = field(init=False)
    secrets: SecretCache = field(init=False)
    clock: Clock = field(init=False)
    make_request: RequestFactory = field(init=False)
    records: RecordBuilder = field(init=False)
    #: rates and caps asked after policy allowed (:mod:`lockgate.quotas`)
    quotas: QuotaGate = field(init=False)
    #: ``record(event, claims, resource, t0, ...)``: audit an outcome or a refusal
    record: Callable[..., None] = field(init=False, repr=False)
    #: ``count(resource, action, decision, dag_id)``: ``lockgate_requests_total`` += 1
    count: Callable[[str, str, str, str | None], None] = field(init=False, repr=False)
    #: ``observe_upstream(resource, seconds)``: ``lockgate_upstream_latency_seconds``
    observe_upstream: Callable[[str, float], None] = field(init=False, repr=False)
    #: refusals before a token verified spend a per-peer budget (:mod:`..refusals`)
    refusals: RefusalRecorder = field(init=False, repr=False)

    def __post_init__(self) -> None:
        shared = self.shared
        self.verifier = shared.verifier
        self.policy = shared.policy
        self.audit = shared.audit
        self.secrets = shared.secrets
        self.clock = shared.clock
        self.make_request = shared.make_request
        self.records = shared.records
        self.quotas = shared.quotas
        self.record = shared.records.emit
        self.count = shared.metrics.count
        self.observe_upstream = shared.metrics.observe_upstream
        self.relations = RelationCatalogs(shared.clock)
        self.refusals = RefusalRecorder(
            "postgres", shared.records.emit, _log.get("gateway.postgres"), clock=shared.clock
        )

    def update_resources(self, resources: Iterable[ResourceConfig]) -> None:
        """Swap the catalog (one assignment: a login sees the old or the new one whole);
        a changed or removed resource's relation catalog is read again at its next login."""
        previous = self.resources
        self.resources = {r.name: r for r in resources if isinstance(r, PostgresResource)}
        for name, was in previous.items():
            if self.resources.get(name) != was:
                self.relations.invalidate(name)
        if previous and self.resources != previous:
            self.decisions.clear()  # judged against objects of the old catalog


__all__ = [
    "DECISION_CACHE_SIZE",
    "PRE_AUTH_MAX_MESSAGE_BYTES",
    "READ_SIZE",
    "UPSTREAM_MAX_MESSAGE_BYTES",
    "DecisionCache",
    "EngineContext",
]
