"""The dynamic Cassandra roles of every ``dynamic_roles: true`` cql resource, as one set.

:class:`DbRoles` holds one :class:`~lockgate.gateway.cql.roles.DynamicRoles` per such
resource and remembers which token each live role was issued for, so that a role ends with
its token: the sweeper drops it at expiry, :meth:`DbRoles.on_revoke` at once when a
revocation arrives through ``/v1/revoke``, and :meth:`DbRoles.after_refresh` soon after the
CLI or another replica revokes it (the revocation store's refresh saw a change).

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
from lockgate.config import CqlResource, HttpResource
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
        resources: Iterable[HttpResource | CqlResource],
        password_for: PasswordFor,
        policy: PolicySource,
        revocations: RevocationStore,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval: float = 15.0,
    ) -> None:
        self.roles: dict[str, DynamicRoles] = {}
        for r in resources:
            if isinstance(r, CqlResource) and r.dynamic_roles:

                async def password(r: CqlResource = r) -> str:
                    return await password_for(r)

                self.roles[r.name] = DynamicRoles(r, password, policy, clock=clock)
        self._revocations = revocations
        self._clock = clock
        self.sweep_interval = sweep_interval
        self._claims: dict[tuple[str, str], Claims] = {}  # (resource, role) -> token claims
        self._task: asyncio.Task[None] | None = None
        self._drop: asyncio.Task[None] | None = None  # roles of tokens revoked elsewhere
        self._stale = False

    def serves(self, resource: str) -> bool:
        return resource in self.roles

    def issued(self, resource: str, role: RoleCredential, claims: Claims) -> None:
        """Remember the token a role was issued for (its audit record is written)."""
        self._claims[(resource, role.username)] = claims

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
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
        for roles in self.roles.values():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5.0):
                    await roles.sweep(now=float("inf"))
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
        for (resource, _role), claims in list(self._claims.items()):
            if self._revocations.is_revoked(claims):
                dropped += await self.roles[resource].revoke_jti(claims.jti)
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

    def _forget_dropped(self) -> None:
        for key in list(self._claims):
            if key[1] not in self.roles[key[0]].issued:
                del self._claims[key]

    # -- revocation hook (the token service's on_revoke) ----------------------------------
    async def on_revoke(self, kind: str, target: dict[str, Any]) -> list[str]:
        dropped: list[str] = []
        if kind == "jti":
            # Only the revoking deployment's token: a jti is no secret (see revocation.py).
            for (resource, _role), claims in list(self._claims.items()):
                if claims.jti == target["jti"] and claims.deployment == target["deployment"]:
                    dropped += await self.roles[resource].revoke_jti(claims.jti)
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
