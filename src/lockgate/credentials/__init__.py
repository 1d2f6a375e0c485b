"""Credentials: what the gateway uses upstream, encrypted at rest, versioned, rotated.

Door: :class:`CredentialBroker` (what engines call: ``upstream_secret``,
``fallback_secret``), :class:`CredentialStore` (encrypted versions in a SQLite file shared
with the CLI, or in the PostgreSQL every replica shares), :func:`load_or_create_master_key`.

Rooms: ``master_key`` (where the key comes from, its fingerprint on shared state), ``store``
(AES-256-GCM rows, versions, overlap, memory that follows the change version), ``oauth2``
(client-credentials token request), ``managed_identity`` (the host's identity),
``federation`` (an access token for a JWT the gateway signs: Entra ID, Databricks; nothing
stored), ``vaults`` (the cache of a secret held in a vault: ttl, overlap, outage grace) with
``key_vault`` (Azure Key Vault) and ``vault_kv`` (HashiCorp Vault / OpenBao KV v2), kept per
credential for the broker by ``vault_secrets``, ``broker`` (caching, single-flight, rotation
pick-up off the event loop, metrics).
"""

from lockgate.credentials.broker import CredentialBroker, UpstreamSecret
from lockgate.credentials.federation import AssertionSigner
from lockgate.credentials.master_key import ENV_VAR, load_or_create_master_key
from lockgate.credentials.store import CredentialStore, Version, VersionInfo

__all__ = [
    "ENV_VAR",
    "AssertionSigner",
    "CredentialBroker",
    "CredentialStore",
    "UpstreamSecret",
    "Version",
    "VersionInfo",
    "load_or_create_master_key",
]
