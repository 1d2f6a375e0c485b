"""What every CQL client connection shares: collaborators, caches, audit and metrics helpers.

One :class:`EngineContext` per engine: the resources, the token verifier (called for every
statement: it re-checks expiry and revocation in memory), policy, credentials, the shared
prepared-statement registry and the bounds of frames held behind a USE. Sessions call
:meth:`EngineContext.record` to audit (never blocking; a failing sink is logged, not raised)
and :meth:`EngineContext.count` for ``lockgate_requests_total``; metric children are cached
so the hot path does no label lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lockgate import metrics
from lockgate.config import CqlResource
from lockgate.gateway.engine import (
    AuditSink,
    Clock,
    CredentialBroker,
    PolicySource,
    RecordFactory,
    RequestFactory,
    SecretCache,
    TokenVerifier,
    default_record_factory,
    default_request_factory,
)
from lockgate.gateway.records import RecordBuilder

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


@dataclass
class EngineContext:
    resources: dict[str, CqlResource]
    verifier: TokenVerifier
    policy: PolicySource
    broker: CredentialBroker
    audit: AuditSink
    make_request: RequestFactory = field(default_factory=default_request_factory)
    make_record: RecordFactory = field(default_factory=default_record_factory)
    prepared: PreparedStatements = field(default_factory=PreparedStatements)
    views: ViewCatalog = field(default_factory=ViewCatalog)
    clock: Clock = time.monotonic
    max_held_frames: int = MAX_HELD_FRAMES
    max_held_bytes: int = MAX_HELD_BYTES
    use_answer_timeout: float = USE_ANSWER_TIMEOUT
    secrets: SecretCache = field(init=False)
    records: RecordBuilder = field(init=False)
    #: ``record(event, claims, resource, t0, ...)``: audit an outcome or a refusal
    record: Callable[..., None] = field(init=False, repr=False)
    _counters: dict[tuple[str, str, str], Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.secrets = SecretCache(self.broker)
        self.records = RecordBuilder(self.audit, self.clock)
        self.record = self.records.emit

    @classmethod
    def build(
        cls,
        resources: Sequence[CqlResource],
        verifier: TokenVerifier,
        policy: PolicySource,
        broker: CredentialBroker,
        audit: AuditSink,
        **kw: Any,
    ) -> EngineContext:
        kw = {k: v for k, v in kw.items() if v is not None}
        return cls({r.name: r for r in resources}, verifier, policy, broker, audit, **kw)

    @property
    def handshake_timeout(self) -> float:
        """Before the client names its resource, the strictest handshake timeout applies."""
        return min((r.handshake_timeout for r in self.resources.values()), default=10.0)

    def count(self, resource: str, action: str, decision: str) -> None:
        key = (resource, action, decision)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = metrics.REQUESTS.labels(resource, action, decision)
        child.inc()

    def observe_upstream(self, resource: str, seconds: float) -> None:
        metrics.UPSTREAM_LATENCY.labels(resource).observe(seconds)
