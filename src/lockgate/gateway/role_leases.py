"""Leases on dynamic database roles: no role outlives the gateway process that made it.

A per-task role (:mod:`lockgate.gateway.dynamic_roles`) is a login upstream that the
gateway never sees again; the process that issued it drops it when its token ends. If that
process dies first (``kill -9``, a lost node), someone else must. So every live role is a
row in the state database (domain ``roles``: the SQLite file ``roles.db`` on one host, the
shared PostgreSQL database across replicas)::

    role_leases(resource, role, replica_id, expires_at, created_at, claimed_by, claimed_until)
    replicas(replica_id, last_seen)

The lease is written *before* the role is created upstream and deleted once it is dropped,
so a role that may exist always has one. Each replica heartbeats (``replicas.last_seen``)
every few seconds, from the dynamic-role sweeper. A lease is an orphan when

- its owner has not been seen for ``grace`` seconds (the replica died),
- its token expired more than ``grace`` seconds ago (its owner failed to drop it), or
- it is this replica's own but older than this process (a restart with the same
  ``replica_id``: the previous incarnation's roles, on one host too). Replica ids must be
  unique among live replicas (each also owns an audit chain): two live processes under one
  id would take each other's roles for a previous incarnation's.

Any replica's sweeper drops orphans with the resource's admin login (the kind's
:class:`~lockgate.gateway.dynamic_roles.RoleSet`) and deletes their leases. Exactly one
replica drops a given orphan: it first *claims* the lease, one conditional ``UPDATE``
(``claimed_until`` in the past or unset) whose row count says who won, on SQLite and
PostgreSQL alike; a claimer that dies mid-drop leaves a claim that lapses after
``claim_for`` seconds, and another replica retries (dropping is idempotent).

Clocks: ``last_seen`` is written with the owner's clock and judged with the reaper's, so
``grace`` must exceed the replicas' clock skew (NTP keeps it far below a second).
The methods here are synchronous (one short transaction each); async code runs them in a
worker thread so the event loop never waits on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lockgate import _log
from lockgate.errors import UpstreamUnavailable
from lockgate.identity.once import open_database, upgrade_allowed
from lockgate.store import Database, Migration, StoreUnavailable, migrate, register_domain

log = _log.get("gateway.role_leases")

DOMAIN = "roles"
TOPIC = "roles"
MIGRATIONS = (
    Migration(
        1,
        "leases on live dynamic database roles, replica heartbeats",
        """
        CREATE TABLE role_leases (
            resource TEXT NOT NULL,
            role TEXT NOT NULL,
            replica_id TEXT NOT NULL,
            expires_at REAL NOT NULL,
            created_at REAL NOT NULL,
            claimed_by TEXT,
            claimed_until REAL,
            PRIMARY KEY (resource, role)
        );
        CREATE INDEX role_leases_owner ON role_leases (replica_id);
        CREATE TABLE replicas (replica_id TEXT PRIMARY KEY, last_seen REAL NOT NULL);
        """,
    ),
)
register_domain(DOMAIN, MIGRATIONS)

DEFAULT_GRACE = 30.0  # seconds without a heartbeat after which a replica is presumed dead
DEFAULT_CLAIM_FOR = 60.0  # seconds a claim to drop an orphan holds before another may retry

_HEARTBEAT = (
    "INSERT INTO replicas (replica_id, last_seen) VALUES (?, ?) "
    "ON CONFLICT (replica_id) DO UPDATE SET last_seen = excluded.last_seen"
)
_RECORD = (
    "INSERT INTO role_leases (resource, role, replica_id, expires_at, created_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (resource, role) DO UPDATE SET "
    "replica_id = excluded.replica_id, expires_at = excluded.expires_at, "
    "created_at = excluded.created_at, claimed_by = NULL, claimed_until = NULL"
)
_ORPHANS = """
    SELECT l.resource, l.role, l.replica_id, l.expires_at
    FROM role_leases l LEFT JOIN replicas r ON r.replica_id = l.replica_id
    WHERE (l.claimed_until IS NULL OR l.claimed_until < ?)
      AND ((l.replica_id <> ? AND (r.last_seen IS NULL OR r.last_seen < ?))
           OR (l.replica_id = ? AND l.created_at < ?)
           OR l.expires_at < ?)
    ORDER BY l.expires_at
    LIMIT ?
"""
_CLAIM = (
    "UPDATE role_leases SET claimed_by = ?, claimed_until = ? "
    "WHERE resource = ? AND role = ? AND replica_id = ? "
    "AND (claimed_until IS NULL OR claimed_until < ?)"
)


@dataclass(frozen=True, slots=True)
class Lease:
    """One live (or orphaned) role: ``role`` on ``resource``, issued by ``replica_id`` for a
    token that expires at ``expires_at``."""

    resource: str
    role: str
    replica_id: str
    expires_at: float


class RoleLeases:
    """This replica's view of the role leases in one database (see the module docstring).
    ``where``: the state's database, a SQLite path, or ``None`` (memory: tests)."""

    def __init__(
        self,
        where: Path | Database | None,
        replica_id: str,
        *,
        grace: float = DEFAULT_GRACE,
        claim_for: float = DEFAULT_CLAIM_FOR,
        clock: Callable[[], float] = time.time,
        migrate_schema: bool | None = None,
    ) -> None:
        self.db, self._owned = open_database(where)
        migrate(self.db, DOMAIN, MIGRATIONS, allowed=upgrade_allowed(self.db, migrate_schema))
        self.replica_id = replica_id
        self.grace = grace
        self.claim_for = claim_for
        self._clock = clock
        # Leases of this replica created before this instant are a previous incarnation's.
        self.started_at = clock()

    @property
    def heartbeat_interval(self) -> float:
        """How often to heartbeat: several beats per grace, so one lost beat costs nothing."""
        return max(0.05, min(5.0, self.grace / 4))

    def heartbeat(self) -> None:
        with self.db.transaction() as cur:
            cur.execute(_HEARTBEAT, (self.replica_id, self._clock()))

    def record(self, resource: str, role: str, expires_at: float) -> None:
        """This replica is about to create ``role`` (call before creating it upstream)."""
        now = self._clock()
        with self.db.transaction() as cur:
            # The heartbeat first: a lease never names a replica that was never seen.
            cur.execute(_HEARTBEAT, (self.replica_id, now))
            cur.execute(_RECORD, (resource, role, self.replica_id, expires_at, now))
            cur.touch(TOPIC)

    def release(self, resource: str, role: str) -> None:
        """``role`` is dropped (or was never created): forget its lease."""
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM role_leases WHERE resource = ? AND role = ?", (resource, role))
            if cur.rowcount:
                cur.touch(TOPIC)

    def orphans(self, limit: int = 100) -> list[Lease]:
        """Leases that may be dropped now by anyone (unclaimed, or their claim lapsed)."""
        now = self._clock()
        params = (
            now, self.replica_id, now - self.grace, self.replica_id, self.started_at,
            now - self.grace, limit,
        )  # fmt: skip
        with self.db.read() as cur:
            rows = cur.execute(_ORPHANS, params).fetchall()
        return [Lease(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def claim(self, lease: Lease) -> bool:
        """Take the drop of ``lease`` on; True for exactly one claimer (until the claim lapses
        after ``claim_for`` seconds). False: another replica has it, or it is gone."""
        now = self._clock()
        with self.db.transaction() as cur:
            cur.execute(
                _CLAIM,
                (self.replica_id, now + self.claim_for, lease.resource, lease.role,
                 lease.replica_id, now),
            )  # fmt: skip
            return cur.rowcount == 1

    def release_claimed(self, lease: Lease) -> None:
        """The claimed orphan is dropped: delete its lease (only while the claim is ours)."""
        with self.db.transaction() as cur:
            cur.execute(
                "DELETE FROM role_leases WHERE resource = ? AND role = ? AND claimed_by = ?",
                (lease.resource, lease.role, self.replica_id),
            )
            if cur.rowcount:
                cur.touch(TOPIC)

    def leases(self) -> list[Lease]:
        """Every lease (operators, tests)."""
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT resource, role, replica_id, expires_at FROM role_leases "
                "ORDER BY resource, role"
            ).fetchall()
        return [Lease(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def close(self) -> None:
        if self._owned:
            self.db.close()


async def lease_role(
    leases: RoleLeases | None, resource: str, role: str, expires_at: float
) -> None:
    """Record the lease before the role exists: a crash between the two leaves a lease on
    nothing (harmless to sweep), never a role nobody would drop. No lease, no role: raises
    :class:`UpstreamUnavailable` when the state database cannot record it."""
    if leases is None:
        return
    try:
        await asyncio.to_thread(leases.record, resource, role, expires_at)
    except StoreUnavailable as exc:
        raise UpstreamUnavailable(f"role lease not recorded: {exc}") from exc


async def release_role(leases: RoleLeases | None, resource: str, role: str) -> None:
    """The role is dropped (or was never made): delete its lease. A failure is logged only:
    the lease is swept later (dropping a role that is gone is harmless)."""
    if leases is None:
        return
    try:
        await asyncio.to_thread(leases.release, resource, role)
    except StoreUnavailable as exc:
        log.warning("role lease not released", extra={"fields": {
            "resource": resource, "role": role, "error": str(exc)}})  # fmt: skip


class Dropper(Protocol):
    """What can drop one resource's roles (:class:`~lockgate.gateway.dynamic_roles.RoleSet`)."""

    async def drop_orphan(self, name: str) -> None: ...


async def reap(leases: RoleLeases, droppers: Mapping[str, Dropper]) -> list[Lease]:
    """Drop the orphans whose resource this replica serves (the admin login is the
    resource's); returns the ones dropped here. A drop that fails keeps its claim, which
    lapses, so this or another replica tries again."""
    dropped: list[Lease] = []
    for lease in await asyncio.to_thread(leases.orphans):
        dropper = droppers.get(lease.resource)
        if dropper is None:  # not served here: a replica that serves it sweeps it
            continue
        if not await asyncio.to_thread(leases.claim, lease):
            continue  # another replica took it
        try:
            await dropper.drop_orphan(lease.role)
        except Exception as exc:
            log.warning("orphaned role not dropped yet", extra={"fields": {
                "resource": lease.resource, "role": lease.role, "owner": lease.replica_id,
                "error": str(exc)}})  # fmt: skip
            continue
        await asyncio.to_thread(leases.release_claimed, lease)
        dropped.append(lease)
    if dropped:
        log.info("orphaned roles dropped", extra={"fields": {
            "roles": [f"{d.resource}/{d.role}" for d in dropped],
            "owners": sorted({d.replica_id for d in dropped})}})  # fmt: skip
    return dropped


async def keep_leases(leases: RoleLeases, droppers: Callable[[], Mapping[str, Dropper]]) -> None:
    """Forever (a background task; cancel to stop): heartbeat for this replica, then drop
    what dead replicas left, every :attr:`RoleLeases.heartbeat_interval` seconds."""
    while True:
        try:
            await asyncio.to_thread(leases.heartbeat)
            await reap(leases, droppers())
        except StoreUnavailable as exc:  # PostgreSQL away: the next beat tries again
            log.warning("role leases: state database unavailable", extra={"fields": {
                "error": str(exc)}})  # fmt: skip
        except Exception:  # a failure must not stop the loop
            log.exception("role lease upkeep failed")
        await asyncio.sleep(leases.heartbeat_interval)


__all__ = [
    "DEFAULT_GRACE",
    "DOMAIN",
    "MIGRATIONS",
    "Dropper",
    "Lease",
    "RoleLeases",
    "keep_leases",
    "lease_role",
    "reap",
    "release_role",
]
