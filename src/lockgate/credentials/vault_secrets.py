"""The broker's vault-held credentials: one :class:`~.vaults.VaultHeldSecret` per credential.

``azure_key_vault`` and ``vault_kv`` credentials hold their value in a vault, not in the
store. :class:`VaultSecrets` makes each one's cache on first use (fetching through
:mod:`.key_vault` or :mod:`.vault_kv`), counts the values that changed in a vault (the
broker's generation moves with them, so caches of secrets follow), notes each fetch in the
store for ``lockgate creds list`` in other processes, fetches ahead on the server's tick and
says, per credential, where its value is held and how the last fetch went (never a value).

What it needs of the broker comes in as calls: the identity's access token a Key Vault read
carries (and the drop of a refused one), and the AppRole secret id stored for a Vault login.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import aiohttp

from lockgate import _log
from lockgate.config import LockgateConfig
from lockgate.config.credentials import (
    KeyVaultCredential,
    TokenCredential,
    VaultCredential,
    VaultKvCredential,
    key_vault_audience,
)
from lockgate.credentials.federation import AssertionSigner
from lockgate.credentials.key_vault import BearerToken, fetch_key_vault_secret
from lockgate.credentials.store import CredentialStore
from lockgate.credentials.vault_kv import VaultKvReader
from lockgate.credentials.vaults import Fetched, FetchStatus, VaultHeldSecret

log = _log.get("credentials")

#: The access token of an identity credential, by name (the broker's ``upstream_secret``).
AccessTokenOf = Callable[[str], Awaitable[BearerToken]]
#: Drop a refused token of an identity credential (the broker's ``invalidate``).
Invalidate = Callable[[str, int], None]
#: The value stored now for a credential (a Vault AppRole's secret id), read fresh.
StoredValueOf = Callable[[str], Awaitable[str]]


class VaultSecrets:
    """The vault-held credentials a broker served, made on use."""

    def __init__(
        self,
        config: LockgateConfig,
        store: CredentialStore,
        session: Callable[[], aiohttp.ClientSession],
        *,
        access_token: AccessTokenOf,
        invalidate: Invalidate,
        stored_value: StoredValueOf,
        signer: AssertionSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._session = session
        self._access_token = access_token
        self._invalidate = invalidate
        self._stored_value = stored_value
        self._signer = signer
        self._clock = clock
        self._held: dict[str, VaultHeldSecret] = {}
        #: values that changed in a vault since this broker started
        self.changes = 0

    def held(self, name: str) -> VaultHeldSecret | None:
        """``name``'s cache if it was used, else None (nothing fetched)."""
        return self._held.get(name)

    def of(self, cfg: VaultCredential) -> VaultHeldSecret:
        """``cfg``'s cache, made (not fetched yet) on first use."""
        vault = self._held.get(cfg.name)
        if vault is None:
            fetch = (
                functools.partial(self._fetch_key_vault, cfg)
                if isinstance(cfg, KeyVaultCredential)
                else self._vault_kv_reader(cfg).fetch
            )
            vault = VaultHeldSecret(
                cfg, functools.partial(self._fetch_noted, cfg, fetch), clock=self._clock,
                on_change=self._changed,
            )  # fmt: skip
            self._held[cfg.name] = vault
        return vault

    def clear(self) -> None:
        """Forget every cache: the next use of each fetches again."""
        self._held.clear()

    def refresh_due(self) -> None:
        """On the server's tick: fetch every used vault-held credential that is due, in the
        background (before the first request; rotations picked up without traffic)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a CLI or a test without a loop: fetched on first use instead
        for cred in self._used():
            self.of(cred).refresh_soon()

    def status(self) -> dict[str, FetchStatus]:
        """Every vault-held credential a resource uses (or that was asked for): where it is
        held, the version fetched, when, and the last error (never a value)."""
        used = {r.credential for r in self._config.resources if r.credential}
        out: dict[str, FetchStatus] = {}
        for cred in self._config.credentials:
            if isinstance(cred, VaultCredential) and (cred.name in used or cred.name in self._held):
                vault = self._held.get(cred.name)
                out[cred.name] = (
                    vault.status() if vault else FetchStatus(cred.held_at, None, None, None)
                )
        return out

    def close(self) -> None:
        for vault in self._held.values():
            vault.close()

    def _used(self) -> list[VaultCredential]:
        used = {r.credential for r in self._config.resources if r.credential}
        return [
            c for c in self._config.credentials if isinstance(c, VaultCredential) and c.name in used
        ]

    def _changed(self) -> None:
        self.changes += 1

    async def _fetch_noted(
        self, cfg: VaultCredential, fetch: Callable[[], Awaitable[Fetched]]
    ) -> Fetched:
        fetched = await fetch()
        try:  # for `lockgate creds list` in other processes; a failure costs nothing here
            await asyncio.to_thread(
                self._store.record_fetch, cfg.name, cfg.held_at, fetched.vault_version,
                self._clock(),
            )  # fmt: skip
        except Exception as exc:  # the fetch itself succeeded
            log.warning(
                "vault fetch not recorded in the store",
                extra={"fields": {"credential": cfg.name, "error": type(exc).__name__}},
            )
        return fetched

    async def _fetch_key_vault(self, cfg: KeyVaultCredential) -> Fetched:
        identity = self._config.credential(cfg.identity)
        assert isinstance(identity, TokenCredential)  # checked at load
        audience = key_vault_audience(identity) or ""
        return await fetch_key_vault_secret(
            self._session(), cfg, functools.partial(self._access_token, cfg.identity),
            functools.partial(self._invalidate, cfg.identity), audience=audience,
            clock=self._clock,
        )  # fmt: skip

    def _vault_kv_reader(self, cfg: VaultKvCredential) -> VaultKvReader:
        return VaultKvReader(
            self._session, self._config, cfg,
            secret_id=functools.partial(self._stored_value, cfg.name),
            signer=self._signer, clock=self._clock,
        )  # fmt: skip


__all__ = ["AccessTokenOf", "Invalidate", "StoredValueOf", "VaultSecrets"]
