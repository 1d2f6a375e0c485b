"""What every gateway engine shares: the shapes of its collaborators and two hot-path caches.

Engines depend on the token verifier, policy, credential broker, audit sink and assertion
signer only through the :class:`typing.Protocol` s below (duck typing), so each engine can be
built and tested alone with small fakes and the server wires the real objects later.

Hot-path rules, common to all engines:

* the verifier is called per request (it caches verified tokens itself);
* upstream secrets are cached per credential for about a second (:class:`SecretCache`), so a
  request costs a dict lookup, not a broker round trip, while rotation is seen within a second;
* signed identity assertions are cached per (token id, resource) (:class:`AssertionCache`),
  never past the token's expiry;
* audit records are built by an injected factory (``lockgate.audit.AuditRecord`` by default);
  an allowed request's ``admitted`` record is written ahead (``AuditSink.write_ahead``, one
  journal ``write()``) before anything is forwarded, and refused when that fails; outcome and
  refusal records are emitted without blocking; a failing ``emit`` never breaks a request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from lockgate import _log

log = _log.get("gateway")

Clock = Callable[[], float]


# -- collaborator shapes ----------------------------------------------------------------------
class Claims(Protocol):
    """A verified Lockgate token (see ``lockgate.identity``)."""

    sub: str
    aud: str
    exp: float
    jti: str
    deployment: str
    dag_id: str
    task_id: str
    run_id: str | None
    try_number: int | None
    map_index: int | None


class TokenVerifier(Protocol):
    def verify(self, token: str, audience: str) -> Any:
        """Return claims or raise ``AuthenticationError`` with a ``reason`` slug."""
        ...


class Decision(Protocol):
    allowed: bool
    rule: str | None
    reason: str

    def explain(self) -> str: ...


class PolicySet(Protocol):
    def decide(self, req: Any) -> Decision: ...


class PolicySource(Protocol):
    @property
    def current(self) -> PolicySet: ...


class UpstreamSecret(Protocol):
    value: str
    version: int


class CredentialBroker(Protocol):
    def upstream_secret(
        self, credential_name: str, previous: bool = False
    ) -> Awaitable[UpstreamSecret | None]: ...


@runtime_checkable
class AuditSink(Protocol):
    def check_writable(self) -> None:
        """Raise ``AuditUnavailable`` when records cannot be written (fail closed)."""
        ...

    def write_ahead(self, record: Any) -> str:
        """Make the ``admitted`` record of an allowed request survive a crash of this process
        *before* the request is forwarded; return its reference (``ref`` in the outcome
        record's detail). Raises ``AuditUnavailable``: refuse the request, forward nothing."""
        ...

    def durable(self) -> Awaitable[None] | None:
        """None when every record written ahead so far is as durable as configured (always
        with ``durability: process``); else an awaitable to await before forwarding, which
        raises ``AuditUnavailable`` when the records cannot be made durable."""
        ...

    def emit(self, record: Any) -> None: ...


AssertionSigner = Callable[[Any, str], str]
RecordFactory = Callable[..., Any]
RequestFactory = Callable[..., Any]


def default_request_factory() -> RequestFactory:
    from lockgate.policy import Request

    return Request


def default_record_factory() -> RecordFactory:
    from lockgate.audit import AuditRecord

    return AuditRecord


def identity_fields(claims: Any) -> dict[str, Any]:
    """The audit record fields that say who acted, from verified claims (or None)."""
    c = claims
    return {
        "deployment": getattr(c, "deployment", None),
        "dag_id": getattr(c, "dag_id", None),
        "task_id": getattr(c, "task_id", None),
        "run_id": getattr(c, "run_id", None),
        "try_number": getattr(c, "try_number", None),
        "map_index": getattr(c, "map_index", None),
        "principal": getattr(c, "sub", None),
        "jti": getattr(c, "jti", None),
    }


# -- hot-path caches --------------------------------------------------------------------------
class SecretCache:
    """Upstream secrets per (credential, previous) for ``ttl`` seconds.

    Returns the same object while fresh, so callers may cache derived bytes keyed on identity.
    Concurrent misses for one key share a single broker call.
    """

    def __init__(
        self, broker: CredentialBroker, *, ttl: float = 1.0, clock: Clock = time.monotonic
    ):
        self._broker = broker
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, bool], tuple[float, UpstreamSecret | None]] = {}

    def peek(self, name: str, previous: bool = False) -> UpstreamSecret | None:
        """The cached secret if fresh, else None (sync fast path)."""
        entry = self._entries.get((name, previous))
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        return None

    async def get(self, name: str, previous: bool = False) -> UpstreamSecret | None:
        key = (name, previous)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        secret = await self._broker.upstream_secret(name, previous=previous)
        self._entries[key] = (self._clock() + self._ttl, secret)
        return secret

    def invalidate(self, name: str | None = None) -> None:
        if name is None:
            self._entries.clear()
        else:
            self._entries.pop((name, False), None)
            self._entries.pop((name, True), None)

    def forget_token(self, name: str, version: int) -> None:
        """The upstream refused an access token: drop it here and in the broker, so the
        next ``get`` fetches a fresh one instead of returning the refused token again."""
        self.invalidate(name)
        forget = getattr(self._broker, "invalidate", None)  # brokers without a token cache
        if forget is not None:
            forget(name, version)


class AssertionCache:
    """Signed identity assertions per (jti, resource), reused for ``ttl`` seconds.

    ``ttl`` must be shorter than the signer's assertion lifetime; an entry never outlives
    the token it was made for (``claims.exp`` is wall-clock seconds).
    """

    MAX_ENTRIES = 10_000

    def __init__(
        self,
        signer: AssertionSigner,
        *,
        ttl: float = 30.0,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ):
        self._signer = signer
        self._ttl = ttl
        self._clock = clock
        self._wall = wall
        self._entries: dict[tuple[str, str], tuple[float, str]] = {}

    def get(self, claims: Any, resource: str) -> str:
        key = (str(getattr(claims, "jti", "")), resource)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = self._signer(claims, resource)
        left = float(getattr(claims, "exp", 0) or 0) - self._wall()
        if key[0] and left > 0:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()  # cheap bound; entries are re-signed on demand
            self._entries[key] = (now + min(self._ttl, left), value)
        return value


def emit_safely(audit: AuditSink, record: Any) -> None:
    """Emit an audit record; a sink failure is logged, never raised into a request."""
    try:
        audit.emit(record)
    except Exception:
        log.exception(
            "audit emit failed", extra={"fields": {"event": getattr(record, "event", None)}}
        )
