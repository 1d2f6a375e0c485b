"""Per-resource profiles: upstream-specific knowledge the generic HTTP engine lacks.

A resource with ``profile: <name>`` hands some of its requests to a :class:`Profile`:

* ``local_answer`` — answer without a token or the upstream (discovery probes);
* ``wants_body`` — the complete request body is read first (bounded by ``max_body``;
  over the bound the gateway answers 413) so that classification can see it;
* ``authorize`` — classify with path, query and body into (action, object), ask policy
  through the ``decide`` callback (possibly for more than one object), apply the
  profile's own checks (guardrails, ownership), and return a :class:`Verdict`;
* ``on_response`` — see the (small, captured) response of an allowed request and return
  audit detail; state such as started run ids is recorded here.

Requests of profiled resources always take the task path (no callback fast path): the
profile may need an upstream lookup before deciding.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: (action, object) -> a policy decision (``allowed``, ``rule``, ``reason``, ``explain()``).
Decide = Callable[[str, str], Any]
#: -> the upstream auth headers, with the gateway's current credential.
UpstreamHeaders = Callable[[], Awaitable[dict[str, str]]]


@dataclass(slots=True)
class ProfileRequest:
    method: str
    path: str  # normalised, without any resource prefix
    query: str
    body: bytes  # complete when the profile wanted it, else b""
    claims: Any
    principal: str
    default: tuple[str, str]  # what the resource's generic route table says


@dataclass(slots=True)
class Verdict:
    """The profile's answer for one request."""

    allowed: bool
    action: str
    obj: str
    reason: str
    rule: str | None = None
    decision: Any = None  # the policy decision that allowed it
    status: int = 403  # when refused
    slug: str = "forbidden"  # error slug when status is not 403
    capture: bool = False  # wants the response body in on_response
    state: Any = None  # profile-private, handed back to on_response
    detail: dict[str, Any] = field(default_factory=dict)  # audit detail known up front


class Profile(Protocol):
    max_body: int

    def local_answer(self, method: str, path: str) -> bytes | None: ...

    def wants_body(self, method: str, path: str) -> bool: ...

    async def authorize(
        self, req: ProfileRequest, decide: Decide, headers: UpstreamHeaders
    ) -> Verdict: ...

    def on_response(
        self, verdict: Verdict, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def make_profile(resource: Any, target: Any, data_dir: Path | None) -> Profile | None:
    """The profile object for ``resource`` (None without ``profile:``)."""
    name = getattr(resource, "profile", None)
    if name is None:
        return None
    if name == "databricks":
        from lockgate.gateway.http.profiles.databricks import DatabricksProfile
        from lockgate.gateway.http.profiles.registry import RunRegistry

        registry = RunRegistry(data_dir / "databricks_runs.db" if data_dir else None)
        return DatabricksProfile(resource, target, registry)
    if name == "cosmos":
        from lockgate.gateway.http.profiles.cosmos import CosmosProfile

        return CosmosProfile.for_resource(resource, target, data_dir)
    if name == "arm":
        from lockgate.gateway.http.profiles.arm import AdfRuns, ArmProfile

        return ArmProfile(resource, AdfRuns(data_dir / "adf_runs.db" if data_dir else None))
    raise ValueError(f"resource {resource.name}: unknown profile {name!r}")


__all__ = ["Decide", "Profile", "ProfileRequest", "UpstreamHeaders", "Verdict", "make_profile"]
