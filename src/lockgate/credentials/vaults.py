"""Vault-held credentials: a secret whose value lives in Azure Key Vault or HashiCorp Vault /
OpenBao, fetched by the gateway and used as a static secret is (a header, a Cosmos key, a
Cassandra or PostgreSQL password).

:class:`VaultHeldSecret` is the cache one such credential gets from the broker:

- a fetched value is served for ``ttl`` seconds; then one refresh (single flight, bounded by
  the credential's ``timeout``) asks the vault again, so a new version in the vault is used
  within ``ttl`` without a restart. Callers wait for that refresh at most
  :data:`REFRESH_WAIT` s while the cached value is still servable, then get the cached one;
- the value seen before a change stays usable for ``overlap`` seconds (the broker's
  ``fallback_secret``: an upstream 401 with the new value is retried with the previous);
- the vault out of reach: the cached value is served (a warning logged) until ``ttl +
  grace``, then the credential fails (:class:`~lockgate.errors.CredentialError`, which the
  engines audit as any credential error). A failed refresh is not retried for
  :data:`RETRY_AFTER` s;
- the vault taking the value back (:class:`SecretWithdrawn`: a disabled, expired or not yet
  valid Key Vault version, a deleted or destroyed KV version) or the value reaching the
  expiry the vault gave it: the cached value (and the previous one) is dropped at once,
  never served through ``grace``;
- each distinct value gets a local version number (1, 2, ...): what the engines compare and
  what ``UpstreamSecret.version`` carries; the vault's own version id is kept beside it.
- a vault going back (to the value it had before, or to a lower KV version number: a
  restored snapshot, a secret recreated) is followed, with a warning: it may have brought
  back a revoked value;
- what a vault answers is read up to :data:`MAX_ANSWER` bytes, and repeated in an error
  only as :func:`safe_code` allows: never what the request carried (a token, a secret id).

The fetchers (:mod:`.key_vault`, :mod:`.vault_kv`) never put a value, a vault token or a
secret id in a message; neither does this module. :data:`FetchStatus` is what readiness and
``lockgate creds list`` show: where, which version, when, and the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiohttp

from lockgate import _log
from lockgate.config.credentials import VaultCredential
from lockgate.errors import CredentialError

log = _log.get("credentials")

#: Seconds a request waits for a due refresh while the cached value is still servable.
REFRESH_WAIT = 0.5
#: Seconds a failed refresh is not retried while the cached value is still servable.
RETRY_AFTER = 5.0
#: Bytes of a vault's answer read at most: a Key Vault secret is at most 25 KB and a KV
#: secret a few; a longer answer is not read further (nor held in memory).
MAX_ANSWER = 1024 * 1024


class SecretWithdrawn(CredentialError):
    """The vault says the value must not be used (a disabled, expired or not yet valid Key
    Vault version; a deleted or destroyed KV version): unlike an outage, the cached copy is
    dropped at once, not served through ``grace``."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One answer of a vault: the value and the vault's own version id of it."""

    value: str = field(repr=False)
    vault_version: str
    expires_at: float | None = None  # the vault's own expiry of the value (Key Vault ``exp``)


@dataclass(frozen=True, slots=True)
class Held:
    """A value as the gateway holds it. ``superseded_at``: when a newer one was seen."""

    value: str = field(repr=False)
    version: int  # local: 1, 2, ... per distinct value seen by this process
    vault_version: str
    seen_at: float
    superseded_at: float | None = None
    expires_at: float | None = None  # never used from then on, whatever ttl and grace say


@dataclass(frozen=True, slots=True)
class FetchStatus:
    """What may be shown of a vault-held credential (never the value)."""

    held_at: str
    vault_version: str | None  # None: never fetched
    fetched_at: float | None  # wall clock of the last successful fetch
    error: str | None  # the last refresh's failure, None after a success


Fetch = Callable[[], Awaitable[Fetched]]


class VaultHeldSecret:
    """The cache of one vault-held credential (see the module docstring)."""

    def __init__(
        self,
        cfg: VaultCredential,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._fetch = fetch
        self._clock = clock
        self._on_change = on_change
        self.current: Held | None = None
        self.previous: Held | None = None
        self._last_version = 0  # never reused, not even after a withdrawal emptied the cache
        self._confirmed_at = -math.inf  # wall clock of the last successful fetch
        self._failed_at = -math.inf
        self._error: str | None = None
        self._inflight: asyncio.Future[Held] | None = None
        self._inflight_since = 0.0

    # -- reads -----------------------------------------------------------------------------
    async def get(self) -> Held:
        """The current value: cached while fresh, else refreshed (see the module docstring)."""
        now = self._clock()
        held = self.current
        if held is not None and held.expires_at is not None and now >= held.expires_at:
            self._expired(held)
        if held is not None and now < self._confirmed_at + self.cfg.ttl:
            return held
        servable = held is not None and now < self._confirmed_at + self.cfg.ttl + self.cfg.grace
        if now < self._failed_at + RETRY_AFTER and not self._refreshing():
            # A vault that just failed is not asked again at the rate requests come.
            if servable:
                assert held is not None
                return held
            raise CredentialError(self._error or f"credential {self.cfg.name!r}: vault refused")
        fut = self._start_refresh()
        if not servable:
            return await asyncio.shield(fut)
        assert held is not None
        waited = time.monotonic() - self._inflight_since
        try:
            return await asyncio.wait_for(asyncio.shield(fut), max(0.0, REFRESH_WAIT - waited))
        except TimeoutError:
            return held  # the refresh goes on; a slow vault must not stall requests
        except SecretWithdrawn:
            raise  # the vault took the value back: never served again
        except CredentialError:
            return held  # logged by the refresh; served until ttl + grace

    def previous_within_overlap(self) -> Held | None:
        """The value seen before the current one while inside ``overlap``, else None."""
        prev = self.previous
        if prev is None or prev.superseded_at is None:
            return None
        now = self._clock()
        if now >= prev.superseded_at + self.cfg.overlap:
            return None
        if prev.expires_at is not None and now >= prev.expires_at:
            return None
        return prev

    def due(self) -> bool:
        """True when a background refresh would be worth starting now."""
        now = self._clock()
        if self._refreshing():
            return False
        return now >= self._confirmed_at + self.cfg.ttl and now >= self._failed_at + RETRY_AFTER

    def refresh_soon(self) -> None:
        """Start a refresh in the background (a server tick: fetch before the first request,
        pick up rotations without traffic). Its failure is logged, not raised."""
        if self.due():
            self._start_refresh()

    def status(self) -> FetchStatus:
        held = self.current
        fetched = self._confirmed_at if held is not None else None
        return FetchStatus(
            self.cfg.held_at, held.vault_version if held else None, fetched, self._error
        )

    def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()

    # -- refresh ---------------------------------------------------------------------------
    def _refreshing(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    def _start_refresh(self) -> asyncio.Future[Held]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._refresh())
            self._inflight_since = time.monotonic()
            self._inflight.add_done_callback(_retrieved)
        return self._inflight

    async def _refresh(self) -> Held:
        try:
            async with asyncio.timeout(self.cfg.timeout):
                fetched = await self._fetch()
        except TimeoutError:
            self._failed(f"credential {self.cfg.name!r}: the vault did not answer in "
                         f"{self.cfg.timeout:g}s")  # fmt: skip
        except SecretWithdrawn as exc:
            self._withdrawn(exc)
        except CredentialError as exc:
            self._failed(str(exc))
        except Exception as exc:  # a fetcher's bug or an odd answer: a credential error too,
            # named by its type only (its text may carry whatever the vault sent)
            self._failed(
                f"credential {self.cfg.name!r}: reading the vault failed ({type(exc).__name__})"
            )
        if fetched.value != fetched.value.strip():
            # As `lockgate creds set` does: a value written from a file (`az keyvault secret
            # set --file`, `vault kv put field=@file`) keeps the file's last newline, which
            # no header, key or password means.
            fetched = Fetched(fetched.value.strip(), fetched.vault_version, fetched.expires_at)
        if not fetched.value:
            self._failed(f"credential {self.cfg.name!r}: the vault holds an empty value")
        if not fetched.value.isascii():
            try:  # JSON may carry a lone surrogate: no engine could encode it to send it
                fetched.value.encode("utf-8")
            except UnicodeEncodeError:
                self._failed(f"credential {self.cfg.name!r}: the vault holds a value that is "
                             "not valid text (a lone surrogate)")  # fmt: skip
        return self._took(fetched)

    def _withdrawn(self, exc: SecretWithdrawn) -> NoReturn:
        """Forget the value the vault took back (and the one before it: the vault's answer
        is about what it holds now), so no request uses it from here on."""
        had = self.current is not None
        self.current = self.previous = None
        self._confirmed_at = -math.inf
        self._failed_at = self._clock()
        self._error = str(exc)
        log.warning(
            "vault withdrew the credential's value; it is no longer used",
            extra={"fields": {"credential": self.cfg.name, "error": self._error}},
        )
        if had and self._on_change is not None:
            self._on_change()  # the engines' secret caches drop it too
        raise exc

    def _expired(self, held: Held) -> NoReturn:
        """The cached value reached the expiry its vault gave it: withdrawn, like a vault's
        refusal of it (the vault would say so at the next fetch)."""
        self._withdrawn(
            SecretWithdrawn(
                f"credential {self.cfg.name!r}: the value fetched from {self.cfg.held_at} "
                f"(version {held.vault_version or '?'}) has expired"
            )
        )

    def _failed(self, message: str) -> NoReturn:
        self._failed_at = self._clock()
        self._error = message
        left = self._confirmed_at + self.cfg.ttl + self.cfg.grace - self._clock()
        if self.current is not None and left > 0:
            log.warning(
                "vault refresh failed; serving the cached value",
                extra={"fields": {"credential": self.cfg.name, "error": message,
                                  "served_for": round(left)}},
            )  # fmt: skip
        else:
            log.warning(
                "vault fetch failed; the credential has no value to serve",
                extra={"fields": {"credential": self.cfg.name, "error": message}},
            )
        raise CredentialError(message) from None  # the cause's text is not ours to repeat

    def _took(self, fetched: Fetched) -> Held:
        now = self._clock()
        self._confirmed_at = now
        self._error = None
        held = self.current
        if held is not None and fetched.value == held.value:
            if (fetched.vault_version, fetched.expires_at) != (held.vault_version, held.expires_at):
                # Same value under a new version id or expiry: nothing to rotate to.
                held = Held(
                    held.value, held.version, fetched.vault_version, held.seen_at,
                    expires_at=fetched.expires_at,
                )  # fmt: skip
                self.current = held
            return held
        version = self._last_version = self._last_version + 1
        if held is not None and self._went_back(held, fetched):
            # Used (the vault is the source of truth), but an operator must hear of it: a
            # restored snapshot or a recreated secret may bring back a revoked value.
            log.warning(
                "vault-held credential went back to an earlier value or version",
                extra={"fields": {"credential": self.cfg.name,
                                  "vault_version": fetched.vault_version,
                                  "previous_vault_version": held.vault_version}},
            )  # fmt: skip
        if held is not None:
            self.previous = Held(
                held.value, held.version, held.vault_version, held.seen_at, superseded_at=now,
                expires_at=held.expires_at,
            )  # fmt: skip
        self.current = Held(
            fetched.value, version, fetched.vault_version, now, expires_at=fetched.expires_at
        )
        log.info(
            "vault-held credential fetched" if held is None else "vault-held credential rotated",
            extra={"fields": {"credential": self.cfg.name, "vault_version": fetched.vault_version,
                              "version": version}},
        )  # fmt: skip
        if self._on_change is not None:
            self._on_change()
        return self.current

    def _went_back(self, held: Held, fetched: Fetched) -> bool:
        """The new value is the one superseded before, or its version number is lower."""
        if self.previous is not None and fetched.value == self.previous.value:
            return True
        new, old = fetched.vault_version, held.vault_version
        return new.isdecimal() and old.isdecimal() and int(new) < int(old)


def _retrieved(fut: asyncio.Future[Held]) -> None:
    """Mark a refresh's failure retrieved: callers that gave up must not cause a warning."""
    if not fut.cancelled():
        with contextlib.suppress(BaseException):
            fut.exception()


async def json_answer(resp: aiohttp.ClientResponse, credential: str) -> dict[str, Any]:
    """The JSON object a vault answered (``{}`` for anything else: not JSON, too deep, not
    an object), read no further than :data:`MAX_ANSWER` bytes."""
    too_large = CredentialError(
        f"credential {credential!r}: the vault's answer is larger than {MAX_ANSWER} bytes"
    )
    if (resp.content_length or 0) > MAX_ANSWER:
        raise too_large
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER:
            raise too_large
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return {}
    return decoded if isinstance(decoded, dict) else {}


_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.:,()\"'")
#: What splits a message into the words :func:`secret_like` looks at.
_WORD_BREAKS = re.compile("[ ,()\"']+")


def safe_code(value: object, limit: int = 120, *, sent: Iterable[str] = ()) -> str | None:
    """An error code or message a vault answered, when it is short plain words (a slug,
    ``permission denied``, ``invalid subject (sub) claim``), else None: a body may echo
    anything back. ``sent``: what the request carried (a token, a secret id, a role id); an
    answer repeating any of it, or a word that looks like a credential
    (:func:`secret_like`), is not repeated either."""
    if not isinstance(value, str) or not value or len(value) > limit:
        return None
    if not set(value) <= _CODE_CHARS:
        return None
    sent = tuple(sent)
    return None if any(secret_like(w, sent) for w in _WORD_BREAKS.split(value)) else value


def secret_like(word: str, sent: Iterable[str] = ()) -> bool:
    """True for a word that may be (part of) a credential: a piece of what was ``sent``
    (8 characters or more), or a long run mixing letters and digits (a token, a UUID) that
    no error code of Key Vault (``SecretNotFound``) or Vault (``permission denied``) is."""
    if len(word) >= 8 and any(len(s) >= 8 and (word in s or s in word) for s in sent):
        return True
    return len(word) >= 16 and any(c.isdigit() for c in word) and any(c.isalpha() for c in word)


__all__ = [
    "MAX_ANSWER",
    "REFRESH_WAIT",
    "RETRY_AFTER",
    "FetchStatus",
    "Fetched",
    "Held",
    "SecretWithdrawn",
    "VaultHeldSecret",
    "json_answer",
    "safe_code",
    "secret_like",
]
