"""Building blocks for the shared-trail tests: local chains, shippers, tampering."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from lockgate.audit import AuditLog, AuditRecord
from lockgate.audit.shipper import Shipper
from lockgate.audit.shipping import AuditShipping, checkpoint_key
from lockgate.config import PostgresStateSettings
from lockgate.store import Database

SEED = checkpoint_key(bytes(range(32)))  # as from a master key
# for tests that hand the shipper a database of their own (the DSN is never dialled)
UNUSED_SETTINGS = PostgresStateSettings(dsn="postgresql://lockgate@localhost:1/unused")


def shipping(
    replica: str,
    settings: PostgresStateSettings = UNUSED_SETTINGS,
    *,
    seed: bytes | None = SEED,
    interval: float = 0.2,
) -> AuditShipping:
    return AuditShipping(settings, replica, signing_key=seed, checkpoint_interval=interval)


def record(i: int, replica: str = "r") -> AuditRecord:
    return AuditRecord(
        event="allowed",
        deployment="prod",
        dag_id="etl",
        task_id=f"t{i}",
        run_id=f"run-{replica}",
        principal=f"airflow:prod/etl/t{i}",
        resource="orders",
        action="read",
        object=f"sales/{i}",
        decision="allow",
        rule="etl-read",
        status=200,
        latency_ms=1.25 + i,
        detail={"i": i, "replica": replica},
    )


def local_chain(db_path: Path, count: int, replica: str = "r", start: int = 0) -> None:
    """Append ``count`` records to the local chain at ``db_path`` (no shipping)."""
    log = AuditLog(db_path)
    try:
        for i in range(start, start + count):
            log.emit(record(i, replica))
        assert log.flush(10)
    finally:
        log.close()


def shipper_for(
    db_path: Path, replica: str, open_db: Callable[[], Database], batch_size: int = 1_000
) -> Shipper:
    return Shipper(db_path, shipping(replica), database=open_db, batch_size=batch_size)


def ship_all(s: Shipper) -> None:
    """Ship everything committed, then sign a checkpoint, in the caller's thread."""
    try:
        while s.ship_once():
            pass
        s.checkpoint(force=True)
    finally:
        s.close()


def local_count(db_path: Path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
    finally:
        conn.close()


__all__ = [
    "SEED",
    "UNUSED_SETTINGS",
    "local_chain",
    "local_count",
    "record",
    "ship_all",
    "shipper_for",
    "shipping",
]
