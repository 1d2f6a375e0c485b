"""The Lockgate exception tree.

Every package raises subclasses of these so callers can map them to a protocol's native
error (HTTP status, CQL error code, SQLSTATE) in one place. Messages carry names and ids,
never a token or a secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotation only: identity builds on this module, not it on identity
    from lockgate.identity.model import Claims


class LockgateError(Exception):
    """Base of every error Lockgate raises on purpose."""


class ConfigError(LockgateError, ValueError):
    """A configuration file is missing, unreadable or invalid.

    The message names the file, the field path and what was expected.
    """


class AuthenticationError(LockgateError):
    """A token or proof is missing, malformed, expired, revoked or for someone else.

    ``reason`` is a short machine-readable slug (``expired``, ``bad_signature`` ...) used for
    metrics and the ``WWW-Authenticate`` error description. ``claims`` are the token's claims
    when its signature verified but it was refused anyway (expired, revoked, wrong audience),
    so the refusal can be audited against its DAG; None when nothing about it can be trusted.
    """

    def __init__(
        self, reason: str, message: str | None = None, *, claims: Claims | None = None
    ) -> None:
        self.reason = reason
        self.claims = claims
        super().__init__(message or reason)


class ProtocolError(LockgateError):
    """Bytes that do not follow the protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something we refuse to parse or forward; answer natively and close."""


class LocalProtocolError(ProtocolError):
    """We tried to send something illegal: a bug in Lockgate."""


class UpstreamError(LockgateError):
    """The upstream service failed."""


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or answered 502/503/504; retryable."""


class UpstreamAuthFailed(UpstreamUnavailable):
    """The upstream refused the gateway's own credential (e.g. SQLSTATE 28P01)."""


class UpstreamThrottled(UpstreamError):
    """The upstream answered 429; ``retry_after`` is in seconds when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class CredentialError(LockgateError):
    """An upstream credential is missing, undecryptable or could not be obtained."""


class AuditUnavailable(LockgateError):
    """The audit sink cannot write; allowed requests are refused until it recovers."""


class StoreUnavailable(LockgateError):
    """Shared state cannot be reached or used (PostgreSQL down, a timeout, a schema that is
    not current). The message names the database by its label (a file path, or the DSN
    without its password) and says what to do; it never carries a password."""
