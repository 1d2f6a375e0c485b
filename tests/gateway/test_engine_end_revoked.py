"""Which engines end sessions of revoked tokens, and how the server asks them all."""

from __future__ import annotations

from typing import Any, cast

from lockgate.gateway import registry
from lockgate.gateway.engine import EndsRevokedSessions, RevocationCheck, end_revoked_sessions
from lockgate.identity import Claims

from .fakes import FakeClaims, claims_for


def test_engines_with_long_sessions_end_revoked_ones_and_http_needs_not() -> None:
    ends = {
        kind
        for kind in registry.kinds()
        if issubclass(registry.engine_class(kind), EndsRevokedSessions)
    }
    assert ends == {"cql", "postgres"}  # HTTP verifies the token of every request


class _Ending:
    """An engine with sessions: one claims object per open session."""

    def __init__(self, *jtis: str) -> None:
        self.sessions: list[FakeClaims] = [claims_for("r", jti) for jti in jtis]
        self.asked = 0

    def end_revoked(self, is_revoked: RevocationCheck) -> int:
        self.asked += 1
        ended = [s for s in self.sessions if is_revoked(cast(Claims, s))]
        self.sessions = [s for s in self.sessions if s not in ended]
        return len(ended)

    def open(self) -> list[str]:
        return [s.jti for s in self.sessions]


class _Stateless:
    """An engine without long sessions (no end_revoked)."""


def test_every_engine_that_can_is_asked_and_the_ends_are_counted() -> None:
    first, second = _Ending("a", "b"), _Ending("b", "c")

    def revoked(claims: Any) -> bool:
        return bool(claims.jti == "b")

    assert end_revoked_sessions([first, _Stateless(), second], revoked) == 2
    assert (first.open(), second.open()) == (["a"], ["c"])
    assert (first.asked, second.asked) == (1, 1)
