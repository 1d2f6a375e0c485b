"""What every CQL client connection shares: collaborators, caches, audit and metrics helpers.

One :class:`EngineContext` per engine, built from the process's
:class:`~lockgate.gateway.engine.Collaborators`: the catalog (``resources``, replaced whole
by :meth:`CqlEngine.update_resources`, so a session reads one catalog or the next, never a
mix), the token verifier (called for every statement: it re-checks expiry and revocation in
memory), policy, credentials, the shared prepared-statement registry and the bounds of
frames held behind a USE. Sessions call :meth:`EngineContext.record` to audit (never
blocking; a failing sink is logged, not raised), ``ctx.records.admitted(...)`` for the
record written ahead, and :meth:`EngineContext.count` for ``lockgate_requests_total``
(metric children cached, so the hot path does no label lookup).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lockgate.config import CqlResource
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
from lockgate.quotas import QuotaGate

from .statements import PreparedStatements
from .views import ViewCatalog

#: Max bytes of a frame before the client has authenticated (handshake frames are tiny).
PRE_AUTH_MAX_FRAME_BYTES = 64 * 1024
#: What the gateway answers to OPTIONS. The driver requires a COMPRESSION key.
SUPPORTED_OPTIONS: dict[str, list[str]] = {
    "CQL_VERSION": ["3.4.4"],
    "PROTOCOL_VERSIONS": ["4/v4"],
    "COMPRESSION": [],
}
AUTHENTICATOR = "org.apache.cassandra.auth.PasswordAuthenticator"
#: Frames one connection may have waiting behind an unanswered USE (:mod:`.holds`), by count
#: and by bytes; beyond them the client is not read until the USE is answered.
MAX_HELD_FRAMES = 256
MAX_HELD_BYTES = 1024 * 1024
#: Seconds the upstream has to answer a USE that frames wait for; then the connection closes.
USE_ANSWER_TIMEOUT = 10.0


@dataclass(eq=False)
class EngineContext:
    shared: Collaborators
    resources: dict[str, CqlResource] = field(default_factory=dict)
    prepared: PreparedStatements = field(default_factory=PreparedStatements)
    views: ViewCatalog = field(default_factory=ViewCatalog)
    max_held_frames: int = MAX_HELD_FRAMES
    max_held_bytes: int = MAX_HELD_BYTES
    use_answer_timeout: float = USE_ANSWER_TIMEOUT
    # taken from ``shared`` (attribute reads on the hot path, not two hops)
    verifier: TokenVerifier = field(init=False)
    policy: PolicySource = field(init=False)
    audit: AuditSink = field(init=False)
    secrets: SecretCache = field(init=False)
    clock: Clock = field(init=False)
    make_request: RequestFactory = field(init=False)
    records: RecordBuilder = field(init=False)
    #: rates and caps asked after policy allowed (:mod:`lockgate.quotas`, :mod:`.quota`)
    quotas: QuotaGate = field(init=False)
    #: ``record(event, claims, resource, t0, ...)``: audit an outcome or a refusal
    record: Callable[..., None] = field(init=False, repr=False)
    #: ``count(resource, action, decision, dag_id)``: ``lockgate_requests_total`` += 1
    count: Callable[[str, str, str, str | None], None] = field(init=False, repr=False)
    #: ``observe_upstream(resource, seconds)``: ``lockgate_upstream_latency_seconds``
    observe_upstream: Callable[[str, float], None] = field(init=False, repr=False)

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

    def update_resources(self, resources: Iterable[ResourceConfig]) -> None:
        """Swap the catalog (one assignment: a session sees the old or the new one whole)."""
        self.resources = {r.name: r for r in resources if isinstance(r, CqlResource)}

    @property
    def handshake_timeout(self) -> float:
        """Before the client names its resource, the strictest handshake timeout applies."""
        return min((r.handshake_timeout for r in self.resources.values()), default=10.0)
