"""Value types of the identity room: who a task is, what its token says, what policy decided.

Rules: everything here is immutable and cheap to build; the verifier builds a :class:`Claims`
per fresh token, so no validation beyond types happens in constructors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lockgate.tracing import valid_traceparent

# The Lockgate-specific claims every token carries besides the registered JWT ones.
TASK_CLAIMS = ("deployment", "dag_id", "task_id", "run_id", "try_number", "map_index")
REGISTERED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti")
_INT_CLAIMS = frozenset({"exp", "iat", "nbf", "try_number", "map_index"})
# Optional: the W3C trace context of the task that asked for the token, so the gateway's
# spans join its trace (docs/tracing.md). Absent from tokens minted without one.
TRACEPARENT = "traceparent"


@dataclass(frozen=True, slots=True)
class TaskIdentity:
    """One try of one Airflow task instance in one deployment."""

    deployment: str
    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    map_index: int = -1

    @property
    def principal(self) -> str:
        return f"airflow:{self.deployment}/{self.dag_id}/{self.task_id}"


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified payload of a Lockgate token. ``aud`` is the resource name."""

    iss: str
    sub: str
    aud: str
    exp: int
    iat: int
    nbf: int
    jti: str
    deployment: str
    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    map_index: int
    traceparent: str | None = None  # a valid version-00 W3C traceparent, or None

    @property
    def identity(self) -> TaskIdentity:
        return TaskIdentity(
            self.deployment,
            self.dag_id,
            self.task_id,
            self.run_id,
            self.try_number,
            self.map_index,
        )

    @property
    def principal(self) -> str:
        return self.sub

    @property
    def ttl(self) -> int:
        """Lifetime the token was issued with, in seconds."""
        return self.exp - self.iat

    def to_payload(self) -> dict[str, Any]:
        payload = {name: getattr(self, name) for name in REGISTERED_CLAIMS + TASK_CLAIMS}
        if self.traceparent is not None:
            payload[TRACEPARENT] = self.traceparent
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Claims | None:
        """Build from a decoded JWT payload; ``None`` if a claim is missing or mistyped.

        ``bool`` is rejected where an ``int`` is expected (``True`` is an int in Python).
        A ``traceparent`` that is not a valid W3C one is dropped, never a refusal: it only
        places spans in a trace.
        """
        values: dict[str, Any] = {}
        for name in REGISTERED_CLAIMS + TASK_CLAIMS:
            v = payload.get(name)
            if name in _INT_CLAIMS:
                if type(v) is not int:
                    return None
            elif type(v) is not str or not v:
                return None
            values[name] = v
        values[TRACEPARENT] = valid_traceparent(payload.get(TRACEPARENT))
        claims = cls(**values)
        # sub is derived, never chosen: a mismatch means the payload was not minted by us.
        if claims.sub != claims.identity.principal:
            return None
        return claims


@dataclass(frozen=True, slots=True)
class MintDecision:
    """What the injected mint policy answered for one token request."""

    allowed: bool
    ttl: int = 0
    reason: str = ""
    rule: str | None = None
