"""Conditions looked at every ``alerts.check_interval`` seconds, raised and resolved.

- ``audit_refusing`` (critical): this process's audit log cannot take records (its writer
  failed, stalled past ``audit.write_timeout`` or is full), so every request is refused;
  also raised when ``lockgate_audit_write_failures_total`` moved since the last look.
  Checked by every replica for itself (the subject names the replica).
- ``credential_age`` (warning): a credential whose name matches an
  ``alerts.credential_max_age`` glob has a current version older than its ``max_age``.
- ``signing_key_expiry``: an algorithm's current signing key is past (critical) or within
  ``signing_keys.warn_within`` of (warning) its planned rotation (``rotate_after`` from its
  creation), or it is scheduled to retire with no newer key to take over (critical when
  within the warning time: tokens would stop being signed); every key of an algorithm in
  use retired is critical.

A condition is alerted on when it appears or gets worse, and resolved when it clears.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from lockgate import metrics
from lockgate.alerts.model import Alert, Severity
from lockgate.config.alerts import AlertSettings
from lockgate.credentials.describe import max_age_of

_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}


class AuditHealth(Protocol):
    def check_writable(self) -> None:
        """Raise (``AuditUnavailable``) when records cannot be written in time."""
        ...


class VersionInfoLike(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def created_at(self) -> float: ...


class CredentialsLike(Protocol):
    def names(self, *, fresh: bool = True) -> list[str]: ...
    def versions(self, name: str) -> Iterable[VersionInfoLike]: ...


class SigningKeyLike(Protocol):
    @property
    def kid(self) -> str: ...
    @property
    def alg(self) -> str: ...
    @property
    def created(self) -> float: ...
    @property
    def retire_at(self) -> float | None: ...


class KeysLike(Protocol):
    def in_use(self) -> tuple[str, ...]: ...
    def current(self, alg: str = ...) -> SigningKeyLike: ...
    def published(self) -> Sequence[SigningKeyLike]: ...


class Conditions:
    """Which conditions are raised now; alerts for what changed since the last look."""

    def __init__(self) -> None:
        self.raised: dict[str, Alert] = {}

    def update(self, kinds: Iterable[str], now_raised: Iterable[Alert]) -> list[Alert]:
        """The conditions of ``kinds`` as found now: triggers for new or worse, resolves for
        those gone."""
        kinds = set(kinds)
        current = {a.key: a for a in now_raised}
        out: list[Alert] = []
        for key, alert in current.items():
            before = self.raised.get(key)
            if before is None or _RANK[alert.severity] > _RANK[before.severity]:
                out.append(alert)
            self.raised[key] = alert
        for key, before in list(self.raised.items()):
            if before.kind in kinds and key not in current:
                del self.raised[key]
                out.append(_resolved(before))
        return out


def _resolved(alert: Alert) -> Alert:
    return Alert(
        kind=alert.kind,
        severity="info",
        summary=f"resolved: {alert.summary}",
        subject=alert.subject,
        action="resolve",
        deployment=alert.deployment,
        resource=alert.resource,
        details=dict(alert.details),
    )


class AuditRefusing:
    """This process's audit sink, as the gateway's readiness sees it."""

    def __init__(self, audit: AuditHealth | None, replica: str) -> None:
        self.audit = audit
        self.replica = replica
        self._failures = self._failure_count()

    @staticmethod
    def _failure_count() -> float:
        value = metrics.sample_value("lockgate_audit_write_failures_total")
        return value or 0.0

    def check(self) -> list[Alert]:
        why: str | None = None
        if self.audit is not None:
            try:
                self.audit.check_writable()
            except Exception as exc:  # AuditUnavailable: its message says why (no secret)
                why = str(exc) or type(exc).__name__
        failures = self._failure_count()
        if why is None and failures > self._failures:
            why = f"{int(failures - self._failures)} audit write(s) failed or timed out"
        self._failures = failures
        if why is None:
            return []
        return [
            Alert(
                kind="audit_refusing",
                severity="critical",
                summary=f"audit trail refusing records on {self.replica}: requests are "
                f"refused until it recovers ({why})",
                subject=self.replica,
                details={"replica": self.replica, "error": why},
            )
        ]


def credential_age(
    credentials: CredentialsLike, settings: AlertSettings, now: float
) -> list[Alert]:
    """Credentials whose current version is older than the max_age their glob gives."""
    rules = settings.credential_max_age
    if not rules:
        return []
    out: list[Alert] = []
    for name in credentials.names():
        limit = max_age_of(name, rules)
        if limit is None:
            continue
        versions = list(credentials.versions(name))
        if not versions:
            continue
        current = versions[-1]
        age = now - current.created_at
        if age <= limit:
            continue
        out.append(
            Alert(
                kind="credential_age",
                severity="warning",
                summary=f"credential {name} version {current.version} is "
                f"{_duration(age)} old (max_age {_duration(limit)}): rotate it "
                f"(lockgate creds rotate {name})",
                subject=name,
                details={
                    "credential_name": name,
                    "version": current.version,
                    "age_seconds": int(age),
                    "max_age_seconds": int(limit),
                },
                search={"event": "credential_rotated"},
            )
        )
    return out


def signing_keys(keys: KeysLike, settings: AlertSettings, now: float) -> list[Alert]:
    """Signing keys due for rotation, or retiring with nothing to take over."""
    cfg = settings.signing_keys
    out: list[Alert] = []
    for alg in keys.in_use():
        try:
            cur = keys.current(alg)
        except ValueError:
            out.append(_key_alert(alg, None, "critical", f"every {alg} signing key is retired: "
                                  "nothing signs (lockgate keys rotate)", {}))  # fmt: skip
            continue
        if cur.retire_at is not None and cur.retire_at - now <= cfg.warn_within:
            newer = [k for k in keys.published()
                     if k.alg == alg and k.kid != cur.kid and k.retire_at is None]  # fmt: skip
            if not newer:
                out.append(_key_alert(
                    alg, cur, "critical",
                    f"{alg} signing key {cur.kid} retires {_when(cur.retire_at, now)} with no "
                    "newer key to take over (lockgate keys rotate)",
                    {"retire_at": int(cur.retire_at)},
                ))  # fmt: skip
                continue
        if cfg.rotate_after is None:
            continue
        due = cur.created + cfg.rotate_after
        if now >= due:
            severity: Severity = "critical"
        elif due - now <= cfg.warn_within:
            severity = "warning"
        else:
            continue
        out.append(_key_alert(
            alg, cur, severity,
            f"{alg} signing key {cur.kid} rotation due {_when(due, now)} "
            "(lockgate keys rotate)",
            {"due_at": int(due), "age_seconds": int(now - cur.created)},
        ))  # fmt: skip
    return out


def _key_alert(
    alg: str, key: SigningKeyLike | None, severity: Severity, summary: str,
    extra: dict[str, object],
) -> Alert:  # fmt: skip
    details: dict[str, object] = {"alg": alg, **extra}
    if key is not None:
        details["kid"] = key.kid
    return Alert(
        kind="signing_key_expiry",
        severity=severity,
        summary=summary,
        subject=alg,
        details=details,
        search={"event": "key_rotated"},
    )


def _duration(seconds: float) -> str:
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _when(at: float, now: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    if at <= now:
        return f"{_duration(now - at)} ago ({stamp})"
    return f"in {_duration(at - now)} ({stamp})"


CheckFn = Callable[[float], list[Alert]]

__all__ = [
    "AuditHealth",
    "AuditRefusing",
    "CheckFn",
    "Conditions",
    "credential_age",
    "signing_keys",
]
