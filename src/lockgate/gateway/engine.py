"""The Engine interface and the one bundle of collaborators every engine shares.

An engine serves one resource kind on its own listener(s): it authenticates each client
with its Lockgate token, classifies each request or statement into an action on an
object, asks policy, talks upstream with the gateway's own credential, relays and audits.
Every engine implements :class:`Engine`; :mod:`lockgate.gateway.registry` maps a resource
kind to its engine class, and the server wires them by kind alone. An engine whose clients
hold long sessions (CQL, PostgreSQL) also implements :class:`EndsRevokedSessions`, so that
a revocation ends an idle session at once, not at its next statement.

Collaborators (token verifier, policy, credential broker, audit sink, assertion signer)
are seen only through the :class:`typing.Protocol` s below, so an engine can be built and
tested alone with small fakes. The server builds one :class:`Collaborators` per process,
checked once there (a missing method fails at start, not on the first request), which
also holds what engines share: the secret and assertion caches, the record builder and the
request metrics.

Hot-path rules, common to all engines:

* the verifier is called per request (it caches verified tokens itself);
* every policy question is built by :func:`policy_request` from the verified claims, so
  each engine hands policy the same inputs (principal, token lifetime, map index);
* upstream secrets come from :class:`~lockgate.gateway.caches.SecretCache` (a dict lookup),
  identity assertions from :class:`~lockgate.gateway.caches.AssertionCache`;
* an allowed request's ``admitted`` record (:mod:`lockgate.gateway.records`) is written
  ahead (``AuditSink.write_ahead``) before anything is forwarded, and the request refused
  when that fails; outcome and refusal records are emitted without blocking.

A new engine (PostgreSQL, say) is one class::

    class PostgresEngine:
        kind = "postgres"        # resources with kind: postgres, listener listeners.postgres
        every_worker = False     # True if several processes may share its port

        def __init__(self, resources, shared: Collaborators) -> None:
            self.shared = shared               # verifier, policy, secrets, records, metrics
            self.update_resources(resources)

        def update_resources(self, resources) -> None:
            # one assignment: a login reads the old catalog or the new one, whole; a
            # removed resource refuses new logins (say what open sessions do)
            self.catalog = {r.name: r for r in resources if r.kind == self.kind}

        async def listen(self, listeners, *, reuse_port=False) -> None:
            cfg = listeners.postgres           # host, port, tls, handshake_timeout, ...
            self.server = await asyncio.get_running_loop().create_server(...)

        @property
        def ports(self) -> dict[str, int]:
            return {"postgres": self.server.sockets[0].getsockname()[1]}

        async def close(self) -> None: ...

plus its resource model and ``postgres`` listener section in :mod:`lockgate.config`, and one
line in :data:`lockgate.gateway.registry.ENGINES`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from lockgate import metrics
from lockgate.gateway.caches import (
    AssertionCache,
    AssertionSigner,
    Clock,
    CredentialBroker,
    SecretCache,
    UpstreamSecret,
)
from lockgate.gateway.live_sessions import NoLiveSessions
from lockgate.gateway.records import RecordBuilder
from lockgate.quotas import NO_QUOTAS, QuotaGate

if TYPE_CHECKING:
    from lockgate.audit import AuditRecord
    from lockgate.config import Listeners
    from lockgate.identity import Claims
    from lockgate.policy import Request
    from lockgate.store import Database


# -- collaborator shapes ----------------------------------------------------------------------
class TokenVerifier(Protocol):
    def verify(self, token: str, audience: str) -> Claims:
        """Return the claims of a token valid now *for* ``audience`` (the resource: the
        audience is checked here, engines do not check it again), or raise
        ``AuthenticationError`` with a ``reason`` slug (``wrong_audience``, ``expired``...)."""
        ...


class Decision(Protocol):
    @property
    def allowed(self) -> bool: ...

    @property
    def rule(self) -> str | None: ...

    @property
    def reason(self) -> str: ...

    def explain(self) -> str: ...


class PolicySet(Protocol):
    def decide(self, req: Request) -> Decision: ...


class PolicySource(Protocol):
    @property
    def current(self) -> PolicySet: ...


class ShadowPolicySource(PolicySource, Protocol):
    """A policy source that may also hold a shadow set (``PolicyStore.shadow``)."""

    @property
    def shadow(self) -> PolicySet | None: ...


@runtime_checkable
class AuditSink(Protocol):
    def check_writable(self) -> None:
        """Raise ``AuditUnavailable`` when records cannot be written (fail closed)."""
        ...

    def write_ahead(self, record: AuditRecord) -> str:
        """Make the ``admitted`` record of an allowed request survive a crash of this process
        *before* the request is forwarded; return its reference (``ref`` in the outcome
        record's detail). Raises ``AuditUnavailable``: refuse the request, forward nothing."""
        ...

    def durable(self) -> Awaitable[None] | None:
        """None when every record written ahead so far is as durable as configured (always
        with ``durability: process``); else an awaitable to await before forwarding, which
        raises ``AuditUnavailable`` when the records cannot be made durable."""
        ...

    def emit(self, record: AuditRecord) -> None: ...


class ResourceConfig(Protocol):
    """What the registry and every engine read of any resource: its name and kind."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


class SessionWatch(Protocol):
    """Where engines whose clients hold sessions (CQL, PostgreSQL) report each one that
    logged in and its end, whatever ends it (:class:`~lockgate.gateway.live_sessions.
    SessionRegistry`: memory only, never a wait on a database)."""

    def opened(self, kind: str, resource: str, claims: Claims, peer: str) -> str | None:
        """The session's id, for :meth:`closed` (None: nothing is kept)."""
        ...

    def closed(self, session_id: str) -> None: ...


RequestFactory = Callable[..., "Request"]


def default_request_factory() -> RequestFactory:
    from lockgate.policy import Request

    return Request


def policy_request(
    make: RequestFactory, claims: Claims, action: str, resource: str, obj: str
) -> Request:
    """The policy question every engine asks for one action on one object, with everything
    a condition judges taken from the verified claims: the principal, the token's lifetime
    (``max_token_ttl``) and the task's map index (``map_index`` / ``mapped``; -1 when the
    task is not mapped). The principal never carries the map index: audit, globs and
    policies name a task by ``airflow:<deployment>/<dag>/<task>`` alone."""
    return make(
        principal=claims.sub,
        action=action,
        resource=resource,
        object=obj,
        token_ttl=float(claims.exp) - float(claims.iat),
        map_index=claims.map_index,
    )


class ShadowJudge:
    """The shadow set's verdict on a recorded decision (:data:`~lockgate.gateway.records.
    ShadowVerdict`): None when there is no shadow set (no decision asked), when it agrees, or
    when the recorded decision was not the enforced policy's (asked again to know: cached,
    and only while a shadow set exists)."""

    __slots__ = ("_make", "_source")

    def __init__(self, source: ShadowPolicySource, make: RequestFactory) -> None:
        self._source = source
        self._make = make

    def __call__(
        self, claims: Claims, resource: str, action: str, obj: str, allowed: bool
    ) -> dict[str, str | None] | None:
        shadow = self._source.shadow
        if shadow is None:
            return None
        req = policy_request(self._make, claims, action, resource, obj)
        verdict = shadow.decide(req)
        if verdict.allowed == allowed:
            return None
        if self._source.current.decide(req).allowed != allowed:
            # The gateway decided, not policy (a driver's metadata read let through, a
            # request refused before policy): nothing a policy change would change.
            return None
        return {
            "decision": "allow" if verdict.allowed else "deny",
            "rule": verdict.rule,
            "reason": verdict.explain(),
        }


# -- what engines share ---------------------------------------------------------------------
class RequestCounter:
    """``lockgate_requests_total`` of one resource. Labelled children are cached
    (``labels()`` costs a lock and a dict of tuples per call); the ``dag`` label is bounded by
    :func:`lockgate.metrics.dag_label`, but the cache is keyed by the DAG id itself (which
    comes from tokens), so it starts over past :data:`_MAX_CACHED_CHILDREN` entries."""

    __slots__ = ("_children", "resource")

    def __init__(self, resource: str) -> None:
        self.resource = resource
        self._children: dict[tuple[str, str, str | None], Any] = {}

    def count(self, action: str, decision: str, dag_id: str | None = None) -> None:
        """+= 1; ``dag_id`` is the verified token's DAG (None before a token verified)."""
        key = (action, decision, dag_id)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > _MAX_CACHED_CHILDREN:
                self._children.clear()
            child = self._children[key] = metrics.REQUESTS.labels(
                self.resource, action, decision, metrics.dag_label(dag_id)
            )
        child.inc()


class RequestMetrics:
    """``lockgate_requests_total`` and upstream latency, for engines that serve several
    resources from one context (an HTTP resource holds its own :class:`RequestCounter`)."""

    __slots__ = ("_counters", "_latency")

    def __init__(self) -> None:
        self._counters: dict[str, RequestCounter] = {}
        self._latency: dict[str, Any] = {}

    def count(self, resource: str, action: str, decision: str, dag_id: str | None = None) -> None:
        """``lockgate_requests_total`` += 1; ``dag_id`` is the verified token's DAG (its
        label is bounded by :func:`lockgate.metrics.dag_label`)."""
        counter = self._counters.get(resource)
        if counter is None:  # resources come from the catalog: a bounded set
            counter = self._counters[resource] = RequestCounter(resource)
        counter.count(action, decision, dag_id)

    def observe_upstream(self, resource: str, seconds: float) -> None:
        child = self._latency.get(resource)
        if child is None:
            child = self._latency[resource] = metrics.UPSTREAM_LATENCY.labels(resource)
        child.observe(seconds)


#: Cached metric children per resource before the cache starts over (each DAG of each
#: action/decision is one entry).
_MAX_CACHED_CHILDREN = 10_000


# (collaborator, what it must have): checked once when the bundle is built
_REQUIRED = (
    ("verifier", "verify"),
    ("policy", "current"),
    ("broker", "upstream_secret"),
    ("audit", "check_writable"),
    ("audit", "write_ahead"),
    ("audit", "durable"),
    ("audit", "emit"),
)


@dataclass(eq=False)
class Collaborators:
    """Everything engines share, built once per process. Raises ``TypeError`` naming what
    is missing when a collaborator lacks a method engines call."""

    verifier: TokenVerifier
    policy: PolicySource
    broker: CredentialBroker
    audit: AuditSink
    sign_assertion: AssertionSigner
    clock: Clock = time.monotonic
    secret_ttl: float = 1.0  # seconds a fetched upstream secret is reused
    assertion_ttl: float = 30.0  # seconds a signed identity assertion is reused
    data_dir: Path | None = None  # engine state (e.g. the Databricks run registry)
    # The state's databases by name (State.database): run registries shared by every replica
    # on PostgreSQL; None: SQLite files under data_dir.
    database_for: Callable[[str], Database] | None = None
    master_key: bytes | None = field(default=None, repr=False)  # State's (Cosmos task keys)
    make_request: RequestFactory = field(default_factory=default_request_factory)
    # Rates and caps of policy files' ``quotas:`` (asked after policy allowed, before the
    # record is written ahead; :mod:`lockgate.quotas`).
    quotas: QuotaGate = NO_QUOTAS
    # Sessions open now (:mod:`lockgate.gateway.live_sessions`): the console lists them.
    live: SessionWatch = field(default_factory=NoLiveSessions)
    secrets: SecretCache = field(init=False)
    assertions: AssertionCache = field(init=False)
    records: RecordBuilder = field(init=False)
    metrics: RequestMetrics = field(init=False)

    def __post_init__(self) -> None:
        missing = [f"{who}.{what}" for who, what in _REQUIRED if not _has(self, who, what)]
        if not callable(self.sign_assertion):
            missing.append("sign_assertion (a callable)")
        if missing:
            raise TypeError(f"engine collaborators lack {', '.join(missing)}")
        self.secrets = SecretCache(self.broker, ttl=self.secret_ttl, clock=self.clock)
        self.assertions = AssertionCache(
            self.sign_assertion, ttl=self.assertion_ttl, clock=self.clock
        )
        # A policy with a shadow set (PolicyStore) gets its verdicts audited; fakes without one
        # cost nothing.
        shadow = (
            ShadowJudge(self.policy, self.make_request)  # type: ignore[arg-type]
            if hasattr(self.policy, "shadow")
            else None
        )
        self.records = RecordBuilder(self.audit, self.clock, shadow)
        self.metrics = RequestMetrics()


def _has(bundle: Collaborators, who: str, what: str) -> bool:
    return hasattr(getattr(bundle, who), what)


# -- the interface ------------------------------------------------------------------------
class Engine(Protocol):
    """One wire protocol's engine; see the module docstring for a sketch of a new one."""

    #: The resource kind it serves; also the name of its section in ``listeners``.
    kind: ClassVar[str]
    #: May run in every ``serve --workers`` process (they share its port with
    #: SO_REUSEPORT); False: worker 0 alone serves it.
    every_worker: ClassVar[bool]

    def __init__(self, resources: Iterable[ResourceConfig], shared: Collaborators) -> None:
        """Keep the resources of :attr:`kind` (others are ignored); open nothing yet."""
        ...

    async def listen(self, listeners: Listeners, *, reuse_port: bool = False) -> None:
        """Open this engine's listener(s) from the config's ``listeners`` section."""
        ...

    def update_resources(self, resources: Iterable[ResourceConfig]) -> None:
        """Serve this catalog from now on, without a restart (what happens to requests and
        sessions in flight is each engine's to say, in its docstring)."""
        ...

    @property
    def ports(self) -> Mapping[str, int]:
        """Listener name -> bound port, once listening."""
        ...

    async def close(self) -> None:
        """Stop listening and end every connection."""
        ...


#: ``is_revoked(claims)``: True when the token the claims came from may no longer be used
#: (revoked, or its DAG blocked); a memory read (``RevocationStore.is_revoked``).
RevocationCheck = Callable[["Claims"], bool]

#: Audit reason of a session the gateway ended because its token was revoked.
SESSION_REVOKED = "token_revoked"


@runtime_checkable
class EndsRevokedSessions(Protocol):
    """Optional part of :class:`Engine`, for engines whose clients hold long sessions (CQL,
    PostgreSQL). Each statement re-verifies the session's token, but an idle session sends
    none: after the revocations reload with a change, the server calls :meth:`end_revoked`
    so a revoked task loses its open connections at once, whichever replica (or the CLI)
    revoked it. Engines that verify the token of every request (HTTP) need nothing."""

    def end_revoked(self, is_revoked: RevocationCheck) -> int:
        """End every logged-in session whose token ``is_revoked`` (upstream connection
        closed too), one audit record each (``session_ended``, decision deny, reason
        :data:`SESSION_REVOKED`); return how many were ended. Never blocks, never raises for
        one session."""
        ...


def end_revoked_sessions(engines: Iterable[object], is_revoked: RevocationCheck) -> int:
    """Ask every engine that holds sessions to end those of revoked tokens; how many ended."""
    return sum(
        engine.end_revoked(is_revoked)
        for engine in engines
        if isinstance(engine, EndsRevokedSessions)
    )


__all__ = [
    "SESSION_REVOKED",
    "AssertionCache",
    "AssertionSigner",
    "AuditSink",
    "Clock",
    "Collaborators",
    "CredentialBroker",
    "Decision",
    "EndsRevokedSessions",
    "Engine",
    "PolicySet",
    "PolicySource",
    "RequestCounter",
    "RequestFactory",
    "RequestMetrics",
    "ResourceConfig",
    "RevocationCheck",
    "SecretCache",
    "SessionWatch",
    "ShadowJudge",
    "ShadowPolicySource",
    "TokenVerifier",
    "UpstreamSecret",
    "default_request_factory",
    "end_revoked_sessions",
    "policy_request",
]
