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
The bookkeeping (one role per token, owners, drops retried, retirement) is the kind-neutral
:class:`lockgate.gateway.dynamic_roles.RoleSet`; this module says how Cassandra makes, grants,
drops and lists roles. ``POST /v1/db-role`` (:mod:`lockgate.control.db_role`) is the door to
it, through :class:`lockgate.gateway.dynamic_roles.DbRoles` (every resource's roles as one set).
"""

from __future__ import annotations

from typing import Any

from lockgate.config import CqlResource
from lockgate.errors import UpstreamError
from lockgate.gateway.dynamic_roles import (
    PREFIX,
    NoGrants,
    PasswordSource,
    RoleCredential,
    RoleSet,
    RolesRetired,
    role_name,
)
from lockgate.identity.model import Claims

from . import codec, upstream

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


class DynamicRoles(RoleSet):
    """Issue, revoke and sweep per-token Cassandra roles for one ``kind: cql`` resource
    (the bookkeeping is :class:`~lockgate.gateway.dynamic_roles.RoleSet`'s)."""

    PERMISSIONS = PERMISSIONS
    NOUN = "dynamic cql role"
    resource: CqlResource

    async def _admin(self) -> AdminConnection:
        return AdminConnection(await upstream.connect(self.resource, await self._password()))

    def details(self) -> dict[str, Any]:
        return {
            "contact_points": list(self.resource.contact_points),
            "keyspace": self.resource.keyspace,
        }

    async def _create(
        self, name: str, password: str, claims: Claims, require_grants: bool
    ) -> tuple[tuple[str, str], ...]:
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
        return tuple(grants)

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
        allowed = set(self.allowed(claims, (f"{ks}.{table}" for ks, table in tables)))
        grants: list[tuple[str, str]] = []
        admin_tables: dict[str, list[bool]] = {}
        for ks, table in tables:
            for action, perms in PERMISSIONS.items():
                ok = (action, f"{ks}.{table}") in allowed
                if action == "admin":
                    admin_tables.setdefault(ks, []).append(ok)
                if ok:
                    grants.extend((p, _table_ref(ks, table)) for p in perms)
        for ks, oks in admin_tables.items():
            if oks and all(oks):
                grants.append(("CREATE", f"KEYSPACE {_quote(ks)}"))
        return grants

    async def _drop(self, name: str) -> None:
        admin = await self._admin()
        try:
            await admin.query(f"DROP ROLE IF EXISTS {_quote(name)}")
        finally:
            admin.close()

    async def _leftovers(self) -> list[str]:
        admin = await self._admin()
        try:
            rows = await admin.query("SELECT role FROM system_auth.roles")
        finally:
            admin.close()
        if not isinstance(rows, codec.Rows):
            return []
        return [codec.values.decode_varchar(r[0] or b"") for r in rows.rows]


__all__ = [
    "PERMISSIONS",
    "PREFIX",
    "AdminConnection",
    "DynamicRoles",
    "NoGrants",
    "PasswordSource",
    "RoleCredential",
    "RolesRetired",
    "role_name",
]
