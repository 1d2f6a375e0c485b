"""Leases on dynamic database roles: no role outlives the gateway process that made it.

A per-task role (:mod:`lockgate.gateway.dynamic_roles`) is a login upstream that the
gateway never sees again; the process that issued it drops it when its token ends. If that
process dies first (``kill -9``, a lost node), someone else must. So every live role is a
row in the state database (domain ``roles``: the SQLite file ``roles.db`` on one host, the
shared PostgreSQL database across replicas)::

    role_leases(resource, role, replica_id, incarnation, expires_at, created_at,
                claims, claimed_by, claimed_until)
    role_lease_holders(incarnation, replica_id, started_at, last_seen)
    replicas(replica_id, last_seen)

The lease is written *before* the role is created upstream and deleted once it is dropped,
so a role that may exist always has one. It names its holder: the process that issued it
(an *incarnation*: the replica id and a random id per process start). Each holder
heartbeats every few seconds from the dynamic-role sweeper (``role_lease_holders``, and
``replicas`` per replica id for operators). A lease is an orphan when

- its holder has not been seen for ``grace`` seconds (the process or its replica died),
- its token expired more than ``grace`` seconds ago (its holder failed to drop it), or
- its holder runs under this replica id, has not beaten since this process started, and
  this process has been up for two beats (a restart with the same ``replica_id``, on one
  host too: the previous process's roles go at once, not after the grace; a live process
  under the same id would have beaten by then, so its roles stay).

Any replica's sweeper drops orphans with the resource's admin login (the kind's
:class:`~lockgate.gateway.dynamic_roles.RoleSet`) and deletes their leases. A lease also
names its token (``claims``: the token's claims as JSON, never the token or the role's
password), so any replica whose revocations say the token is revoked drops another
process's role too (:func:`reap_revoked`): its holder may be cut off from the shared state
and never learn of the revocation. Exactly one replica drops a given role: it first
*claims* the lease, one conditional ``UPDATE`` (``claimed_until`` in the past or unset)
whose row count says who won, on SQLite and PostgreSQL alike; a claimer that dies
mid-drop leaves a claim that lapses after ``claim_for`` seconds, and another replica
retries (dropping is idempotent).

Clocks: ``last_seen`` is written with the owner's clock and judged with the reaper's, so
``grace`` must exceed the replicas' clock skew (NTP keeps it far below a second).
The methods here are synchronous (one short transaction each); async code runs them in a
worker thread so the event loop never waits on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lockgate import _log
from lockgate.errors import UpstreamUnavailable
from lockgate.identity.model import Claims
from lockgate.store import (
    Cursor,
    Database,
    Migration,
    StoreUnavailable,
    open_store,
    register_domain,
)

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
    Migration(
        2,
        "role leases name the process that holds them (its heartbeat too)",
        """
        ALTER TABLE role_leases ADD COLUMN incarnation TEXT;
        CREATE TABLE role_lease_holders (
            incarnation TEXT PRIMARY KEY,
            replica_id TEXT NOT NULL,
            started_at REAL NOT NULL,
            last_seen REAL NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "role leases carry their token's claims: any replica drops a revoked token's role",
        "ALTER TABLE role_leases ADD COLUMN claims TEXT;",
    ),
)
register_domain(DOMAIN, MIGRATIONS)

DEFAULT_GRACE = 30.0  # seconds without a heartbeat after which a replica is presumed dead
DEFAULT_CLAIM_FOR = 60.0  # seconds a claim to drop an orphan holds before another may retry

HOLDERS_KEPT = 86400.0  # seconds a silent holder's heartbeat row is kept once it holds nothing

_HEARTBEAT_REPLICA = (
    "INSERT INTO replicas (replica_id, last_seen) VALUES (?, ?) "
    "ON CONFLICT (replica_id) DO UPDATE SET last_seen = excluded.last_seen"
)
_HEARTBEAT_HOLDER = (
    "INSERT INTO role_lease_holders (incarnation, replica_id, started_at, last_seen) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (incarnation) DO UPDATE SET last_seen = excluded.last_seen"
)
_FORGET_HOLDERS = (
    "DELETE FROM role_lease_holders WHERE last_seen < ? AND incarnation NOT IN "
    "(SELECT incarnation FROM role_leases WHERE incarnation IS NOT NULL)"
)
_RECORD = (
    "INSERT INTO role_leases "
    "(resource, role, replica_id, incarnation, expires_at, created_at, claims) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (resource, role) DO UPDATE SET "
    "replica_id = excluded.replica_id, incarnation = excluded.incarnation, "
    "expires_at = excluded.expires_at, created_at = excluded.created_at, "
    "claims = excluded.claims, claimed_by = NULL, claimed_until = NULL"
)
# Live roles of other processes whose token is known (unclaimed, or the claim lapsed): this
# replica drops those its revocations say are revoked.
_HELD_ELSEWHERE = """
    SELECT resource, role, replica_id, expires_at, incarnation, claims FROM role_leases
    WHERE claims IS NOT NULL AND COALESCE(incarnation, '') <> ?
      AND (claimed_until IS NULL OR claimed_until < ?)
    ORDER BY expires_at
    LIMIT ?
"""
# Orphans: the token expired more than grace ago; or the holding process has been silent
# for grace; or (a restart) it is another process under this replica id that has not beaten
# since this one started, although this one has been up long enough to see a live sibling
# beat. A lease from before holders were recorded falls back on its replica's heartbeat.
_ORPHANS = """
    SELECT l.resource, l.role, l.replica_id, l.expires_at, l.incarnation, l.claims
    FROM role_leases l
    LEFT JOIN role_lease_holders h ON h.incarnation = l.incarnation
    LEFT JOIN replicas r ON r.replica_id = l.replica_id
    WHERE (l.claimed_until IS NULL OR l.claimed_until < ?)
      AND (l.expires_at < ?
           OR (l.incarnation IS NOT NULL AND l.incarnation <> ?
               AND (h.last_seen IS NULL OR h.last_seen < ?
                    OR (l.replica_id = ? AND h.last_seen < ?)))
           OR (l.incarnation IS NULL AND l.replica_id <> ?
               AND (r.last_seen IS NULL OR r.last_seen < ?)))
    ORDER BY l.expires_at
    LIMIT ?
"""
_CLAIM = (
    "UPDATE role_leases SET claimed_by = ?, claimed_until = ? "
    "WHERE resource = ? AND role = ? AND replica_id = ? AND COALESCE(incarnation, '') = ? "
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
    incarnation: str | None = None  # the process holding it (None: recorded before that)
    claims: Claims | None = None  # the token it was issued for (None: recorded before that)


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
        self.db, self._owned = open_store(where, DOMAIN, MIGRATIONS, migrate_schema=migrate_schema)
        self.replica_id = replica_id
        self.grace = grace
        self.claim_for = claim_for
        self._clock = clock
        self.started_at = clock()
        # This process: a restart (or a second process under the same replica id) is
        # another holder, judged on its own heartbeat.
        self.incarnation = f"{replica_id}/{uuid.uuid4().hex}"

    @property
    def heartbeat_interval(self) -> float:
        """How often to heartbeat: several beats per grace, so one lost beat costs nothing."""
        return max(0.05, min(5.0, self.grace / 4))

    @property
    def settle(self) -> float:
        """Seconds after its start by which this process has seen every live sibling under
        its replica id beat (two beats)."""
        return 2 * self.heartbeat_interval

    def heartbeat(self) -> None:
        now = self._clock()
        with self.db.transaction() as cur:
            self._beat(cur, now)
            cur.execute(_FORGET_HOLDERS, (now - HOLDERS_KEPT,))

    def _beat(self, cur: Cursor, now: float) -> None:
        cur.execute(_HEARTBEAT_REPLICA, (self.replica_id, now))
        cur.execute(_HEARTBEAT_HOLDER, (self.incarnation, self.replica_id, self.started_at, now))

    def record(
        self, resource: str, role: str, expires_at: float, claims: Claims | None = None
    ) -> None:
        """This process is about to create ``role`` (call before creating it upstream) for
        the token ``claims`` (kept so that any replica can tell when it is revoked)."""
        now = self._clock()
        token = None if claims is None else json.dumps(claims.to_payload(), sort_keys=True)
        with self.db.transaction() as cur:
            # The heartbeat first: a lease never names a holder that was never seen.
            self._beat(cur, now)
            cur.execute(
                _RECORD,
                (resource, role, self.replica_id, self.incarnation, expires_at, now, token),
            )
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
        silent_since = now - self.grace
        # Before settling, a sibling under this replica id may not have beaten yet: only the
        # grace judges it (0.0: no heartbeat is older than that).
        restarted_before = self.started_at if now >= self.started_at + self.settle else 0.0
        params = (
            now, silent_since, self.incarnation, silent_since, self.replica_id,
            restarted_before, self.replica_id, silent_since, limit,
        )  # fmt: skip
        with self.db.read() as cur:
            rows = cur.execute(_ORPHANS, params).fetchall()
        return [_lease(r) for r in rows]

    def held_elsewhere(self, limit: int = 100_000) -> list[Lease]:
        """The leases of other processes (any replica, or this one's previous incarnation)
        that name their token and are not claimed: the ones this replica may drop when its
        revocations say the token is revoked."""
        with self.db.read() as cur:
            rows = cur.execute(_HELD_ELSEWHERE, (self.incarnation, self._clock(), limit))
            leases = [_lease(r) for r in rows.fetchall()]
        return [x for x in leases if x.claims is not None]

    def claim(self, lease: Lease) -> bool:
        """Take the drop of ``lease`` on; True for exactly one claimer (until the claim lapses
        after ``claim_for`` seconds). False: another replica has it, or it is gone."""
        now = self._clock()
        with self.db.transaction() as cur:
            cur.execute(
                _CLAIM,
                (self.replica_id, now + self.claim_for, lease.resource, lease.role,
                 lease.replica_id, lease.incarnation or "", now),
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

    def give_up_claim(self, lease: Lease) -> None:
        """The drop failed: let the next sweep (here or on another replica) try again at
        once rather than after the claim lapses."""
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE role_leases SET claimed_by = NULL, claimed_until = NULL "
                "WHERE resource = ? AND role = ? AND claimed_by = ?",
                (lease.resource, lease.role, self.replica_id),
            )

    def leases(self) -> list[Lease]:
        """Every lease (operators, tests)."""
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT resource, role, replica_id, expires_at, incarnation, claims "
                "FROM role_leases ORDER BY resource, role"
            ).fetchall()
        return [_lease(r) for r in rows]

    def close(self) -> None:
        if self._owned:
            self.db.close()


def _lease(row: tuple[Any, ...]) -> Lease:
    return Lease(
        str(row[0]), str(row[1]), str(row[2]), float(row[3]),
        None if row[4] is None else str(row[4]), _claims(row[5]),
    )  # fmt: skip


def _claims(stored: object) -> Claims | None:
    """The token claims a lease names; None when it names none or they do not parse (the
    lease is then only ever dropped as an orphan)."""
    if not isinstance(stored, str):
        return None
    try:
        payload = json.loads(stored)
    except ValueError:
        return None
    return Claims.from_payload(payload) if isinstance(payload, dict) else None


async def lease_role(
    leases: RoleLeases | None,
    resource: str,
    role: str,
    expires_at: float,
    claims: Claims | None = None,
) -> None:
    """Record the lease before the role exists: a crash between the two leaves a lease on
    nothing (harmless to sweep), never a role nobody would drop. No lease, no role: raises
    :class:`UpstreamUnavailable` when the state database cannot record it."""
    if leases is None:
        return
    try:
        await asyncio.to_thread(leases.record, resource, role, expires_at, claims)
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
    orphans = await asyncio.to_thread(leases.orphans)
    return await _drop_claimed(leases, orphans, droppers, "orphaned roles dropped")


async def reap_revoked(
    leases: RoleLeases, droppers: Mapping[str, Dropper], is_revoked: Callable[[Claims], bool]
) -> list[Lease]:
    """Drop the roles other processes hold for tokens ``is_revoked`` says are revoked
    (this replica's revocations): the holder may be cut off from the shared state and never
    learn it. Exactly one replica drops each, through the lease claim, as :func:`reap`."""
    held = await asyncio.to_thread(leases.held_elsewhere)
    revoked = [x for x in held if x.claims is not None and is_revoked(x.claims)]
    if not revoked:
        return []
    return await _drop_claimed(leases, revoked, droppers, "roles of revoked tokens dropped")


async def _drop_claimed(
    leases: RoleLeases, candidates: list[Lease], droppers: Mapping[str, Dropper], what: str
) -> list[Lease]:
    dropped: list[Lease] = []
    for lease in candidates:
        dropper = droppers.get(lease.resource)
        if dropper is None:  # not served here: a replica that serves it sweeps it
            continue
        if not await asyncio.to_thread(leases.claim, lease):
            continue  # another replica took it
        try:
            await dropper.drop_orphan(lease.role)
        except Exception as exc:
            log.warning("role of another process not dropped yet", extra={"fields": {
                "resource": lease.resource, "role": lease.role, "owner": lease.replica_id,
                "error": str(exc)}})  # fmt: skip
            with contextlib.suppress(Exception):  # else the claim lapses by itself
                await asyncio.to_thread(leases.give_up_claim, lease)
            continue
        await asyncio.to_thread(leases.release_claimed, lease)
        dropped.append(lease)
    if dropped:
        log.info(what, extra={"fields": {
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
    "reap_revoked",
    "release_role",
]
