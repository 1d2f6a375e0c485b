"""Per-resource profiles: upstream-specific knowledge the generic HTTP exchange lacks.

A resource with ``profile: <name>`` plugs a :class:`Profile` into the one HTTP exchange
(:mod:`lockgate.gateway.http.exchange`). The exchange keeps the safety rules (normalised
path, deny by default, every refusal audited, the admitted record durable before any
upstream byte, retries, size caps, framing checks); a profile only answers the hooks below.
:class:`ProfileBase` gives each its generic default.

* ``local_answer`` — answer without a token or the upstream (discovery probes);
* ``authenticate`` — where the request carries its Lockgate token (default: the
  ``Authorization`` header; Cosmos DB: a ``/_t/<token>/`` path prefix) and the target the
  rest of the exchange sees;
* ``verify_request`` — a check that needs the verified claims (Cosmos DB: the request's
  master-key signature made with the task key);
* ``wants_body`` — the complete request body is read first (bounded by ``max_body``;
  over the bound the gateway answers 413) so that classification can see it;
* ``authorize`` — classify with path, query and body into (action, object), ask policy
  through the ``decide`` callback (possibly for more than one object), apply the
  profile's own checks (guardrails, ownership), and return a :class:`Verdict`;
* ``sign_upstream`` — the credential header lines of one upstream attempt (Cosmos DB: a
  signature over verb, resource and a fresh ``x-ms-date``); default: the resource's header;
* ``error_body`` — the upstream's error shape around the gateway's own answers, so the
  client's SDK shows the reason;
* ``rewrite_response`` — change a small, fully buffered response (``Verdict.rewrite``);
* ``on_response`` — see the allowed request's response (headers; the body when
  ``Verdict.capture``) and return audit detail; state such as started run ids is kept here.

Profiles import only these types, never the proxy. Requests of profiled resources take the
task path (no callback fast path): a profile may need an upstream lookup before deciding.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from lockgate.gateway.engine import Decision, UpstreamSecret
from lockgate.gateway.http import framing
from lockgate.gateway.http.bearer import token_of
from lockgate.gateway.http.normalize import Target
from lockgate.gateway.http.retry import RETRY_STATUSES

if TYPE_CHECKING:
    from lockgate.config import HttpResource
    from lockgate.gateway.http.upstream import UpstreamTarget
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

    async def close(self) -> None:
        return None


def make_profile(
    resource: HttpResource, target: UpstreamTarget, data_dir: Path | None
) -> Profile | None:
    """The profile object for ``resource`` (None without ``profile:``)."""
    name = getattr(resource, "profile", None)
    if name is None:
        return None
    if name == "databricks":
        from lockgate.gateway.http.profiles.databricks import DatabricksProfile, RunRegistry

        registry = RunRegistry(data_dir / "databricks_runs.db" if data_dir else None)
        return DatabricksProfile(resource, target, registry)
    if name == "cosmos":
        from lockgate.gateway.http.profiles.cosmos import CosmosProfile

        return CosmosProfile.for_resource(resource, target, data_dir)
    if name == "arm":
        from lockgate.gateway.http.profiles.arm import AdfRuns, ArmProfile

        return ArmProfile(resource, AdfRuns(data_dir / "adf_runs.db" if data_dir else None))
    raise ValueError(f"resource {resource.name}: unknown profile {name!r}")


__all__ = [
    "Decide",
    "Headers",
    "Presented",
    "Profile",
    "ProfileBase",
    "ProfileRequest",
    "UpstreamCall",
    "UpstreamHeaders",
    "Verdict",
    "make_profile",
]
