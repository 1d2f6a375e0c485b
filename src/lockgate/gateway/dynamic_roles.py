"""Per-task database roles, whatever the database: the kind-neutral half.

A ``dynamic_roles: true`` resource (``kind: cql`` or ``kind: postgres``) hands a task that
cannot go through the gateway a login of its own on the upstream database: a role created
for one Lockgate token (one task try), granted exactly what policy allows the principal on
the tables that exist upstream, and dropped when the token ends. This module holds what
does not depend on the database:

- :class:`RoleSet`: one resource's live roles. A subclass per kind says how to create a
  role with its grants, how to drop one and how to list leftovers
  (:class:`lockgate.gateway.cql.roles.DynamicRoles`,
  :class:`lockgate.gateway.postgres.dynamic_roles.PostgresRoles`); the bookkeeping (one
  role per token, which task try owns it, drops retried by the sweeper until they succeed,
  retirement when the resource leaves the catalog) lives here once.
- :class:`DbRoles`: the role sets of every such resource as one set. It remembers which
  token each live role was issued for, so that a role ends with its token: the sweeper drops
  it at expiry, :meth:`DbRoles.on_revoke` at once when a revocation arrives through
  ``/v1/revoke``, :meth:`DbRoles.after_refresh` soon after the CLI or another replica
  revokes it. :meth:`DbRoles.update_resources` follows a new catalog live.

Roles and their claims live in this process; a graceful stop drops every live role. With
leases (:mod:`lockgate.gateway.role_leases`, given by the server from the state database)
each live role is also a lease row written before the role is created: the sweeper
heartbeats for this replica and drops the roles of a replica that died (or of this one's
previous incarnation after a restart), exactly one replica per orphan. Without leases a
crash leaves roles until :meth:`RoleSet.sweep_orphans` runs (not automatic: another replica
sharing the upstream database would lose its roles). The door that issues roles is
``POST /v1/db-role`` (:mod:`lockgate.control.db_role`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import astuple, dataclass, field
from typing import Any, ClassVar, Protocol

from lockgate import _log
from lockgate.config import AnyResource
from lockgate.errors import CredentialError, UpstreamError, UpstreamUnavailable
from lockgate.gateway.engine import (
    CredentialBroker,
    PolicySource,
    RequestFactory,
    default_request_factory,
)
from lockgate.gateway.role_leases import RoleLeases, keep_leases, lease_role, release_role
from lockgate.identity.model import Claims, TaskIdentity
from lockgate.identity.revocation import RevocationStore

log = _log.get("gateway.dynamic_roles")

PREFIX = "lg_"

#: resource kind -> "module:Class" of its role set (imported only when a resource asks)
ROLE_SETS: dict[str, str] = {
    "cql": "lockgate.gateway.cql.roles:DynamicRoles",
    "postgres": "lockgate.gateway.postgres.dynamic_roles:PostgresRoles",
}


class PasswordSource(Protocol):
    """The gateway's own upstream password of one resource; ``previous=True``: the version
    before it while a rotation's overlap lasts (``CredentialError`` when there is none)."""

    def __call__(self, *, previous: bool = False) -> Awaitable[str]: ...


class DynamicRolesResource(Protocol):
    """What the role sets read of a resource (``CqlResource``, ``PostgresResource``)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def credential(self) -> str: ...
    @property
    def dynamic_roles(self) -> bool: ...


#: (resource, previous=False) -> the gateway's upstream password of that resource
PasswordFor = Callable[..., Awaitable[str]]


def upstream_password(broker: CredentialBroker) -> PasswordFor:
    """The gateway's own upstream password of a resource (its role admin logs in as it)."""

    async def password(resource: DynamicRolesResource, previous: bool = False) -> str:
        secret = await broker.upstream_secret(resource.credential, previous=previous)
        if secret is None:
            which = "previous secret" if previous else "secret"
            raise CredentialError(f"credential {resource.credential!r} has no {which}")
        return str(secret.value)

    return password


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
            known = self._issued.get(name)
            if known is not None:
                return known
            password = secrets.token_urlsafe(32)  # URL-safe: never a quote
            await lease_role(self.leases, self.resource.name, name, float(claims.exp))
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
    async def revoke(self, name: str) -> bool:
        """Drop one role (task ended). True if it was dropped or did not exist.

        If the drop fails the role is kept for the sweeper to retry, and the error raised.
        """
        self._pending.add(name)
        await self._drop(name)
        self._issued.pop(name, None)
        self._owners.pop(name, None)
        self._pending.discard(name)
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

    async def _revoke_all(self, names: list[str]) -> list[str]:
        dropped = []
        for name in names:
            try:
                await self.revoke(name)
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


def role_set_class(kind: str) -> type[RoleSet]:
    """The role set class of resource kind ``kind``; ``KeyError`` for a kind without one."""
    module, _, name = ROLE_SETS[kind].partition(":")
    cls: type[RoleSet] = getattr(importlib.import_module(module), name)
    return cls


class DbRoles:
    """The role sets of every ``dynamic_roles: true`` resource, whatever its kind."""

    def __init__(
        self,
        resources: Iterable[AnyResource],
        password_for: PasswordFor,
        policy: PolicySource,
        revocations: RevocationStore,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval: float = 15.0,
        leases: RoleLeases | None = None,
    ) -> None:
        self._password_for = password_for
        self.leases = leases
        self._policy = policy
        self._revocations = revocations
        self._clock = clock
        self.sweep_interval = sweep_interval
        self.roles: dict[str, RoleSet] = {}
        self._claims: dict[tuple[str, str], Claims] = {}  # (resource, role) -> token claims
        self._started = False
        self._task: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None  # heartbeat + orphan leases
        self._drop: asyncio.Task[None] | None = None  # roles of tokens revoked elsewhere
        self._stale = False
        self._retiring: set[asyncio.Task[None]] = set()  # roles of resources taken away
        self._set_resources(resources)

    def _set_resources(self, resources: Iterable[AnyResource]) -> list[RoleSet]:
        """Serve exactly these resources' roles; the sets no longer served (resource gone, no
        longer ``dynamic_roles``, or changed) are returned for their roles to be dropped."""
        wanted = {
            r.name: r
            for r in resources
            if r.kind in ROLE_SETS and getattr(r, "dynamic_roles", False)
        }
        retired = [
            roles for name, roles in self.roles.items() if wanted.get(name) != roles.resource
        ]
        kept = {name: roles for name, roles in self.roles.items() if roles not in retired}
        for name, r in wanted.items():
            if name not in kept:

                async def password(*, previous: bool = False, r: AnyResource = r) -> str:
                    if previous:  # only kinds that retry a refused login ask for it
                        return await self._password_for(r, previous=True)
                    return await self._password_for(r)

                kept[name] = role_set_class(r.kind)(r, password, self._policy, clock=self._clock)
                kept[name].leases = self.leases
        self.roles = kept
        self._claims = {k: c for k, c in self._claims.items() if k[0] in kept}
        return retired

    def update_resources(self, resources: Iterable[AnyResource]) -> None:
        """Take a new catalog without a restart. From now on roles are issued for exactly
        the new ``dynamic_roles`` resources; the live roles of a resource taken away or
        changed are dropped at once (in the background: a role is a login the gateway
        never sees, it must not outlive its resource's place in the catalog)."""
        for roles in self._set_resources(resources):
            task = asyncio.create_task(_drop_all(roles), name="lockgate-db-role-retire")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        if self._started:
            self.start()

    def serves(self, resource: str) -> bool:
        return resource in self.roles

    def issued(self, resource: str, role: RoleCredential, claims: Claims) -> None:
        """Remember the token a role was issued for (its audit record is written)."""
        self._claims[(resource, role.username)] = claims

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        if self.roles and self._task is None:
            self._task = asyncio.create_task(self._sweeper(), name="lockgate-db-role-sweeper")
        if self.roles and self.leases is not None and self._keeper is None:
            self._keeper = asyncio.create_task(
                keep_leases(self.leases, lambda: self.roles), name="lockgate-db-role-leases"
            )

    async def close(self) -> None:
        """Stop sweeping and drop every live role: nothing would ever drop it otherwise."""
        for task in (self._task, self._keeper, self._drop):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._keeper = self._drop = None
        await asyncio.gather(*self._retiring, *(_drop_all(r) for r in self.roles.values()))
        self._claims.clear()

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except Exception:  # a sweep failure must not stop the loop
                log.exception("dynamic role sweep failed")

    async def sweep(self) -> list[str]:
        """Drop expired roles and roles whose token was revoked elsewhere (CLI, replica)."""
        dropped: list[str] = []
        for roles, claims in self._live_claims():
            if self._revocations.is_revoked(claims):
                dropped += await roles.revoke_jti(claims.jti)
        for roles in self.roles.values():
            dropped += await roles.sweep()
        self._forget_dropped()
        return dropped

    def after_refresh(self, changed: bool) -> None:
        """After each revocation refresh (``changed``: it loaded new revocations).

        A dynamic database role is a login the gateway never sees again: drop those of
        newly revoked tokens now, not at the next sweep; in a task of its own, so a slow
        database never delays the next revocation refresh (a change seen meanwhile starts
        another drop once this one is done)."""
        self._stale = self._stale or (changed and bool(self.roles))
        if self._stale and (self._drop is None or self._drop.done()):
            self._stale = False
            self._drop = asyncio.create_task(self._drop_revoked(), name="lockgate-role-drop")

    async def _drop_revoked(self) -> None:
        try:
            await self.sweep()
        except Exception:  # the periodic sweeper tries again
            log.exception("dropping the database roles of revoked tokens failed")

    def _live_claims(self) -> list[tuple[RoleSet, Claims]]:
        """(the resource's roles, the token) of every live role, as of now (a catalog
        update may take a resource away while a drop is awaited)."""
        return [
            (self.roles[resource], claims)
            for (resource, _role), claims in list(self._claims.items())
            if resource in self.roles
        ]

    def _forget_dropped(self) -> None:
        for key in list(self._claims):
            roles = self.roles.get(key[0])
            if roles is None or key[1] not in roles.issued:
                del self._claims[key]

    # -- revocation hook (the token service's on_revoke) ----------------------------------
    async def on_revoke(self, kind: str, target: dict[str, Any]) -> list[str]:
        dropped: list[str] = []
        if kind == "jti":
            # Only the revoking deployment's token: a jti is no secret (see revocation.py).
            for roles, claims in self._live_claims():
                if claims.jti == target["jti"] and claims.deployment == target["deployment"]:
                    dropped += await roles.revoke_jti(claims.jti)
        else:
            for roles in self.roles.values():
                dropped += await roles.revoke_matching(
                    target["deployment"],
                    target["dag_id"],
                    run_id=target.get("run_id"),
                    task_id=target.get("task_id"),
                    try_number=target.get("try_number"),
                    map_index=target.get("map_index"),
                )
        self._forget_dropped()
        if dropped:
            log.info("dynamic roles revoked", extra={"fields": {"kind": kind, "roles": dropped}})
        return dropped


async def _drop_all(roles: RoleSet) -> None:
    """Retire one resource's roles (a stop, or the resource left the catalog): none is
    issued any more and every live one is dropped. A role still being made past the
    timeout drops itself (see :meth:`RoleSet.retire`)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await roles.retire()
