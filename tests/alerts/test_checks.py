"""The periodic conditions: credential age per glob, signing keys due or retiring with no
successor, raised once and resolved when they clear; denial groups past max_groups."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lockgate.alerts import checks
from lockgate.alerts.checks import Conditions
from lockgate.alerts.trail_rules import denial_grouper, is_credential_failure
from lockgate.audit.record import AuditRow
from lockgate.config import parse_config
from lockgate.config.alerts import AlertSettings
from lockgate.credentials import CredentialStore
from lockgate.identity import KeyStore

DAY = 86400.0


def settings(**kw: object) -> AlertSettings:
    return AlertSettings.model_validate(kw)


def test_credential_older_than_its_max_age(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials.db", b"m" * 32)
    store.set("orders-api-key", "s3cret-value")
    store.set("other", "x")
    cfg = settings(credential_max_age=[{"credentials": "orders-*", "max_age": 30 * DAY}])
    now = time.time()
    assert checks.credential_age(store, cfg, now) == []
    (alert,) = checks.credential_age(store, cfg, now + 31 * DAY)
    assert (alert.kind, alert.subject, alert.severity) == (
        "credential_age", "orders-api-key", "warning")  # fmt: skip
    assert alert.details["version"] == 1 and alert.details["max_age_seconds"] == 30 * DAY
    assert "s3cret" not in repr(alert) and "lockgate creds rotate orders-api-key" in alert.summary
    # rotated: the condition clears
    conditions = Conditions()
    assert len(conditions.update(["credential_age"], [alert])) == 1
    assert conditions.update(["credential_age"], [alert]) == []  # not again while it lasts
    store.rotate("orders-api-key", "new-value")
    cleared = conditions.update(["credential_age"], checks.credential_age(store, cfg, now + DAY))
    assert [(a.action, a.key) for a in cleared] == [("resolve", alert.key)]
    store.close()


def test_signing_key_rotation_due_and_overdue(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path)
    now = time.time()
    cfg = settings(signing_keys={"rotate_after": 90 * DAY, "warn_within": DAY})
    assert checks.signing_keys(keys, cfg, now) == []
    (soon,) = checks.signing_keys(keys, cfg, now + 89.5 * DAY)
    assert soon.severity == "warning" and soon.subject == "EdDSA"
    (late,) = checks.signing_keys(keys, cfg, now + 91 * DAY)
    assert late.severity == "critical" and late.details["kid"] == keys.current("EdDSA").kid
    conditions = Conditions()
    conditions.update(["signing_key_expiry"], [soon])
    worse = conditions.update(["signing_key_expiry"], [late])
    assert [a.severity for a in worse] == ["critical"]  # worse: alerted again


@dataclass
class Key:
    kid: str
    alg: str
    created: float
    retire_at: float | None


class Keys:
    def __init__(self, *keys: Key) -> None:
        self.keys = list(keys)

    def in_use(self) -> tuple[str, ...]:
        return ("RS256",)

    def current(self, alg: str = "EdDSA") -> Key:
        live = [k for k in self.keys if k.retire_at is None or k.retire_at > time.time()]
        if not live:
            raise ValueError(f"every {alg} signing key is retired")
        return live[-1]

    def published(self) -> list[Key]:
        return self.keys


def test_signing_key_retiring_with_no_successor(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path)
    keys.rotate(retire_after=3600)  # the old key retires in an hour; the new one takes over
    assert checks.signing_keys(keys, settings(), time.time()) == []
    now = time.time()
    alone = Keys(Key("k1", "RS256", now - DAY, now + 3600))  # withdrawn, nothing after it
    (alert,) = checks.signing_keys(alone, settings(), now)
    assert alert.severity == "critical" and "no newer key" in alert.summary
    gone = Keys(Key("k1", "RS256", now - DAY, now - 1))
    (alert,) = checks.signing_keys(gone, settings(), now)
    assert "every RS256 signing key is retired" in alert.summary


def test_credential_failure_rules() -> None:
    assert is_credential_failure(AuditRow(event="allowed", status=401, resource="a"))
    assert not is_credential_failure(AuditRow(event="allowed", status=403, resource="a"))
    assert is_credential_failure(AuditRow(event="upstream_error", reason="credential_unavailable"))
    assert not is_credential_failure(
        AuditRow(event="upstream_error", reason="upstream_unavailable", detail={"error": "EOF"})
    )


def test_groups_beyond_max_groups_are_one_alert() -> None:
    g = denial_grouper(window=1.0, max_groups=2)
    for i in range(5):
        for _ in range(5 - i):
            g.add(AuditRow(event="denied", dag_id=f"dag{i}", principal="p"), now=0.0)
    assert g.due(0.5) == []  # window not passed
    alerts = g.due(1.0)
    assert [a.subject for a in alerts] == ["dag0", "dag1", "_more"]
    more = alerts[-1]
    assert more.details["count"] == 3 + 2 + 1 and more.details["subjects"] == [
        "dag2", "dag3", "dag4"]  # fmt: skip
    assert more.where_to_look(None) == {"command": "lockgate audit search --event denied"}


def test_config_refuses_two_notifiers_of_one_name() -> None:
    import pytest

    with pytest.raises(ValueError, match="used twice"):
        parse_config({"alerts": {"notifiers": [
            {"name": "a", "type": "slack", "url_env": "A"},
            {"name": "a", "type": "webhook", "url_env": "B"},
        ]}})  # fmt: skip
