"""What may be shown of the upstream credentials: the one description ``lockgate creds list``
prints and the console's credentials page renders.

Per configured credential: its type, where its value is held (this gateway's encrypted
store, an Azure Key Vault secret, a Vault KV path, or nowhere: federated and managed
identity credentials hold no secret), its versions (number, created, current or previous,
the end of the previous one's overlap window), the current version's age against
``alerts.credential_max_age``, the last rotation, the last fetch of a vault-held one, and
the resources (and credentials) that use it. Per resource: its credential and whether it is
served with no secret at all.

Never a value, never a digest of one, never a file's content: only names, types, versions,
times and the places a vault holds a value at (URLs and paths, which are configuration).
Reads the store (blocking): call it off the event loop.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lockgate.config import FederatedCredential, LockgateConfig, ManagedIdentityCredential
from lockgate.config.alerts import CredentialMaxAge
from lockgate.config.credentials import (
    AnyCredential,
    KeyVaultCredential,
    VaultAppRole,
    VaultCredential,
    VaultKvCredential,
)
from lockgate.credentials.store import CredentialStore

#: What each configured ``type`` is, in words.
TYPE_LABELS = {
    "static": "static secret",
    "oauth2_client_credentials": "OAuth2 client credentials",
    "managed_identity": "managed identity",
    "federated": "federated",
    "azure_key_vault": "Azure Key Vault secret",
    "vault_kv": "Vault KV secret",
}


_HELD_IN = {
    "store": "encrypted store",
    "azure_key_vault": "Azure Key Vault",
    "vault": "Vault",
    "none": "nowhere (no secret)",
}


def stores_secret_id(cred: object) -> bool:
    """A Vault AppRole login whose secret id is stored here (no ``secret_id_file``)."""
    return (
        isinstance(cred, VaultKvCredential)
        and isinstance(cred.auth, VaultAppRole)
        and cred.auth.secret_id_file is None
    )


def vault_name(cred: VaultCredential) -> str:
    return _HELD_IN[_held(cred)]


def no_secret(cred: AnyCredential | None) -> str | None:
    """Why ``cred`` has no secret in this gateway's store (``creds list``'s words), or None."""
    if isinstance(cred, FederatedCredential):
        return f"federated: {cred.provider}"
    if isinstance(cred, ManagedIdentityCredential):
        return "managed identity"
    if isinstance(cred, VaultCredential) and not stores_secret_id(cred):
        return f"held in {vault_name(cred)}"
    return None


def secretless(cred: AnyCredential | None) -> bool:
    """True when no secret exists anywhere for ``cred``: the gateway signs its own assertion
    (federated) or the host hands out its token (managed identity)."""
    return isinstance(cred, FederatedCredential | ManagedIdentityCredential)


def max_age_of(name: str, rules: Sequence[CredentialMaxAge]) -> float | None:
    """The ``max_age`` the first ``alerts.credential_max_age`` glob matching ``name`` gives."""
    return next((r.max_age for r in rules if fnmatch.fnmatchcase(name, r.credentials)), None)


@dataclass(frozen=True, slots=True)
class VersionFacts:
    """One stored version: no value, only whether one is still kept."""

    version: int
    created_at: float
    rotated_at: float | None
    current: bool
    has_value: bool
    #: a previous version: when its overlap window ends (None: current, or never usable)
    usable_until: float | None


@dataclass(frozen=True, slots=True)
class VaultFetch:
    """The last fetch of a vault-held value by any gateway sharing the store."""

    vault_version: str
    fetched_at: float


@dataclass(frozen=True, slots=True)
class CredentialFacts:
    """One configured credential as it may be shown."""

    name: str
    type: str
    #: where the value is held: "store", "azure_key_vault", "vault" or "none"
    held: str
    #: a vault-held credential's place (URL, path, field; configuration, not a value)
    held_at: str | None
    #: why there is no secret in this gateway's store (None: it stores one)
    no_secret: str | None
    #: the stored value is a Vault AppRole secret id (the credential itself is in Vault)
    secret_id_only: bool
    overlap: int
    versions: tuple[VersionFacts, ...]
    fetched: VaultFetch | None
    #: this process's last failure fetching a vault-held value (None: none, or not known)
    fetch_error: str | None
    #: resources whose upstream credential this is
    resources: tuple[str, ...]
    #: credentials that use this one's token (a Key Vault secret read with it)
    used_by: tuple[str, ...]
    max_age: float | None

    @property
    def label(self) -> str:
        return TYPE_LABELS.get(self.type, self.type)

    @property
    def secretless(self) -> bool:
        return self.held == "none"

    @property
    def held_in(self) -> str:
        """Where the value is held, in words."""
        return _HELD_IN[self.held]

    @property
    def current(self) -> VersionFacts | None:
        return self.versions[-1] if self.versions else None

    @property
    def last_rotation(self) -> float | None:
        return max((v.rotated_at for v in self.versions if v.rotated_at), default=None)

    def age(self, now: float) -> float | None:
        """Seconds since the current version was created (None: nothing stored)."""
        current = self.current
        return None if current is None else max(0.0, now - current.created_at)

    def overdue(self, now: float) -> bool:
        """The current version is older than its ``max_age``."""
        age = self.age(now)
        return age is not None and self.max_age is not None and age > self.max_age


@dataclass(frozen=True, slots=True)
class ResourceFacts:
    """A resource and the credential it is served with."""

    name: str
    kind: str
    credential: str | None
    #: no secret exists for it anywhere (federated, managed identity, or no credential)
    secretless: bool
    #: the gateway keeps no secret for it (``creds list``: vault-held ones included)
    no_stored_secret: bool


@dataclass(frozen=True, slots=True)
class CredentialsReport:
    at: float
    credentials: tuple[CredentialFacts, ...]
    resources: tuple[ResourceFacts, ...]

    @property
    def holding_no_secret(self) -> int:
        """Credentials with no secret in the store (``creds list``'s count)."""
        return sum(1 for c in self.credentials if c.no_secret is not None)

    @property
    def served_without_stored_secret(self) -> list[str]:
        """Resources with a credential the store holds no secret of (``creds list``)."""
        return [r.name for r in self.resources if r.credential and r.no_stored_secret]


def describe(
    config: LockgateConfig, store: CredentialStore, *, now: float | None = None
) -> CredentialsReport:
    """Every configured credential and resource as it may be shown (module docstring)."""
    now = time.time() if now is None else now
    vault_held = any(isinstance(c, VaultCredential) for c in config.credentials)
    fetches = store.fetches() if vault_held else {}
    status = store.vault_status() if vault_held and store.vault_status is not None else {}
    rules = config.alerts.credential_max_age
    views = []
    for cred in config.credentials:
        stored = no_secret(cred) is None
        fetched = fetches.get(cred.name)
        state = status.get(cred.name)
        views.append(
            CredentialFacts(
                name=cred.name,
                type=cred.type,
                held=_held(cred),
                held_at=cred.held_at if isinstance(cred, VaultCredential) else None,
                no_secret=no_secret(cred),
                secret_id_only=stores_secret_id(cred),
                overlap=cred.overlap,
                versions=_versions(store, cred.name, cred.overlap) if stored else (),
                fetched=VaultFetch(fetched[1], fetched[2]) if fetched else None,
                fetch_error=state.error if state is not None else None,
                resources=tuple(r.name for r in config.resources if r.credential == cred.name),
                used_by=tuple(
                    c.name
                    for c in config.credentials
                    if isinstance(c, KeyVaultCredential) and c.identity == cred.name
                ),
                max_age=max_age_of(cred.name, rules) if stored else None,
            )
        )
    resources = []
    for r in config.resources:
        used = config.credential(r.credential) if r.credential else None
        resources.append(
            ResourceFacts(
                name=r.name,
                kind=r.kind,
                credential=r.credential,
                secretless=used is None or secretless(used),
                no_stored_secret=used is not None and no_secret(used) is not None,
            )
        )
    return CredentialsReport(now, tuple(views), tuple(resources))


def _held(cred: AnyCredential) -> str:
    if isinstance(cred, KeyVaultCredential):
        return "azure_key_vault"
    if isinstance(cred, VaultKvCredential):
        return "vault"
    return "none" if secretless(cred) else "store"


def _versions(store: CredentialStore, name: str, overlap: int) -> tuple[VersionFacts, ...]:
    infos = store.versions(name)
    out = []
    for i, v in enumerate(infos):
        # the version just before current stays usable for the overlap after current came
        after = infos[i + 1].created_at + overlap if i == len(infos) - 2 else None
        out.append(
            VersionFacts(
                v.version,
                v.created_at,
                v.rotated_at,
                v.current,
                v.has_value,
                after if after is not None and v.has_value else None,
            )
        )
    return tuple(out)


__all__ = [
    "TYPE_LABELS",
    "CredentialFacts",
    "CredentialsReport",
    "ResourceFacts",
    "VaultFetch",
    "VersionFacts",
    "describe",
    "max_age_of",
    "no_secret",
    "secretless",
    "stores_secret_id",
    "vault_name",
]
