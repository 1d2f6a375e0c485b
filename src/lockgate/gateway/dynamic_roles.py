"""Per-task database roles, whatever the database: every resource's role sets as one.

A ``dynamic_roles: true`` resource (``kind: cql`` or ``kind: postgres``) hands a task that
cannot go through the gateway a login of its own on the upstream database: a role created
for one Lockgate token (one task try), granted exactly what policy allows the principal on
the tables that exist upstream, and dropped when the token ends. What does not depend on
the database is in two rooms:

- :mod:`lockgate.gateway.role_set`: :class:`RoleSet`, one resource's live roles (a subclass
  per kind: :class:`lockgate.gateway.cql.roles.DynamicRoles`,
  :class:`lockgate.gateway.postgres.dynamic_roles.PostgresRoles`), and what it hands out
  (:class:`RoleCredential`, :func:`role_name`); imported from here too.
- here, :class:`DbRoles`: the role sets of every such resource as one set. It remembers which
  token each live role was issued for, so that a role ends with its token: the sweeper drops
  it at expiry, :meth:`DbRoles.on_revoke` at once when a revocation arrives through
  ``/v1/revoke``, :meth:`DbRoles.after_refresh` soon after the CLI or another replica
  revokes it. :meth:`DbRoles.update_resources` follows a new catalog live.

Roles and their claims live in this process; a graceful stop drops every live role. With
leases (:mod:`lockgate.gateway.role_leases`, given by the server from the state database)
each live role is also a lease row written before the role is created: the sweeper
heartbeats for this replica and drops the roles of a replica that died (or of this one's
previous incarnation after a restart), exactly one replica per orphan, and the roles other
processes hold for tokens this replica's revocations say are revoked. Past the shared
state's staleness bound (:class:`~lockgate.identity.staleness.StalenessBound`) a replica
cannot follow revocations made elsewhere: it drops every live role it issued and issues
none until the shared state is reached again. Without leases a
crash leaves roles until :meth:`RoleSet.sweep_orphans` runs (not automatic: another replica
sharing the upstream database would lose its roles). The door that issues roles is
``POST /v1/db-role`` (:mod:`lockgate.control.db_role`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from lockgate import _log
from lockgate.config import AnyResource
from lockgate.errors import CredentialError
from lockgate.gateway.engine import CredentialBroker, PolicySource
from lockgate.gateway.role_leases import RoleLeases, keep_leases, reap_revoked
from lockgate.gateway.role_set import (
    PREFIX,
    NoGrants,
    PasswordSource,
    RoleCredential,
    RoleSet,
    RolesRetired,
    role_name,
)
from lockgate.identity.model import Claims
from lockgate.identity.revocation import RevocationStore
from lockgate.identity.staleness import StalenessBound
from lockgate.store import StoreUnavailable

log = _log.get("gateway.dynamic_roles")

#: resource kind -> "module:Class" of its role set (imported only when a resource asks)
ROLE_SETS: dict[str, str] = {
    "cql": "lockgate.gateway.cql.roles:DynamicRoles",
    "postgres": "lockgate.gateway.postgres.dynamic_roles:PostgresRoles",
}


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
        staleness: StalenessBound | None = None,
    ) -> None:
        self._password_for = password_for
        self.leases = leases
        self.staleness = staleness
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
        self._drop_wanted = False  # revocations changed while a drop ran
        self._stale_dropped = False  # the drop-everything pass ran since the bound was passed
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
                kept[name].refusal = self._stale_refusal
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

    def _stale_refusal(self) -> str | None:
        """Why roles must go now (the shared state is past its staleness bound), or None."""
        return self.staleness.refusal() if self.staleness is not None else None

    async def sweep(self) -> list[str]:
        """Drop expired roles and roles whose token was revoked elsewhere (CLI, replica),
        also those another process holds (through its lease); past the staleness bound, drop
        every live role."""
        why = self._stale_refusal()
        if why is not None:
            return await self._drop_everything(why)
        self._stale_dropped = False
        dropped: list[str] = []
        for roles, claims in self._live_claims():
            if self._revocations.is_revoked(claims):
                dropped += await roles.revoke_jti(claims.jti)
        for roles in self.roles.values():
            dropped += await roles.sweep()
        self._forget_dropped()
        if self.leases is not None and self.roles:
            try:
                held = await reap_revoked(self.leases, self.roles, self._revocations.is_revoked)
            except StoreUnavailable as exc:  # the next sweep tries again
                log.warning("roles held elsewhere not checked: state database unavailable",
                            extra={"fields": {"error": str(exc)}})  # fmt: skip
            else:
                dropped += [lease.role for lease in held]
        return dropped

    async def _drop_everything(self, why: str) -> list[str]:
        """Fail closed: this replica can no longer learn of revocations and blocks made on
        another one, and a role is a login it never sees again. None is issued until the
        shared state is reached again (the door refuses, and so does each role set)."""
        self._stale_dropped = True
        sets = list(self.roles.values())
        dropped = [n for names in await asyncio.gather(*(r.drop_all() for r in sets))
                   for n in names]  # fmt: skip
        self._forget_dropped()
        left = sorted(name for roles in sets for name in roles.live)
        if dropped or left:
            log.warning("dynamic roles dropped: shared state past its staleness bound",
                        extra={"fields": {"roles": dropped, "not_dropped_yet": left,
                                          "reason": why}})  # fmt: skip
        return dropped

    def after_refresh(self, changed: bool) -> None:
        """After each revocation refresh (``changed``: it loaded new revocations).

        A dynamic database role is a login the gateway never sees again: drop those of
        newly revoked tokens now, not at the next sweep, and every live one as soon as the
        shared state is past its staleness bound (once; the sweeper retries what failed); in
        a task of its own, so a slow database never delays the next revocation refresh (a
        change seen meanwhile starts another drop once this one is done)."""
        self._drop_wanted = self._drop_wanted or (changed and bool(self.roles))
        if self._stale_refusal() is None:
            self._stale_dropped = False
        elif not self._stale_dropped and any(r.live for r in self.roles.values()):
            self._drop_wanted = True
        if self._drop_wanted and (self._drop is None or self._drop.done()):
            self._drop_wanted = False
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


__all__ = [
    "PREFIX",
    "ROLE_SETS",
    "DbRoles",
    "DynamicRolesResource",
    "NoGrants",
    "PasswordFor",
    "PasswordSource",
    "RoleCredential",
    "RoleSet",
    "RolesRetired",
    "role_name",
    "role_set_class",
    "upstream_password",
]
