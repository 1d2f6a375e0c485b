"""Shipping the local chain to PostgreSQL: what to ship where, the checkpoint key, the lag.

With ``state: postgresql`` every replica keeps writing its own hash chain locally exactly as
with SQLite alone (journal first, then ``audit.db``); a shipper (:mod:`lockgate.audit.shipper`)
copies committed rows to the shared ``audit_records`` table and signs checkpoints of every
replica's chain head (:mod:`lockgate.audit.shared`). This module holds what the other rooms
need without touching PostgreSQL:

- :class:`AuditShipping`: where to ship and as whom (built by :class:`lockgate.state.State`);
- :func:`checkpoint_key`: the checkpoint signing seed, derived from the master key;
- the shipper's status file and :func:`ship_lag`, so any process (the gateway, ``/readyz``,
  ``/metrics``) can tell how far behind shipping is without a PostgreSQL round trip.

Why derive the checkpoint key from the master key (HKDF-SHA256, a fixed label) rather than
keep a key file per replica: with ``state: postgresql`` every replica must hold the same
master key (checked at start), so every replica signs with, and every ``audit verify`` checks
against, the same public key without a new secret to distribute, back up or rotate; and the
key never sits in PostgreSQL, so someone who can write the shared tables can neither forge a
checkpoint nor swap the key that checks them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from lockgate.config import PostgresStateSettings

#: Seconds between signed checkpoints of all chain heads (while any head moved).
CHECKPOINT_INTERVAL = 10.0
_CHECKPOINT_LABEL = b"lockgate audit checkpoint signing key v1"
STATUS_FILE = "audit-ship.json"


@dataclass(frozen=True)
class AuditShipping:
    """Ship this replica's chain to the shared trail.

    ``signing_key``: the checkpoint seed (:func:`checkpoint_key`); without it rows are
    shipped but no checkpoint is written, and ``audit verify`` cannot check signatures.
    """

    settings: PostgresStateSettings
    replica_id: str
    signing_key: bytes | None = None
    checkpoint_interval: float = CHECKPOINT_INTERVAL

    def __repr__(self) -> str:  # never the key
        return f"AuditShipping(replica_id={self.replica_id!r})"

    def to_json(self) -> str:
        """For the writer process (sent on its stdin: the key never appears in argv/env)."""
        return json.dumps(
            {
                "settings": self.settings.model_dump(mode="json"),
                "replica_id": self.replica_id,
                "signing_key": self.signing_key.hex() if self.signing_key else None,
                "checkpoint_interval": self.checkpoint_interval,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> AuditShipping:
        from lockgate.config import PostgresStateSettings

        d = json.loads(text)
        key = d.get("signing_key")
        return cls(
            settings=PostgresStateSettings.model_validate(d["settings"]),
            replica_id=str(d["replica_id"]),
            signing_key=bytes.fromhex(key) if key else None,
            checkpoint_interval=float(d.get("checkpoint_interval", CHECKPOINT_INTERVAL)),
        )


def checkpoint_key(master_key: bytes) -> bytes:
    """The 32-byte Ed25519 seed that signs audit checkpoints (see the module docstring)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CHECKPOINT_LABEL)
    return hkdf.derive(master_key)


class ChainMismatch(Exception):
    """PostgreSQL holds, under this replica's name, a row the local chain does not: the same
    ``replica_id`` is used by another ``data_dir``. Nothing of it is shipped."""


# -- status and lag ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ShipLag:
    """How far shipping is behind the local chain."""

    records: int  # committed locally, not yet in PostgreSQL
    seconds: float  # age of the oldest of those (0.0 when none)
    error: str | None  # the shipper's last failure, None while it succeeds
    shipped_seq: int  # highest local seq known to be in PostgreSQL


def status_path(db_path: Path) -> Path:
    return Path(db_path).parent / STATUS_FILE


def write_status(
    db_path: Path,
    replica: str,
    shipped_seq: int,
    error: str | None,
    *,
    checkpoint_n: int = 0,
    lost: Sequence[Sequence[float]] = (),
) -> None:
    """Replace the status file atomically (readers never see half of it).

    Besides the lag it keeps what must survive PostgreSQL: the highest seq shipped and the
    number of this replica's newest checkpoint (the shared trail rolled back shows against
    them), and ``lost``: [first seq, last seq, when found] of each range the shared trail
    lost after it was shipped (``audit verify`` on this replica reports them)."""
    path = status_path(db_path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    data = {
        "replica": replica,
        "shipped_seq": shipped_seq,
        "error": error,
        "at": time.time(),
        "checkpoint_n": checkpoint_n,
        "lost": [list(x) for x in lost],
    }
    with contextlib.suppress(OSError):  # a status we cannot write only shows as lag
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


def read_status(db_path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(status_path(db_path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def ship_lag(db_path: Path, now: float | None = None) -> ShipLag:
    """What the local chain holds past the shipped position (two small local reads)."""
    status = read_status(db_path) or {}
    raw_seq = status.get("shipped_seq", 0)
    shipped = raw_seq if isinstance(raw_seq, int) else 0
    raw_error = status.get("error")
    error = raw_error if isinstance(raw_error, str) else None
    if not status:
        error = "audit shipping has not reported yet"
    records, oldest = 0, None
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
        try:
            head = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()
            records = max(0, int(head[0]) - shipped) if head else 0
            if records:
                row = conn.execute("SELECT ts FROM audit WHERE seq = ?", (shipped + 1,)).fetchone()
                oldest = float(row[0]) if row else None
        finally:
            conn.close()
    now = time.time() if now is None else now
    seconds = max(0.0, now - oldest) if oldest is not None else 0.0
    return ShipLag(records, seconds, error, shipped)


__all__ = [
    "CHECKPOINT_INTERVAL",
    "AuditShipping",
    "ChainMismatch",
    "ShipLag",
    "checkpoint_key",
    "read_status",
    "ship_lag",
    "status_path",
    "write_status",
]
