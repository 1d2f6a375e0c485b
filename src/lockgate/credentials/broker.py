"""CredentialBroker: the one door engines use to get what goes on an upstream request.

- ``static``: the stored secret itself.
- ``managed_identity``: the host's managed identity token (IMDS or App Service), nothing
  stored; cached and refreshed like OAuth2 tokens.
- ``federated``: an access token for a JWT the gateway signs with its own signing keys
  (:mod:`.federation`: Entra ID workload identity federation, Databricks token federation),
  nothing stored; cached and refreshed like OAuth2 tokens, a fresh assertion per exchange.
- ``azure_key_vault`` / ``vault_kv``: a secret held in Azure Key Vault or HashiCorp Vault /
  OpenBao (:mod:`.vault_secrets` over :mod:`.vaults`, :mod:`.key_vault`, :mod:`.vault_kv`),
  used as a static secret is; cached for the credential's ``ttl``, the value seen before a
  change kept for its ``overlap``, the cached value served for ``grace`` while the vault is
  out of reach. The server's tick (:meth:`CredentialBroker.refresh`) fetches ahead of requests.
- ``oauth2_client_credentials``: an access token obtained with the stored client secret,
  cached per (credential, version), refreshed ``refresh_before`` seconds before expiry
  (capped at half the lifetime). Concurrent callers share one in-flight request. If a
  refresh fails while the cached token is still valid, the cached token is served and a
  warning logged: the token endpoint having a bad minute should not fail requests. Nor
  should a slow one stall them: a request waits for a refresh only in its first
  :data:`REFRESH_WAIT` s while the cached token is valid, then is served the cached one;
  after a failed refresh the next waits :data:`REFRESH_RETRY_AFTER` s.

Rotation: every call checks whether the store's ``credentials`` version moved (SQLite: one
indexed read of the file; PostgreSQL: a memory read, moved by LISTEN/NOTIFY or the catch-up
poll). SQLite: the store reloads inline and the very next request uses the rotation.
PostgreSQL: one worker thread reloads while requests go on with the version in memory (still
valid upstream for the overlap), so no request waits on the database; if it cannot be
reached, memory keeps being served and the reload is retried about once a second. The
server calls :meth:`CredentialBroker.poll` on its tick to catch up without traffic and
update metrics.

Overlap: after a rotation the previous version stays usable for the credential's
``overlap`` seconds. The HTTP engine's rule "an upstream 401 with the newest version is
retried once with the previous one" is :meth:`CredentialBroker.fallback_secret`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from lockgate import _log, metrics
from lockgate.config import (
    FederatedCredential,
    LockgateConfig,
    ManagedIdentityCredential,
    OAuth2ClientCredential,
    StaticCredential,
)
from lockgate.config.credentials import (
    AnyCredential,
    VaultCredential,
)
from lockgate.credentials.federation import AssertionSigner, fetch_federated_token
from lockgate.credentials.managed_identity import fetch_mi_token
from lockgate.credentials.oauth2 import AccessToken, fetch_token
from lockgate.credentials.store import CredentialStore, Version
from lockgate.credentials.vault_secrets import VaultSecrets
from lockgate.credentials.vaults import FetchStatus
from lockgate.errors import CredentialError, StoreUnavailable

log = _log.get("credentials")

_Key = tuple[str, int]  # (credential name, version)
_RETRY_AFTER_FAILURE = 1.0  # seconds between reload attempts while the database is away
#: Seconds a request waits for a refresh while the cached token is still valid.
REFRESH_WAIT = 0.5
#: Seconds between two token drops for upstream refusals (:meth:`CredentialBroker.invalidate`).
REFUSED_REFETCH_INTERVAL = 30.0
#: Seconds a failed refresh is not retried while the cached token is still valid.
REFRESH_RETRY_AFTER = 5.0
#: A credential with nothing stored: the host's identity or a federated one (one version, 0).
_Unstored = ManagedIdentityCredential | FederatedCredential


@dataclass(frozen=True, slots=True)
class UpstreamSecret:
    """What to put in the upstream auth header, and which stored version it came from."""

    value: str = field(repr=False)
    version: int
    credential: str = ""
    expires_at: float | None = None  # access tokens only


class CredentialBroker:
    def __init__(
        self,
        config: LockgateConfig,
        store: CredentialStore,
        http: aiohttp.ClientSession | None = None,
        *,
        clock: Callable[[], float] = time.time,
        assertion_signer: AssertionSigner | None = None,
    ) -> None:
        self._config = config
        # Signs the JWT a federated credential exchanges upstream (the signing key store's
        # ``sign``); None: federated credentials refuse.
        self._assertion_signer = assertion_signer
        self._store = store
        self._http = http
        self._own_http = http is None
        self._clock = clock
        self._current: dict[str, Version] = {}
        self._tokens: dict[_Key, AccessToken] = {}
        self._unstored_tokens: dict[str, AccessToken] = {}  # managed identity, federated
        self._inflight: dict[_Key, asyncio.Future[AccessToken]] = {}
        self._inflight_since: dict[_Key, float] = {}  # time.monotonic() each fetch started
        self._refused_at: dict[str, float] = {}  # credential -> last drop for an upstream 401
        self._failed_at: dict[_Key, float] = {}  # last failed refresh of each token
        self._reloading: asyncio.Future[bool] | None = None  # one worker-thread reload at once
        self._retry_at = 0.0  # time.monotonic() before which a failed reload is not retried
        self._vaults = VaultSecrets(
            config, store, self._session, access_token=self._identity_token,
            invalidate=self.invalidate, stored_value=self._stored_value,
            signer=assertion_signer, clock=clock,
        )  # fmt: skip
        store.vault_status = self.vault_status
        if store.stale():  # baseline: nothing is cached yet, so earlier writes are no change
            self._reload_logged()
        self._generation = store.generation  # the store load our caches were filled from

    @property
    def generation(self) -> int:
        """Moves whenever the broker takes in a change of the stored credentials (a rotation
        here, by the CLI, another worker or another replica, or a new value in a vault):
        caches of secrets compare it."""
        return self._generation + self._vaults.changes

    # -- the engines' API ------------------------------------------------------------------
    async def upstream_secret(
        self, credential_name: str, previous: bool = False
    ) -> UpstreamSecret | None:
        """The secret for ``credential_name``'s current version.

        With ``previous=True``: the previous version's secret while inside the overlap
        window, else None. Raises CredentialError when the credential is unknown, unset,
        undecryptable or its token endpoint refuses.
        """
        cfg = self._credential_config(credential_name)
        if isinstance(cfg, _Unstored):  # nothing stored, no versions
            return None if previous else await self._unstored_secret(cfg)
        if isinstance(cfg, VaultCredential):
            vault = self._vaults.of(cfg)
            held = vault.previous_within_overlap() if previous else await vault.get()
            return None if held is None else UpstreamSecret(held.value, held.version, cfg.name)
        await self._catch_up(wait=not self._store.loaded)
        self._notice_changes()
        if previous:
            version = self._store.previous(credential_name, cfg.overlap, fresh=False)
            if version is None:
                return None
        else:
            version = self._current_version(credential_name)
        if isinstance(cfg, StaticCredential):
            return UpstreamSecret(version.value, version.version, credential_name)
        return await self._oauth2_secret(cfg, version)

    async def fallback_secret(
        self, credential_name: str, failed: UpstreamSecret
    ) -> UpstreamSecret | None:
        """After an upstream 401 with ``failed``: the previous version to retry once, or None.

        None when ``failed`` was not the newest version, or the overlap window is over, or
        the credential stores nothing (it has no previous version).
        """
        cfg = self._credential_config(credential_name)
        if isinstance(cfg, _Unstored):
            return None
        if isinstance(cfg, VaultCredential):
            vault = self._vaults.of(cfg)
            seen_before = vault.previous_within_overlap()
            newest = vault.current
            if newest is None or failed.version != newest.version or seen_before is None:
                return None
            return UpstreamSecret(seen_before.value, seen_before.version, cfg.name)
        current = self._current_version(credential_name)
        if failed.version != current.version:
            return None
        prev = await self.upstream_secret(credential_name, previous=True)
        if prev is None or prev.version == failed.version:
            return None
        return prev

    def invalidate(self, credential_name: str, version: int | None = None) -> None:
        """Forget cached access tokens. ``version`` given: the upstream refused that token
        (a 401), which whoever sends requests upstream can provoke at will, so such a drop
        happens at most once per :data:`REFUSED_REFETCH_INTERVAL` s per credential: a task
        must not turn its requests into token requests the cloud throttles for everyone.
        None: forget them all, now (an operator's or a rotation's change)."""
        if version is not None:
            now = self._clock()
            if now - self._refused_at.get(credential_name, -math.inf) < REFUSED_REFETCH_INTERVAL:
                return  # a token fetched since the last refusal is refused too: keep it
            self._refused_at[credential_name] = now
        if version in (None, 0):
            self._unstored_tokens.pop(credential_name, None)
        for key in [k for k in self._tokens if k[0] == credential_name]:
            if version is None or key[1] == version:
                del self._tokens[key]

    # -- housekeeping ----------------------------------------------------------------------
    async def poll(self) -> bool:
        """:meth:`refresh` after reloading the store off the event loop if its version moved
        (the server's periodic tick). True if the credentials changed."""
        await self._catch_up()
        return self.refresh()

    def refresh(self) -> bool:
        """Pick up rotations by other processes and update the age metric. True if changed.

        Reloads the store in this thread if its version moved (off an event loop with a
        shared database: use :meth:`poll` there)."""
        if self._store.stale() and time.monotonic() >= self._retry_at:
            self._reload_logged()
        changed = self._notice_changes()
        self._vaults.refresh_due()
        for cred in self._config.credentials:
            with contextlib.suppress(CredentialError):
                self.age_seconds(cred.name)
        return changed

    def age_seconds(self, name: str) -> float | None:
        """Seconds since the current version was created (vault-held: since this process
        first saw its value); None when unset."""
        vault = self._vaults.held(name)
        if vault is not None:
            if vault.current is None:
                return None
            age = max(0.0, self._clock() - vault.current.seen_at)
            metrics.CREDENTIAL_AGE.labels(credential=name).set(age)
            return age
        if isinstance(self._config.credential(name), VaultCredential):
            return None
        try:
            version = self._current_version(name)
        except CredentialError:
            return None
        age = max(0.0, self._clock() - version.created_at)
        metrics.CREDENTIAL_AGE.labels(credential=name).set(age)
        return age

    def vault_status(self) -> dict[str, FetchStatus]:
        """Every vault-held credential a resource uses (or that was asked for): where it is
        held, the version fetched, when, and the last error (never a value)."""
        return self._vaults.status()

    async def close(self) -> None:
        self._vaults.close()
        for fut in self._inflight.values():
            fut.cancel()
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    # -- internals -------------------------------------------------------------------------
    def _credential_config(self, name: str) -> AnyCredential:
        cfg = self._config.credential(name)
        if cfg is None:
            raise CredentialError(f"credential {name!r} is not configured")
        return cfg

    async def _catch_up(self, *, wait: bool = True) -> None:
        """Reload the store if its version moved: inline on SQLite (a local file), in one
        shared worker thread on PostgreSQL. ``wait=False`` (the data path once something is
        loaded): serve memory meanwhile -- the version it holds stays valid upstream for the
        rotation overlap -- so no request ever waits on the database."""
        if not self._store.stale() or time.monotonic() < self._retry_at:
            return
        if not self._store.shared:
            self._reload_logged()
            return
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.ensure_future(asyncio.to_thread(self._reload_logged))
        if wait:
            await asyncio.shield(self._reloading)

    def _reload_logged(self) -> bool:
        try:
            return self._store.reload()
        except StoreUnavailable as exc:
            # Serve what memory holds (staleness past the bound is refused by token checks)
            # and let the next attempt wait a little: an outage is not retried per request.
            self._retry_at = time.monotonic() + _RETRY_AFTER_FAILURE
            log.warning(
                "credentials not reloaded; serving the versions in memory",
                extra={"fields": {"error": str(exc)}},
            )
            return False

    def _notice_changes(self) -> bool:
        if self._store.generation == self._generation:
            return False
        self._generation = self._store.generation
        self._current.clear()
        # drop tokens of versions that can no longer be current or previous
        for name in {k[0] for k in self._tokens}:
            try:
                cur = self._store.current(name, fresh=False)
            except CredentialError:
                cur = None
            keep_from = cur.version - 1 if cur else None
            for key in [k for k in self._tokens if k[0] == name]:
                if keep_from is None or key[1] < keep_from:
                    del self._tokens[key]
        return True

    def _current_version(self, name: str) -> Version:
        version = self._current.get(name)
        if version is None:
            version = self._store.current(name, fresh=False)
            if version is None:
                raise CredentialError(
                    f"credential {name!r} has no value; set it with `lockgate creds set {name}`"
                )
            self._current[name] = version
        return version

    async def _oauth2_secret(self, cfg: OAuth2ClientCredential, version: Version) -> UpstreamSecret:
        key = (cfg.name, version.version)
        token = await self._token(
            key, self._tokens.get(key), functools.partial(self._fetch, cfg, version), cfg.type
        )
        return UpstreamSecret(token.value, version.version, cfg.name, token.expires_at)

    async def _unstored_secret(self, cfg: _Unstored) -> UpstreamSecret:
        """A managed identity's or federated credential's access token (one version, 0)."""
        key = (cfg.name, 0)
        cached = self._unstored_tokens.get(cfg.name)
        token = await self._token(
            key, cached, functools.partial(self._fetch_unstored, cfg), cfg.type
        )
        return UpstreamSecret(token.value, 0, cfg.name, token.expires_at)

    async def _token(
        self,
        key: _Key,
        cached: AccessToken | None,
        fetch: Callable[[], Awaitable[AccessToken]],
        kind: str,
    ) -> AccessToken:
        """``cached`` until its refresh time, then one shared ``fetch`` for every caller. While
        ``cached`` is valid it is served when the refresh fails (a warning logged) and for
        :data:`REFRESH_RETRY_AFTER` s after, so a token endpoint that refuses fast is not
        asked again at the rate requests come."""
        now = self._clock()
        if (
            cached is not None
            and now < cached.expires_at
            and (
                now < cached.refresh_at
                or now < self._failed_at.get(key, -math.inf) + REFRESH_RETRY_AFTER
            )
        ):
            return cached
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(fetch())
            self._inflight[key] = fut
            self._inflight_since[key] = time.monotonic()
            fut.add_done_callback(functools.partial(self._fetch_done, key))
        try:
            token = await self._refreshed(key, fut, cached)
        except CredentialError as exc:
            self._failed_at[key] = self._clock()
            if cached is not None and self._clock() < cached.expires_at:
                # The message names status and error codes only, never a token or assertion.
                log.warning(
                    f"{kind.replace('_', ' ')} token refresh failed; "
                    "using the cached token until it expires",
                    extra={"fields": {"credential": key[0], "version": key[1],
                                      "error": str(exc)}},
                )  # fmt: skip
                return cached
            raise
        if token is None:
            assert cached is not None  # only None while it is valid
            return cached
        return token

    async def _refreshed(
        self, key: _Key, fut: asyncio.Future[AccessToken], cached: AccessToken | None
    ) -> AccessToken | None:
        """The token ``fut`` fetches. While ``cached`` is still valid, a refresh is waited
        for only in its first :data:`REFRESH_WAIT` s; then None (serve ``cached``; the
        refresh goes on): a token endpoint that hangs, or someone on the path who holds its
        packets, must not stall every request in the refresh window."""
        shielded = asyncio.shield(fut)  # one caller giving up does not cancel the rest
        if cached is None or self._clock() >= cached.expires_at:
            return await shielded
        waited = time.monotonic() - self._inflight_since.get(key, time.monotonic())
        try:
            return await asyncio.wait_for(shielded, max(0.0, REFRESH_WAIT - waited))
        except TimeoutError:
            return None

    async def _fetch_unstored(self, cfg: _Unstored) -> AccessToken:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        fetched: Awaitable[AccessToken]
        if isinstance(cfg, FederatedCredential):
            fetched = fetch_federated_token(
                self._http, self._config, cfg, self._assertion_signer, clock=self._clock
            )
        else:
            fetched = fetch_mi_token(self._http, cfg, clock=self._clock)
        token = await fetched
        self._unstored_tokens[cfg.name] = token
        log.info(
            f"{cfg.type.replace('_', ' ')} token obtained",
            extra={"fields": {"credential": cfg.name,
                              "expires_in": round(token.expires_at - self._clock())}},
        )  # fmt: skip
        return token

    async def _fetch(self, cfg: OAuth2ClientCredential, version: Version) -> AccessToken:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        token = await fetch_token(self._http, cfg, version.value, clock=self._clock)
        self._tokens[(cfg.name, version.version)] = token
        log.info(
            "upstream access token obtained",
            extra={
                "fields": {
                    "credential": cfg.name,
                    "version": version.version,
                    "expires_in": round(token.expires_at - self._clock()),
                }
            },
        )
        return token

    # -- vault-held credentials: made by .vault_secrets, fed from here ----------------------
    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _identity_token(self, name: str) -> UpstreamSecret:
        """An identity credential's access token (what a Key Vault read carries)."""
        secret = await self.upstream_secret(name)
        assert secret is not None  # an identity credential always has one
        return secret

    async def _stored_value(self, name: str) -> str:
        """What ``lockgate creds set NAME`` stored (a Vault AppRole's secret id), as of the
        store's latest."""
        await self._catch_up()
        self._notice_changes()
        return self._current_version(name).value

    def _fetch_done(self, key: _Key, fut: asyncio.Future[AccessToken]) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]
            self._inflight_since.pop(key, None)
        if not fut.cancelled():
            fut.exception()  # mark retrieved: callers that gave up must not cause a warning
