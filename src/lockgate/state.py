"""The gateway's durable state under ``data_dir``: signing keys, revocations, the master
key, credentials, the audit trail and the policy files.

:class:`State` opens them without starting any listener, so the CLI (``token``, ``creds``,
``audit`` ...) and the serving :class:`lockgate.server.Gateway` share one way to reach them.
Importing it does not pull in the engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lockgate.audit import AuditLog, RemoteAuditLog
from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialStore, load_or_create_master_key
from lockgate.identity import KeyStore, RevocationStore
from lockgate.policy import PolicyStore


@dataclass
class State:
    """The durable parts, openable without starting servers (the CLI uses this too)."""

    config: LockgateConfig

    def __post_init__(self) -> None:
        data = self.config.data_dir
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keys = KeyStore(data)
        self.revocations = RevocationStore(data / "revocations.db")
        self.master_key = load_or_create_master_key(data)
        self.credentials = CredentialStore(data / "credentials.db", self.master_key)

    def audit_log(self) -> AuditLog:
        """The in-process (thread) audit log: for the CLI and one-off writers."""
        a = self.config.audit
        return AuditLog(
            self.config.data_dir / "audit.db", a.jsonl, a.write_timeout,
            fsync=a.durability == "fsync",
        )  # fmt: skip

    def remote_audit_log(self, socket_path: Path | None = None) -> RemoteAuditLog:
        """The gateway's audit log: a writer process does the work (started here unless
        ``socket_path`` names one a supervisor runs)."""
        a = self.config.audit
        return RemoteAuditLog(
            self.config.data_dir / "audit.db", a.jsonl, a.write_timeout, socket_path=socket_path,
            fsync=a.durability == "fsync",
        )  # fmt: skip

    def policy_store(self) -> PolicyStore:
        known = {r.name for r in self.config.resources}
        return PolicyStore(self.config.policy_files, known)


__all__ = ["State"]
