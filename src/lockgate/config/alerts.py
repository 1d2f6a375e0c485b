"""``alerts:``: where Lockgate sends alerts (webhook, Slack, PagerDuty) and on what.

Off when no notifier is configured. The room that sends them is :mod:`lockgate.alerts`.
Secrets (a webhook URL, Slack's incoming-webhook URL, a PagerDuty routing key, the HMAC key
that signs webhook bodies) are never written here: each is read from a file (``*_file``) or
an environment variable (``*_env``) when the alerts start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, model_validator

from lockgate.config._base import NAME_RE, Section

AlertKind = Literal[
    "denials",
    "audit_refusing",
    "credential_failure",
    "rotation_failure",
    "credential_age",
    "signing_key_expiry",
]
#: Every alert kind, in the order the docs list them.
ALERT_KINDS: tuple[AlertKind, ...] = get_args(AlertKind)


class NotifierSettings(Section):
    """One destination. ``webhook`` needs a URL (and signs with ``hmac_key_*`` when given),
    ``slack`` an incoming-webhook URL, ``pagerduty`` an Events API v2 routing key."""

    name: str = Field(pattern=NAME_RE)
    type: Literal["webhook", "slack", "pagerduty"]
    url_file: Path | None = Field(default=None, description="file holding the URL (a secret)")
    url_env: str | None = Field(default=None, description="env var holding the URL")
    routing_key_file: Path | None = None
    routing_key_env: str | None = None
    hmac_key_file: Path | None = Field(
        default=None, description="webhook: file holding the key the body is signed with"
    )
    hmac_key_env: str | None = None
    events_url: str = Field(
        default="https://events.pagerduty.com/v2/enqueue",
        description="pagerduty: the Events API v2 endpoint (EU: events.eu.pagerduty.com)",
    )
    events: list[AlertKind] = Field(
        default=list(ALERT_KINDS), min_length=1, description="alert kinds sent here"
    )
    min_interval: float = Field(
        default=60.0,
        ge=0,
        description="seconds between two alerts of one kind on one subject (a DAG, a "
        "credential, a key); resolves always pass",
    )
    timeout: float = Field(default=10.0, gt=0, le=120, description="seconds per attempt")
    max_attempts: int = Field(default=5, ge=1, le=20)
    queue_size: int = Field(default=100, ge=1, le=10000, description="alerts waiting, at most")

    @model_validator(mode="after")
    def _one_source_each(self) -> NotifierSettings:
        if self.type == "pagerduty":
            need = ("routing_key", self.routing_key_file, self.routing_key_env)
        else:
            need = ("url", self.url_file, self.url_env)
        what, from_file, from_env = need
        if (from_file is None) == (from_env is None):
            raise ValueError(
                f"notifier {self.name}: give exactly one of {what}_file or {what}_env "
                "(never the secret itself)"
            )
        if self.hmac_key_file is not None and self.hmac_key_env is not None:
            raise ValueError(f"notifier {self.name}: hmac_key_file or hmac_key_env, not both")
        return self


class DenialAlerts(Section):
    window: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="seconds denials of one DAG are gathered into one alert",
    )
    max_groups: int = Field(
        default=20,
        ge=1,
        description="DAGs alerted on by name per window; the rest are one summary alert",
    )


class CredentialMaxAge(Section):
    credentials: str = Field(description="credential name or glob (fnmatch)")
    max_age: float = Field(gt=0, description="seconds a current version may be old")


class SigningKeyAlerts(Section):
    rotate_after: float | None = Field(
        default=None,
        gt=0,
        description="seconds after which a current signing key is due for rotation "
        "(None: keys have no planned rotation, only retirements are watched)",
    )
    warn_within: float = Field(
        default=86400.0,
        ge=0,
        description="seconds before a planned rotation or retirement to warn",
    )


class AlertSettings(Section):
    """Notifiers and the events that raise alerts."""

    notifiers: list[NotifierSettings] = []
    console_url: str | None = Field(
        default=None,
        description="base URL of the audit console; alerts link there instead of naming the "
        "`lockgate audit search` command",
    )
    check_interval: float = Field(
        default=30.0, gt=0, le=3600, description="seconds between health and age checks"
    )
    poll_interval: float = Field(
        default=2.0, gt=0, le=60, description="seconds between reads of the audit trail"
    )
    denials: DenialAlerts = DenialAlerts()
    credential_max_age: list[CredentialMaxAge] = []
    signing_keys: SigningKeyAlerts = SigningKeyAlerts()

    @property
    def enabled(self) -> bool:
        return bool(self.notifiers)

    @model_validator(mode="after")
    def _names_unique(self) -> AlertSettings:
        names = [n.name for n in self.notifiers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"alerts.notifiers: name {twice[0]!r} is used twice")
        return self


__all__ = [
    "ALERT_KINDS",
    "AlertKind",
    "AlertSettings",
    "CredentialMaxAge",
    "DenialAlerts",
    "NotifierSettings",
    "SigningKeyAlerts",
]
