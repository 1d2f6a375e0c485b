"""Dynamic least-privilege Cassandra roles (``dynamic_roles: true``), for clients that cannot
go through the gateway.

Strategy: for one Lockgate token (one task try) :meth:`DynamicRoles.issue` creates a role
``lg_<16 hex of sha256(resource, jti)>`` with a random password and LOGIN, then grants it
exactly what policy allows that principal on the resource: every user table of the cluster
(read from ``system_schema.tables``) is checked for ``read`` / ``write`` / ``admin``, and
each allow becomes table-level GRANTs (read → SELECT, write → MODIFY, admin → ALTER, DROP;
plus CREATE on the keyspace when admin is allowed on every table of it). Policy globs are thus
resolved against real tables, never guessed. The role is dropped by :meth:`revoke` (task
end: :meth:`revoke_matching` finds the roles of one task try, DAG run or DAG; :meth:`revoke_jti`
the role of one token) or by :meth:`sweep` once the token has expired; :meth:`sweep_orphans`
drops ``lg_`` roles this process does not know (after a restart). A role whose drop failed
is retried by every sweep until it goes.

Rules: statements run over the gateway's own upstream login (which must be allowed to
create roles and grant). Statements that carry a password are never logged and upstream
error messages for them are not repeated. A role is created only once all its grants are
known, and dropped again if a GRANT fails, so a half-granted role never outlives the request.
A resource that leaves the catalog (or changes) has its set retired (:meth:`~DynamicRoles.retire`):
no role is issued from then on, and one being made at that moment is dropped, never handed out.
``POST /v1/db-role`` (:mod:`lockgate.control.db_role`) is the door to this module, through
:class:`lockgate.gateway.cql.dynamic_roles.DbRoles` (every resource's roles as one set).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import astuple, dataclass, field

from lockgate import _log
from lockgate.config import CqlResource
from lockgate.errors import UpstreamError, UpstreamUnavailable
from lockgate.gateway.engine import PolicySource, RequestFactory, default_request_factory
from lockgate.identity.model import Claims, TaskIdentity

from . import codec, upstream

log = _log.get("gateway.cql.roles")

PREFIX = "lg_"
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "read": ("SELECT",),
    "write": ("MODIFY",),
    "admin": ("ALTER", "DROP"),
}
_SYSTEM_KEYSPACES = frozenset(
    {
        "system",
        "system_schema",
        "system_auth",
        "system_distributed",
        "system_traces",
        "system_views",
        "system_virtual_schema",
    }
)

PasswordSource = Callable[[], Awaitable[str]]


class NoGrants(Exception):
    """Policy allows this principal nothing on any table of the resource."""


class RolesRetired(UpstreamUnavailable):
    """The resource left the catalog or changed: its roles are no longer issued (retry
    against the new catalog)."""


@dataclass(frozen=True, slots=True)
class RoleCredential:
    """What a task gets: log in to the cluster directly as ``username``/``password``."""

    username: str
    password: str = field(repr=False)
    expires_at: float
    grants: tuple[tuple[str, str], ...]  # (permission, resource text)


def role_name(resource: str, jti: str) -> str:
    return PREFIX + hashlib.sha256(f"{resource}\0{jti}".encode()).hexdigest()[:16]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_ref(ks: str, table: str) -> str:
    return f"TABLE {_quote(ks)}.{_quote(table)}"


class AdminConnection:
    """A tiny sequential CQL client over an authenticated upstream link."""

    def __init__(self, link: upstream.UpstreamLink) -> None:
        self.link = link
        self._stream = 0

    async def query(self, text: str, *, secret: bool = False) -> codec.Event:
        self._stream = (self._stream + 1) % 32768
        self.link.writer.write(self.link.conn.send(codec.Query(stream=self._stream, query=text)))
        while True:
            event = self.link.conn.next_event()
            if event is not codec.NEED_DATA:
                assert isinstance(event, codec.Event)
                if isinstance(event, codec.ServerEvent):
                    continue
                if isinstance(event, codec.Error):
                    msg = "(message withheld)" if secret else event.message[:300]
                    raise UpstreamError(f"upstream error 0x{event.code:04x}: {msg}")
                return event
            data = await self.link.reader.read(65536)
            if not data:
                raise UpstreamError("upstream closed the admin connection")
            self.link.conn.receive_data(data)

    def close(self) -> None:
        self.link.close()


class DynamicRoles:
    """Issue, revoke and sweep per-token Cassandra roles for one ``kind: cql`` resource."""

    def __init__(
        self,
        resource: CqlResource,
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

    @property
    def issued(self) -> dict[str, RoleCredential]:
        return dict(self._issued)

    async def _admin(self) -> AdminConnection:
        return AdminConnection(await upstream.connect(self.resource, await self._password()))

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
            password = secrets.token_urlsafe(24)  # URL-safe: never a quote
            admin = await self._admin()
            try:
                tables = await self._user_tables(admin)
                grants = self._allowed_grants(claims, tables)
                if require_grants and not grants:
                    raise NoGrants(f"policy grants {claims.sub} nothing on {self.resource.name}")
                await admin.query(
                    f"CREATE ROLE IF NOT EXISTS {_quote(name)} "
                    f"WITH PASSWORD = '{password}' AND LOGIN = true",
                    secret=True,
                )
                try:
                    for perm, target in grants:
                        await admin.query(f"GRANT {perm} ON {target} TO {_quote(name)}")
                    self._refuse_if_retired()  # retired while the role was being made
                except BaseException:
                    # A role with half its grants, or of a retired resource, must not
                    # outlive this request; if it cannot be dropped now, a sweep retries.
                    try:
                        await admin.query(f"DROP ROLE IF EXISTS {_quote(name)}")
                    except Exception:
                        self._pending.add(name)
                    raise
            finally:
                admin.close()
            cred = RoleCredential(name, password, float(claims.exp), tuple(grants))
            self._issued[name] = cred
            self._owners[name] = claims.identity
        log.info("dynamic cql role issued", extra={"fields": {
            "resource": self.resource.name, "role": name, "principal": claims.sub,
            "grants": len(grants)}})  # fmt: skip
        return cred

    def _refuse_if_retired(self) -> None:
        if self._retired:
            raise RolesRetired(f"{self.resource.name!r} no longer issues dynamic roles")

    async def retire(self) -> list[str]:
        """The resource left the catalog or changed: issue no role from now on and drop every
        live one; returns the dropped names. An issue under way finishes first (the lock) and
        drops the role it made itself, so no role is created after this sweep has run."""
        self._retired = True
        async with self._lock:
            return await self.sweep(now=float("inf"))

    async def _user_tables(self, admin: AdminConnection) -> list[tuple[str, str]]:
        rows = await admin.query("SELECT keyspace_name, table_name FROM system_schema.tables")
        out: list[tuple[str, str]] = []
        if isinstance(rows, codec.Rows):
            for row in rows.rows:
                ks, table = (codec.values.decode_varchar(c or b"") for c in row[:2])
                if ks not in _SYSTEM_KEYSPACES:
                    out.append((ks, table))
        return out

    def _allowed_grants(
        self, claims: Claims, tables: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        policy = self._policy.current
        ttl = float(claims.ttl)  # what a max_token_ttl condition judges
        grants: list[tuple[str, str]] = []
        admin_tables: dict[str, list[bool]] = {}
        for ks, table in tables:
            for action, perms in PERMISSIONS.items():
                decision = policy.decide(
                    self._make_request(
                        principal=claims.sub,
                        action=action,
                        resource=self.resource.name,
                        object=f"{ks}.{table}",
                        token_ttl=ttl,
                    )
                )
                if action == "admin":
                    admin_tables.setdefault(ks, []).append(decision.allowed)
                if decision.allowed:
                    grants.extend((p, _table_ref(ks, table)) for p in perms)
        for ks, allowed in admin_tables.items():
            if allowed and all(allowed):
                grants.append(("CREATE", f"KEYSPACE {_quote(ks)}"))
        return grants

    async def revoke(self, name: str) -> bool:
        """Drop one role (task ended). True if it was dropped or did not exist.

        If the drop fails the role is kept for the sweeper to retry, and the error raised.
        """
        self._pending.add(name)
        admin = await self._admin()
        try:
            await admin.query(f"DROP ROLE IF EXISTS {_quote(name)}")
        finally:
            admin.close()
        self._issued.pop(name, None)
        self._owners.pop(name, None)
        self._pending.discard(name)
        log.info("dynamic cql role dropped", extra={"fields": {"role": name}})
        return True

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
                log.warning("dynamic cql role not dropped yet", extra={"fields": {
                    "role": name, "error": str(exc)}})  # fmt: skip
        return dropped

    async def sweep(self, now: float | None = None) -> list[str]:
        """Drop every issued role whose token has expired, and every role whose drop failed
        before; returns the dropped names."""
        t = self._clock() if now is None else now
        expired = [n for n, c in self._issued.items() if c.expires_at <= t]
        expired += [n for n in self._pending if n not in expired]
        for name in expired:
            try:
                await self.revoke(name)
            except (UpstreamError, OSError) as exc:
                log.warning("dynamic cql role not dropped yet", extra={"fields": {
                    "role": name, "error": str(exc)}})  # fmt: skip
        return [n for n in expired if n not in self._issued and n not in self._pending]

    async def sweep_orphans(self) -> list[str]:
        """Drop ``lg_`` roles upstream that this process did not issue (e.g. after a restart)."""
        admin = await self._admin()
        dropped: list[str] = []
        try:
            rows = await admin.query("SELECT role FROM system_auth.roles")
            names = []
            if isinstance(rows, codec.Rows):
                names = [codec.values.decode_varchar(r[0] or b"") for r in rows.rows]
            for name in names:
                if name.startswith(PREFIX) and name not in self._issued:
                    await admin.query(f"DROP ROLE IF EXISTS {_quote(name)}")
                    dropped.append(name)
        finally:
            admin.close()
        return dropped

    async def run_sweeper(self, interval: float = 30.0) -> None:
        """Sweep forever (run as a background task; cancel to stop)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:  # a sweep failure must not stop the loop
                log.exception("dynamic cql role sweep failed")
