"""Small fakes with the shapes the gateway engines expect from identity, policy, credentials,
audit and the assertion signer."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any

from lockgate.errors import AuditUnavailable, AuthenticationError


@dataclass
class FakeClaims:
    sub: str
    aud: str
    jti: str
    exp: float = field(default_factory=lambda: time.time() + 900)
    iat: float = field(default_factory=time.time)
    nbf: float = field(default_factory=time.time)
    iss: str = "https://lockgate.test"
    deployment: str = "prod"
    dag_id: str = "finance_daily"
    task_id: str = "load_orders"
    run_id: str | None = "manual__1"
    try_number: int | None = 1
    map_index: int | None = -1

    @property
    def principal(self) -> str:
        return self.sub


def claims_for(resource: str, jti: str = "jti-1", dag: str = "finance_daily") -> FakeClaims:
    return FakeClaims(sub=f"airflow:prod/{dag}/load_orders", aud=resource, jti=jti, dag_id=dag)


class FakeVerifier:
    """``tokens`` maps a token string to claims; anything else is a bad signature."""

    def __init__(self, tokens: dict[str, FakeClaims] | None = None) -> None:
        self.tokens = dict(tokens or {})
        self.revoked: set[str] = set()
        self.calls = 0

    def verify(self, token: str, audience: str) -> FakeClaims:
        self.calls += 1
        claims = self.tokens.get(token)
        if claims is None:
            raise AuthenticationError("bad_signature")
        if claims.jti in self.revoked:
            raise AuthenticationError("revoked")
        if claims.exp < time.time():
            raise AuthenticationError("expired")
        if claims.aud != audience:
            raise AuthenticationError("wrong_audience")
        return claims


@dataclass
class FakeDecision:
    allowed: bool
    rule: str | None
    reason: str

    def explain(self) -> str:
        return (
            f"{'allowed' if self.allowed else 'denied'} by {self.rule}"
            if self.rule
            else self.reason
        )


class FakePolicySet:
    """Deny globs on (action, object) beat allow globs; nothing matching is denied."""

    def __init__(self, allow: list[tuple[str, str]], deny: list[tuple[str, str]] = ()) -> None:
        self.allow = list(allow)
        self.deny = list(deny)
        self.seen: list[Any] = []

    def decide(self, req: Any) -> FakeDecision:
        self.seen.append(req)
        for action, pattern in self.deny:
            if fnmatch.fnmatchcase(req.action, action) and fnmatch.fnmatchcase(req.object, pattern):
                return FakeDecision(False, f"deny-{pattern}", "explicit deny")
        for action, pattern in self.allow:
            if fnmatch.fnmatchcase(req.action, action) and fnmatch.fnmatchcase(req.object, pattern):
                return FakeDecision(True, f"allow-{pattern}", "matched")
        return FakeDecision(False, None, "no rule matches")


class FakePolicy:
    def __init__(self, current: FakePolicySet) -> None:
        self.current = current


@dataclass(frozen=True)
class FakeSecret:
    value: str
    version: int


class FakeBroker:
    """Versions of one or more credentials; the last is current, the one before previous."""

    def __init__(self, versions: dict[str, list[str]]) -> None:
        self.versions = {k: list(v) for k, v in versions.items()}
        self.calls = 0

    async def upstream_secret(
        self, credential_name: str, previous: bool = False
    ) -> FakeSecret | None:
        self.calls += 1
        vs = self.versions.get(credential_name)
        if not vs:
            return None
        idx = len(vs) - (2 if previous else 1)
        if idx < 0:
            return None
        return FakeSecret(vs[idx], idx + 1)


class FakeAudit:
    def __init__(self) -> None:
        self.records: list[Any] = []
        self.ahead: list[Any] = []
        self.writable = True

    def check_writable(self) -> None:
        if not self.writable:
            raise AuditUnavailable("sink failing")

    def write_ahead(self, record: Any) -> str:
        """Written-ahead ("admitted") records are kept apart: ``records`` holds outcomes."""
        self.check_writable()
        self.ahead.append(record)
        return f"fake/{len(self.ahead)}"

    def durable(self) -> None:
        return None

    def emit(self, record: Any) -> None:
        self.records.append(record)

    def events(self) -> list[str]:
        return [r.event for r in self.records]


class FakeSigner:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, claims: Any, resource: str) -> str:
        self.calls += 1
        return f"assert.{claims.jti}.{resource}.{self.calls}"
