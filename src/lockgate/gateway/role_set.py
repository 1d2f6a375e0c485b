"""One resource's per-task database roles: the bookkeeping every database kind shares.

:class:`RoleSet` issues, revokes and sweeps the roles of one ``dynamic_roles: true``
resource: one role per token, which task try owns it, drops retried by the sweeper until
they succeed, a lease row written before a role is made when the state keeps leases
(:mod:`lockgate.gateway.role_leases`), and retirement when the resource leaves the catalog.
A subclass per kind says how to create a role with its grants, how to drop one and how to
list leftovers (:class:`lockgate.gateway.cql.roles.DynamicRoles`,
:class:`lockgate.gateway.postgres.dynamic_roles.PostgresRoles`). Every resource's sets as
one, following revocations and the catalog, are :class:`lockgate.gateway.dynamic_roles.DbRoles`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import astuple, dataclass, field
from typing import Any, ClassVar, Protocol

from lockgate import _log
from lockgate.errors import UpstreamError, UpstreamUnavailable
from lockgate.gateway.engine import PolicySource, RequestFactory, default_request_factory
from lockgate.gateway.role_leases import RoleLeases, lease_role, release_role
from lockgate.identity.model import Claims, TaskIdentity

log = _log.get("gateway.dynamic_roles")

PREFIX = "lg_"


class PasswordSource(Protocol):
    """The gateway's own upstream password of one resource; ``previous=True``: the version
    before it while a rotation's overlap lasts (``CredentialError`` when there is none)."""

    def __call__(self, *, previous: bool = False) -> Awaitable[str]: ...


class NoGrants(Exception):
    """Policy allows this principal nothing on any table of the resource."""


class RolesRetired(UpstreamUnavailable):
    """The resource left the catalog or changed: its roles are no longer issued (retry
    against the new catalog)."""


@dataclass(frozen=True, slots=True)
class RoleCredential:
    """What a task gets: log in to the database directly as ``username``/``password``."""

    username: str
    password: str = field(repr=False)
    expires_at: float
    grants: tuple[tuple[str, str], ...]  # (permission, object text)
    skipped: tuple[str, ...] = ()  # grants policy allowed by name but not given, with why


def role_name(resource: str, jti: str) -> str:
    """``lg_`` + 16 hex of sha256(resource, jti): one role per token and resource, found
    again from the jti alone (a revocation names the jti), a valid unquoted identifier in
    every database (19 bytes)."""
    return PREFIX + hashlib.sha256(f"{resource}\0{jti}".encode()).hexdigest()[:16]


class RoleSet:
    """Issue, revoke and sweep the per-token roles of one resource; a subclass per kind
    implements :meth:`_create`, :meth:`_drop` and :meth:`_leftovers`."""

    #: action -> the database permissions it grants (the subclass's own words)
    PERMISSIONS: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: what the logs call one role ("dynamic cql role", "dynamic postgres role")
    NOUN: ClassVar[str] = "dynamic role"

    def __init__(
        self,
        resource: Any,
        password: PasswordSource,
        policy: PolicySource,
        *,
        clock: Callable[[], float] = time.time,
        make_request: RequestFactory | None = None,
    ) -> None:
        self.resource = resource
        self._password = password
        self._policy = policy
        self._clock = clock
        self._make_request = make_request or default_request_factory()
        self._issued: dict[str, RoleCredential] = {}
        self._owners: dict[str, TaskIdentity] = {}  # role -> the task try it serves
        self._pending: set[str] = set()  # revoked, but the DROP failed: the sweeper retries
        self._lock = asyncio.Lock()  # one issue at a time; retire() waits for the one under way
        self._retired = False
        self.leases: RoleLeases | None = None  # set by DbRoles when the state keeps leases
        # set by DbRoles: why no role may be issued now (shared state past its staleness
        # bound), or None
        self.refusal: Callable[[], str | None] | None = None

    # -- what a kind implements -------------------------------------------------------------
    async def _create(
        self, name: str, password: str, claims: Claims, require_grants: bool
    ) -> tuple[tuple[str, str], ...]:
        """Create role ``name`` with ``password``, grant it what policy allows ``claims``
        and return the grants; raise :class:`NoGrants` (creating nothing) when
        ``require_grants`` and nothing is allowed. A role left half made must be dropped
        (or added to ``_pending``) before raising; :meth:`_refuse_if_retired` is called
        once the grants are given."""
        raise NotImplementedError

    async def _drop(self, name: str) -> None:
        """End role ``name`` upstream (its sessions too where the database allows); no
        error when it does not exist."""
        raise NotImplementedError

    async def _leftovers(self) -> list[str]:
        """Names of the ``lg_`` roles upstream that may be dropped as orphans."""
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """What the task needs besides the login to reach the database (``/v1/db-role``)."""
        return {}

    # -- issue ------------------------------------------------------------------------------
    @property
    def issued(self) -> dict[str, RoleCredential]:
        return dict(self._issued)

    async def issue(self, claims: Claims, *, require_grants: bool = False) -> RoleCredential:
        """Create (or return) the role for ``claims`` with the grants policy allows.

        With ``require_grants``, raise :class:`NoGrants` (and create nothing) when policy
        allows the principal nothing on any table.
        """
        name = role_name(self.resource.name, claims.jti)
        async with self._lock:
            self._refuse_if_retired()
            self._refuse_if_stale()
            known = self._issued.get(name)
            if known is not None:
                return known
            password = secrets.token_urlsafe(32)  # URL-safe: never a quote
            await lease_role(self.leases, self.resource.name, name, float(claims.exp), claims)
            try:
                grants = await self._create(name, password, claims, require_grants)
            except BaseException:
                if name not in self._pending:  # nothing made upstream: nothing to lease
                    await release_role(self.leases, self.resource.name, name)
                raise
            cred = RoleCredential(
                name, password, float(claims.exp), grants, self.skipped_grants(name)
            )
            self._issued[name] = cred
            self._owners[name] = claims.identity
        log.info(f"{self.NOUN} issued", extra={"fields": {
            "resource": self.resource.name, "role": name, "principal": claims.sub,
            "grants": len(grants)}})  # fmt: skip
        return cred

    def skipped_grants(self, name: str) -> tuple[str, ...]:
        """Grants policy allowed by name that role ``name`` did not get, with why (a kind
        that never withholds one answers none)."""
        return ()

    def _refuse_if_retired(self) -> None:
        if self._retired:
            raise RolesRetired(f"{self.resource.name!r} no longer issues dynamic roles")

    def _refuse_if_stale(self) -> None:
        # The door refuses first; this closes the moment between its check and the lock.
        why = self.refusal() if self.refusal is not None else None
        if why is not None:
            raise UpstreamUnavailable(f"no dynamic role issued: {why}")

    def allowed(self, claims: Claims, objects: Iterable[str]) -> list[tuple[str, str]]:
        """(action, object) for every action of :attr:`PERMISSIONS` policy allows the
        principal on each object, asked exactly as the engine asks for a statement."""
        policy = self._policy.current
        ttl = float(claims.ttl)  # what a max_token_ttl condition judges
        out: list[tuple[str, str]] = []
        for obj in objects:
            for action in self.PERMISSIONS:
                decision = policy.decide(
                    self._make_request(
                        principal=claims.sub,
                        action=action,
                        resource=self.resource.name,
                        object=obj,
                        token_ttl=ttl,
                        map_index=claims.map_index,
                    )
                )
                if decision.allowed:
                    out.append((action, obj))
        return out

    async def retire(self) -> list[str]:
        """The resource left the catalog or changed: issue no role from now on and drop every
        live one; returns the dropped names. An issue under way finishes first (the lock) and
        drops the role it made itself, so no role is created after this sweep has run."""
        self._retired = True
        async with self._lock:
            return await self.sweep(now=float("inf"))

    # -- end --------------------------------------------------------------------------------
    @property
    def live(self) -> frozenset[str]:
        """The roles that may exist upstream: issued, or their drop still to be retried."""
        return frozenset(self._issued) | self._pending

    async def drop_all(self) -> list[str]:
        """Drop every live role now, tokens running or not (the replica can no longer
        follow their revocations); returns the dropped names. Roles are issued again
        afterwards; a failed drop is retried by the sweeper. Every role goes before any lease
        is released: the state database may be what is out of reach, and each release then
        waits for its connection timeout."""
        async with self._lock:  # an issue under way finishes first, then its role goes too
            dropped = await self._revoke_all(sorted(self.live), release=False)
        for name in dropped:
            await release_role(self.leases, self.resource.name, name)
        return dropped

    async def revoke(self, name: str, *, release: bool = True) -> bool:
        """Drop one role (task ended). True if it was dropped or did not exist.

        If the drop fails the role is kept for the sweeper to retry, and the error raised.
        ``release=False``: the caller deletes the lease.
        """
        self._pending.add(name)
        await self._drop(name)
        self._issued.pop(name, None)
        self._owners.pop(name, None)
        self._pending.discard(name)
        if release:
            await release_role(self.leases, self.resource.name, name)
        log.info(f"{self.NOUN} dropped", extra={"fields": {"role": name}})
        return True

    async def drop_orphan(self, name: str) -> None:
        """Drop role ``name`` that a dead process (another replica, or this one before a
        restart) issued; its lease is the caller's to delete."""
        await self._drop(name)
        self._issued.pop(name, None)
        self._owners.pop(name, None)
        self._pending.discard(name)
        log.info(f"orphaned {self.NOUN} dropped", extra={"fields": {"role": name}})

    async def revoke_token(self, claims: Claims) -> bool:
        return await self.revoke(role_name(self.resource.name, claims.jti))

    async def revoke_jti(self, jti: str) -> list[str]:
        """Drop the role issued for token ``jti``, if this process issued one."""
        name = role_name(self.resource.name, jti)
        if name not in self._issued:
            return []
        return await self._revoke_all([name])

    async def revoke_matching(
        self,
        deployment: str,
        dag_id: str,
        *,
        run_id: str | None = None,
        task_id: str | None = None,
        try_number: int | None = None,
        map_index: int | None = None,
    ) -> list[str]:
        """Drop the roles of one task try, one DAG run or one DAG (``None`` matches any)."""
        want = (deployment, dag_id, task_id, run_id, try_number, map_index)
        names = [
            n
            for n, owner in self._owners.items()
            if all(w is None or w == have for w, have in zip(want, astuple(owner), strict=True))
        ]
        return await self._revoke_all(names)

    async def _revoke_all(self, names: list[str], *, release: bool = True) -> list[str]:
        dropped = []
        for name in names:
            try:
                await self.revoke(name, release=release)
                dropped.append(name)
            except (UpstreamError, OSError) as exc:
                log.warning(f"{self.NOUN} not dropped yet", extra={"fields": {
                    "role": name, "error": str(exc)}})  # fmt: skip
        return dropped

    async def sweep(self, now: float | None = None) -> list[str]:
        """Drop every issued role whose token has expired, and every role whose drop failed
        before; returns the dropped names."""
        t = self._clock() if now is None else now
        expired = [n for n, c in self._issued.items() if c.expires_at <= t]
        expired += [n for n in self._pending if n not in expired]
        await self._revoke_all(expired)
        return [n for n in expired if n not in self._issued and n not in self._pending]

    async def sweep_orphans(self) -> list[str]:
        """Drop ``lg_`` roles upstream that this process did not issue (e.g. after a
        restart); which ones may go is the kind's call (:meth:`_leftovers`)."""
        dropped: list[str] = []
        for name in await self._leftovers():
            if name.startswith(PREFIX) and name not in self._issued:
                await self._drop(name)
                dropped.append(name)
        return dropped

    async def run_sweeper(self, interval: float = 30.0) -> None:
        """Sweep forever (run as a background task; cancel to stop)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:  # a sweep failure must not stop the loop
                log.exception(f"{self.NOUN} sweep failed")
