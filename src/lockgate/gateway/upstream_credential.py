"""Which version of the upstream credential a database login sends, and what after a refusal.

Shared by the PostgreSQL and CQL engines. A login sends the credential's current value. When
the server refuses it (PostgreSQL SQLSTATE class 28, CQL AuthenticationError) the login is
tried once more (:meth:`CredentialChoice.after_refusal`):

* an access token (a secret with ``expires_at``) refused before its expiry — revoked, clock
  skew — is dropped from the caches and fetched afresh;
* a password or key: the current version again if a rotation the cache had not seen yet
  changed it, else the previous version while the rotation's overlap lasts (the server
  still has the old password: it is changed upstream after the gateway's store).

So that not every login of an overlap window fails once first (a failed login costs the
server a backend and writes a FATAL line to its log), a current version refused and then
passed by the previous one is remembered for :data:`REFUSED_MEMORY_SECONDS` per resource:
logins in that time start with the previous version and fall back to the current one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from lockgate.errors import CredentialError
from lockgate.gateway.caches import SecretCache, UpstreamSecret

REFUSED_MEMORY_SECONDS = 60.0

#: (resource, credential, refused current version) -> remembered until (monotonic seconds)
_refused: dict[tuple[str, str, int], float] = {}


class LoginResource(Protocol):
    """What a choice reads of a cql or postgres resource: its name and credential."""

    @property
    def name(self) -> str: ...

    @property
    def credential(self) -> str: ...


def forget_refusals() -> None:
    """Forget every remembered refusal (tests; a changed credential store)."""
    _refused.clear()


def _is_token(secret: UpstreamSecret) -> bool:
    return getattr(secret, "expires_at", None) is not None


class CredentialChoice:
    """The secrets one login tries: :meth:`first`, then at most one :meth:`after_refusal`;
    :meth:`succeeded` with the one the server took."""

    def __init__(
        self,
        resource: LoginResource,
        secrets: SecretCache,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resource = resource
        self._secrets = secrets
        self._name = resource.credential
        self._clock = clock
        self._current: UpstreamSecret | None = None  # the current version, as first fetched
        self._retried = False

    def _key(self, version: int) -> tuple[str, str, int]:
        return self._resource.name, self._name, version

    async def first(self) -> UpstreamSecret | None:
        """The secret to log in with: the current version, or the previous one while the
        current was recently refused and passed by it. None: the credential has no value.
        Raises CredentialError when the broker cannot give the current version."""
        current = self._current = await self._secrets.get(self._name)
        if current is None or _is_token(current):
            return current
        until = _refused.get(self._key(current.version))
        if until is None or until <= self._clock():
            _refused.pop(self._key(current.version), None)
            return current
        older = await self._previous()
        return older if older is not None and older.version != current.version else current

    async def after_refusal(self, refused: UpstreamSecret) -> UpstreamSecret | None:
        """The secret to try once more after the server refused ``refused``, or None."""
        if self._retried:
            return None
        self._retried = True
        current = self._current
        if current is not None and refused is not current:
            # It started with the previous version on a remembered refusal: the server has
            # moved on to the current one.
            _refused.pop(self._key(current.version), None)
            return current
        try:
            if _is_token(refused):
                self._secrets.forget_token(self._name, refused.version)
                fresh = await self._secrets.get(self._name)
                return fresh if fresh is not None and fresh.value != refused.value else None
            # A rotation the cache had not seen yet may have changed the current version.
            self._secrets.invalidate(self._name)
            newer = await self._secrets.get(self._name)
        except CredentialError:
            return None
        if newer is not None and (newer.version != refused.version or newer.value != refused.value):
            self._current = newer
            return newer
        older = await self._previous()
        return older if older is not None and older.version != refused.version else None

    def succeeded(self, secret: UpstreamSecret | None) -> None:
        """The server took ``secret``: remember a refused current version it stood in for."""
        current = self._current
        if secret is None or current is None or _is_token(current):
            return
        if secret.version == current.version:
            _refused.pop(self._key(current.version), None)
            return
        now = self._clock()
        for key in [k for k, until in _refused.items() if until <= now]:
            del _refused[key]
        _refused[self._key(current.version)] = now + REFUSED_MEMORY_SECONDS

    async def _previous(self) -> UpstreamSecret | None:
        try:
            return await self._secrets.get(self._name, previous=True)
        except CredentialError:
            return None
