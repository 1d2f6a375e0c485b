"""The dynamic Cassandra roles of every ``dynamic_roles: true`` cql resource, as one set.

:class:`DbRoles` holds one :class:`~lockgate.gateway.cql.roles.DynamicRoles` per such
resource and remembers which token each live role was issued for, so that a role ends with
its token: the sweeper drops it at expiry, :meth:`DbRoles.on_revoke` at once when a
revocation arrives through ``/v1/revoke``, and :meth:`DbRoles.after_refresh` soon after the
CLI or another replica revokes it (the revocation store's refresh saw a change).

:meth:`DbRoles.update_resources` follows a new catalog live: roles are issued for the new
``dynamic_roles`` resources at once, and the live roles of a resource taken away (or
changed) are dropped at once.

Roles and their claims live in this process only. A graceful stop drops every live role;
a crash leaves them until :meth:`DynamicRoles.sweep_orphans` runs (not automatic: another
replica sharing the cluster would lose its roles). The door that issues roles is
``POST /v1/db-role`` (:mod:`lockgate.control.db_role`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from lockgate import _log
from lockgate.config import AnyResource, CqlResource
from lockgate.errors import CredentialError
from lockgate.gateway.cql.roles import DynamicRoles, RoleCredential
from lockgate.gateway.engine import CredentialBroker, PolicySource
from lockgate.identity.model import Claims
from lockgate.identity.revocation import RevocationStore

log = _log.get("gateway.cql.dynamic_roles")

PasswordFor = Callable[[CqlResource], Awaitable[str]]


def upstream_password(broker: CredentialBroker) -> PasswordFor:
    """The gateway's own upstream password of a cql resource (dynamic roles log in as it)."""

    async def password(resource: CqlResource) -> str:
        secret = await broker.upstream_secret(resource.credential)
        if secret is None:
            raise CredentialError(f"credential {resource.credential!r} has no secret")
        return str(secret.value)

    return password


class DbRoles:
    """The dynamic roles of every ``dynamic_roles: true`` cql resource."""

    def __init__(
        self,
        resources: Iterable[AnyResource],
        password_for: PasswordFor,
        policy: PolicySource,
        revocations: RevocationStore,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval: float = 15.0,
    ) -> None:
        self._password_for = password_for
        self._policy = policy
        self._revocations = revocations
        self._clock = clock
        self.sweep_interval = sweep_interval
        self.roles: dict[str, DynamicRoles] = {}
        self._claims: dict[tuple[str, str], Claims] = {}  # (resource, role) -> token claims
        self._started = False
        self._task: asyncio.Task[None] | None = None
        self._drop: asyncio.Task[None] | None = None  # roles of tokens revoked elsewhere
        self._stale = False
        self._retiring: set[asyncio.Task[None]] = set()  # roles of resources taken away
        self._set_resources(resources)

    def _set_resources(self, resources: Iterable[AnyResource]) -> list[DynamicRoles]:
        """Serve exactly these resources' roles; the sets no longer served (resource gone, no
        longer ``dynamic_roles``, or changed) are returned for their roles to be dropped."""
        wanted = {r.name: r for r in resources if isinstance(r, CqlResource) and r.dynamic_roles}
        retired = [
            roles for name, roles in self.roles.items() if wanted.get(name) != roles.resource
        ]
        kept = {name: roles for name, roles in self.roles.items() if roles not in retired}
        for name, r in wanted.items():
            if name not in kept:

                async def password(r: CqlResource = r) -> str:
                    return await self._password_for(r)

                kept[name] = DynamicRoles(r, password, self._policy, clock=self._clock)
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

    async def close(self) -> None:
        """Stop sweeping and drop every live role: nothing would ever drop it otherwise."""
        for task in (self._task, self._drop):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._drop = None
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
        cluster never delays the next revocation refresh (a change seen meanwhile starts
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

    def _live_claims(self) -> list[tuple[DynamicRoles, Claims]]:
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


async def _drop_all(roles: DynamicRoles) -> None:
    """Retire one resource's roles (a stop, or the resource left the catalog): none is
    issued any more and every live one is dropped. A CREATE ROLE still under way past the
    timeout drops its role itself (see :meth:`DynamicRoles.retire`)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await roles.retire()
