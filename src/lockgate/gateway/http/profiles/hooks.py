"""The hooks a profile answers and the types they exchange.

What each hook is for: :mod:`lockgate.gateway.http.profiles`.

Profiles import these, never the package that makes them, so the graph has no circle.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from lockgate.gateway.engine import Decision, UpstreamSecret
from lockgate.gateway.http import framing
from lockgate.gateway.http.bearer import token_of
from lockgate.gateway.http.normalize import Target
from lockgate.gateway.http.retry import RETRY_STATUSES

if TYPE_CHECKING:
    from lockgate.identity import Claims

#: (action, object) -> a policy decision (``allowed``, ``rule``, ``reason``, ``explain()``).
Decide = Callable[[str, str], Decision]
#: -> the upstream auth headers, with the gateway's current credential.
UpstreamHeaders = Callable[[], Awaitable[dict[str, str]]]
Headers = Sequence[tuple[bytes, bytes]]


class Presented(NamedTuple):
    """What :meth:`Profile.authenticate` found: the token (None: ``why`` it is missing or
    malformed), the target the exchange serves, and the path safe to name in a record."""

    token: str | None
    why: str
    target: Target
    shown: str


@dataclass(slots=True)
class ProfileRequest:
    method: str
    path: str  # normalised, without any resource prefix
    query: str
    body: bytes  # complete when the profile wanted it, else b""
    claims: Claims
    principal: str
    default: tuple[str, str]  # what the resource's generic route table says
    head: framing.Head | None = None  # the client's head (headers a profile classifies by)


@dataclass(slots=True)
class Verdict:
    """The profile's answer for one request."""

    allowed: bool
    action: str
    obj: str
    reason: str
    rule: str | None = None
    decision: Decision | None = None  # the policy decision that allowed it
    status: int = 403  # when refused
    slug: str = "forbidden"  # error slug when status is not 403
    capture: bool = False  # wants the response body in on_response
    rewrite: bool = False  # the response is buffered (bounded) for rewrite_response
    state: Any = None  # profile-private, handed back to on_response
    detail: dict[str, Any] = field(default_factory=dict)  # audit detail known up front
    drop_headers: frozenset[bytes] = frozenset()  # client headers not forwarded this time
    starts_run: bool = False  # starts a job or pipeline run: asks the quota's ``runs`` cap
    # other names of what it touches (a job's id and name, the jobs a submit triggers): a
    # quota on any of them counts the request
    quota_objects: tuple[str, ...] = ()
    cost: int = 1  # operations it carries (a Cosmos DB batch): tokens of a rate quota


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One upstream attempt, as :meth:`Profile.sign_upstream` sees it."""

    method: str
    path: str  # the profile-relative path sent upstream (no query)
    verdict: Verdict


class Profile(Protocol):
    max_body: int
    retry_statuses: frozenset[int]  # upstream answers retried for idempotent requests
    identity_assertion: bool  # send the signed caller identity header upstream
    drop_headers: frozenset[bytes]  # client headers (lowercased) never forwarded
    drop_underscored: bool  # nor any whose name has "_" (some servers read it as "-")
    timeout: float | None  # seconds for one exchange, all attempts (None: the resource's)

    def local_answer(self, method: str, path: str) -> bytes | None: ...

    def authenticate(self, target: Target, head: framing.Head) -> Presented: ...

    def verify_request(
        self, claims: Claims, method: str, target: Target, head: framing.Head
    ) -> None: ...

    def wants_body(self, method: str, path: str) -> bool: ...

    async def authorize(
        self, req: ProfileRequest, decide: Decide, headers: UpstreamHeaders
    ) -> Verdict: ...

    def sign_upstream(self, call: UpstreamCall, secret: UpstreamSecret) -> bytes | None: ...

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any] | None: ...

    def rewrite_response(
        self, verdict: Verdict, status: int, headers: Headers, body: bytes, base: str
    ) -> tuple[Headers, bytes]: ...

    def on_response(
        self, verdict: Verdict, status: int, headers: Headers, body: bytes
    ) -> dict[str, Any]: ...

    def throttle_headers(self, retry_after: float) -> list[tuple[str, str]]: ...

    def finished_run(self, verdict: Verdict, detail: dict[str, Any]) -> str | None: ...

    async def close(self) -> None: ...


class ProfileBase:
    """The generic answer to every hook; a profile overrides what it knows better."""

    max_body: int = 1024 * 1024
    retry_statuses: frozenset[int] = RETRY_STATUSES
    identity_assertion: bool = True
    drop_headers: frozenset[bytes] = frozenset()
    drop_underscored: bool = False
    timeout: float | None = None

    def local_answer(self, method: str, path: str) -> bytes | None:
        return None

    def authenticate(self, target: Target, head: framing.Head) -> Presented:
        token, why = token_of(head)
        return Presented(token, why, target, target.path)

    def verify_request(
        self, claims: Claims, method: str, target: Target, head: framing.Head
    ) -> None:
        return None

    def wants_body(self, method: str, path: str) -> bool:
        return False

    def sign_upstream(self, call: UpstreamCall, secret: UpstreamSecret) -> bytes | None:
        return None  # the resource's own credential header

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any] | None:
        return None  # the gateway's own JSON shape

    def rewrite_response(
        self, verdict: Verdict, status: int, headers: Headers, body: bytes, base: str
    ) -> tuple[Headers, bytes]:
        return headers, body

    def on_response(
        self, verdict: Verdict, status: int, headers: Headers, body: bytes
    ) -> dict[str, Any]:
        return dict(verdict.detail)

    def throttle_headers(self, retry_after: float) -> list[tuple[str, str]]:
        """Headers of the gateway's 429 when a quota throttles (RFC 9110 ``Retry-After``)."""
        return [("Retry-After", str(retry_after_seconds(retry_after)))]

    def finished_run(self, verdict: Verdict, detail: dict[str, Any]) -> str | None:
        """The id of a run this relayed answer shows in a terminal state (its ``runs``
        quota slot is given back), else None; ``detail`` is :meth:`on_response`'s."""
        return None

    async def close(self) -> None:
        return None


def retry_after_seconds(seconds: float) -> int:
    """``Retry-After`` is whole seconds: rounded up, at least 1 (0 would invite a hot loop)."""
    return max(1, math.ceil(seconds))
