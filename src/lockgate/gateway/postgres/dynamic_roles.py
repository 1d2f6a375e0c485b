"""Dynamic least-privilege PostgreSQL roles (``dynamic_roles: true``), for clients that cannot
go through the gateway.

Strategy: for one Lockgate token (one task try) :meth:`PostgresRoles.issue` creates a role
``lg_<16 hex of sha256(resource, jti)>`` with a random password (43 URL-safe characters) that
can log in until the token expires, and grants it exactly what policy allows the principal:
every table, view, materialized view and foreign table of the upstream database (from
``pg_class``, outside ``pg_catalog``, ``information_schema`` and the toast/temp schemas) is
asked of policy for ``read`` and ``write`` on ``schema.table``, exactly as the engine asks for
a statement (the engine's object names: a ".", "/", ":" or "%" inside a name is escaped, so a
schema called "sales.x" is not inside ``sales.*``), and each allow becomes a table GRANT:
read -> SELECT, write -> INSERT, UPDATE, DELETE (no SELECT with it: an ``UPDATE ... WHERE``
that reads rows needs read as well, as it does through the gateway). An allow by name is not
enough when the server carries the grant further with its owner's rights: a view reads its
relations, a parent its children, a rule writes elsewhere, a trigger runs code, a foreign
key looks into another table. Such a grant is skipped unless policy allows what it reaches
(the rules: :mod:`.role_grants`, with the engine's own dependency rule); the skipped grants
and why are logged and kept (:meth:`PostgresRoles.skipped_grants`) for the issue's audit
record. Schemas holding a granted table get USAGE, the database CONNECT.
``admin`` is never granted: DDL, TRUNCATE, REFERENCES, TRIGGER and ownership stay with the
gateway, whatever policy says (a role that owns objects could not be dropped cleanly).

The role is ``LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS``
with ``CONNECTION LIMIT`` :attr:`PostgresRoles.CONNECTION_LIMIT` and ``VALID UNTIL`` the
token's expiry, so even a gateway crash leaves nothing anyone can log in with once the token
is over. What PUBLIC holds (by default CONNECT and TEMP on databases, EXECUTE on functions,
USAGE on ``public``) every role holds; revoke it from PUBLIC upstream to narrow that too.

End: :meth:`PostgresRoles.revoke` (task end, revocation, expiry sweep, gateway stop) makes
the role NOLOGIN, ends its sessions (``pg_terminate_backend``), revokes what it holds and drops
what it owns (``DROP OWNED BY``) and drops it. :meth:`~PostgresRoles.sweep_orphans` drops the
``lg_`` roles whose VALID UNTIL has passed (a crashed gateway's; never a live one of a
replica).

Rules: the admin connection is the gateway's own upstream login (``resource.username``, the
credential's current value, or the previous one when the server refuses it during a
rotation's overlap; it needs CREATEROLE and must own the tables or hold their
privileges WITH GRANT OPTION). It is short-lived (one per operation), TLS per
``resource.tls`` (verify-full checks ``ca_file`` or the system store and the host name).
Statements are composed with :mod:`psycopg.sql` (identifiers and literals quoted by psycopg,
never formatted in). The password never reaches the server in clear: CREATE ROLE carries its
SCRAM-SHA-256 verifier, computed here by libpq, so not even the server's statement log holds
it. A role is created with all its grants in one transaction, so a half-granted role never
exists; the creator is made a member of the role (``GRANT role TO CURRENT_USER``) so that it
may end its sessions and drop what it owns later.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar, LiteralString

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from lockgate import _log
from lockgate.config import PostgresResource
from lockgate.errors import (
    CredentialError,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamUnavailable,
)
from lockgate.gateway.dynamic_roles import PREFIX, NoGrants, PasswordSource, RoleSet
from lockgate.gateway.engine import PolicySource, RequestFactory
from lockgate.identity.model import Claims

from .classified import qualified_object
from .relation_catalog import RelationCatalog
from .role_grants import GRANT_FACTS_QUERY, GrantFacts, GrantPlan, Skipped, plan_grants

log = _log.get("gateway.postgres.dynamic_roles")

PERMISSIONS: dict[str, tuple[str, ...]] = {
    "read": ("SELECT",),
    "write": ("INSERT", "UPDATE", "DELETE"),
}

#: every relation a task could read or write, with its schema (columns: schema, name)
USER_RELATIONS: LiteralString = """
SELECT n.nspname, c.relname
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%'
   AND n.nspname NOT LIKE 'pg\\_temp\\_%'
 ORDER BY 1, 2
"""


def sslmode(resource: PostgresResource) -> dict[str, str]:
    """libpq's TLS settings for ``resource.tls`` (verify-full: the CA file or the system
    store, and the host name)."""
    if resource.tls == "verify-full":
        root = str(resource.ca_file) if resource.ca_file is not None else "system"
        return {"sslmode": "verify-full", "sslrootcert": root}
    return {"sslmode": resource.tls}


def _valid_until(exp: float) -> str:
    return datetime.fromtimestamp(exp, UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def _table(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def _permissions(
    grants: tuple[tuple[str, tuple[str, str]], ...],
) -> dict[tuple[str, str], list[str]]:
    """relation -> its table permissions, in the order the grants name them."""
    out: dict[tuple[str, str], list[str]] = {}
    for action, relation in grants:
        out.setdefault(relation, []).extend(PERMISSIONS[action])
    return out


def _grants(grants: tuple[tuple[str, tuple[str, str]], ...]) -> tuple[tuple[str, str], ...]:
    """(permission, object) as the audit and the task read them."""
    return tuple(
        (perm, f"TABLE {_table(*relation).as_string(None)}")
        for relation, perms in _permissions(grants).items()
        for perm in perms
    )


def _skipped_text(skipped: Skipped) -> str:
    perms = ", ".join(PERMISSIONS[skipped.action])
    return f"{perms} ON {skipped.obj}: {skipped.reason}"


class PostgresRoles(RoleSet):
    """Issue, revoke and sweep per-token PostgreSQL roles for one ``kind: postgres``
    resource (the bookkeeping is :class:`~lockgate.gateway.dynamic_roles.RoleSet`'s)."""

    PERMISSIONS = PERMISSIONS
    NOUN = "dynamic postgres role"
    #: sessions one task may hold at once (a pool of a few; not a door for a fleet)
    CONNECTION_LIMIT: ClassVar[int] = 10
    APPLICATION_NAME: ClassVar[str] = "lockgate-dynamic-roles"
    resource: PostgresResource

    def __init__(
        self,
        resource: PostgresResource,
        password: PasswordSource,
        policy: PolicySource,
        *,
        clock: Callable[[], float] = time.time,
        make_request: RequestFactory | None = None,
    ) -> None:
        super().__init__(resource, password, policy, clock=clock, make_request=make_request)
        self._skipped: dict[str, tuple[str, ...]] = {}  # role -> grants left out, with why

    def details(self) -> dict[str, Any]:
        r = self.resource
        return {"host": r.host, "port": r.port, "database": r.database, **sslmode(r)}

    # -- the admin connection ---------------------------------------------------------------
    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        """The admin login with the credential's current value; refused, once more with the
        previous version while a rotation's overlap lasts (the server may not have the new
        password yet)."""
        try:
            return await self._login(await self._password())
        except UpstreamAuthFailed:
            try:
                older = await self._password(previous=True)
            except CredentialError:  # no rotation under way: the refusal stands
                older = None
            if older is None:
                raise
            return await self._login(older)

    async def _login(self, password: str) -> psycopg.AsyncConnection[Any]:
        r = self.resource
        where = f"{r.host}:{r.port}"
        try:
            async with asyncio.timeout(r.connect_timeout + 1.0):
                conninfo = make_conninfo(
                    host=r.host,
                    port=r.port,
                    dbname=r.database,
                    user=r.username,
                    password=password,
                    # libpq counts whole seconds, at least 2
                    connect_timeout=max(2, math.ceil(r.connect_timeout)),
                    application_name=self.APPLICATION_NAME,
                    **sslmode(r),
                )
                return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        except TimeoutError:
            raise UpstreamUnavailable(f"postgres {where}: connect timed out") from None
        except psycopg.Error as exc:
            # libpq's connection messages name host and cause, never the password; a
            # refused login carries no SQLSTATE here, only the server's FATAL text
            text = str(exc).strip()
            reason = text.splitlines()[-1][:300] if text else type(exc).__name__
            if "authentication failed" in text:
                raise UpstreamAuthFailed(f"postgres {where}: {reason}") from None
            raise UpstreamUnavailable(f"postgres {where}: {reason}") from None

    @staticmethod
    async def _run(
        conn: psycopg.AsyncConnection[Any],
        statement: sql.Composed | LiteralString,
        params: tuple[Any, ...] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement; a server error becomes :class:`UpstreamError` with its SQLSTATE
        and primary message only (libpq's full text quotes the statement back)."""
        try:
            cur = await conn.execute(statement, params)
            return await cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            diag = exc.diag
            raise UpstreamError(
                f"upstream error {diag.sqlstate or '?'}: {(diag.message_primary or '')[:300]}"
            ) from None

    # -- issue ------------------------------------------------------------------------------
    async def _create(
        self, name: str, password: str, claims: Claims, require_grants: bool
    ) -> tuple[tuple[str, str], ...]:
        conn = await self._connect()
        try:
            plan = await self._plan(conn, claims)
            if require_grants and not plan.grants:
                raise NoGrants(f"policy grants {claims.sub} nothing on {self.resource.name}")
            # libpq computes the verifier: the clear password never leaves this process
            verifier = conn.pgconn.encrypt_password(
                password.encode(), name.encode(), b"scram-sha-256"
            ).decode()
            async with conn.transaction():  # all or nothing: no half-granted role
                await self._run(conn, self._create_role(name, verifier, claims.exp))
                await self._run(
                    conn, sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(name))
                )
                for statement in self._grant_statements(name, plan.grants):
                    await self._run(conn, statement)
                self._refuse_if_retired()  # retired while the role was being made
            try:
                self._refuse_if_retired()  # ... or while it committed
            except BaseException:
                await self._drop_or_keep(conn, name)
                raise
        finally:
            await conn.close()
        self._skipped[name] = tuple(_skipped_text(s) for s in plan.skipped)
        if plan.skipped:
            log.info("dynamic postgres role grants skipped", extra={"fields": {
                "resource": self.resource.name, "role": name, "principal": claims.sub,
                "skipped": list(self._skipped[name])}})  # fmt: skip
        return _grants(plan.grants)

    async def _plan(self, conn: psycopg.AsyncConnection[Any], claims: Claims) -> GrantPlan:
        """What policy allows by name, less what would reach beyond it (:mod:`.role_grants`)."""
        relations = [(str(s), str(t)) for s, t in await self._run(conn, USER_RELATIONS)]
        catalog = RelationCatalog(await self._run(conn, RelationCatalog.QUERY))
        facts = GrantFacts.of(await self._run(conn, GRANT_FACTS_QUERY))
        decided: dict[str, frozenset[str]] = {}

        def allows(action: str, obj: str) -> bool:
            if obj not in decided:  # each object asked of policy once, every action at once
                decided[obj] = frozenset(a for a, _ in self.allowed(claims, [obj]))
            return action in decided[obj]

        candidates = [
            (action, relation)
            for relation in relations
            for action in PERMISSIONS
            if allows(action, qualified_object(*relation))
        ]
        return plan_grants(candidates, catalog, facts, allows)

    def skipped_grants(self, name: str) -> tuple[str, ...]:
        """The grants policy allowed by name that role ``name`` did not get, with why."""
        return self._skipped.get(name, ())

    def _create_role(self, name: str, verifier: str, exp: float) -> sql.Composed:
        return sql.SQL(
            "CREATE ROLE {} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
            " NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {} VALID UNTIL {}"
        ).format(
            sql.Identifier(name),
            sql.Literal(self.CONNECTION_LIMIT),
            sql.Literal(verifier),
            sql.Literal(_valid_until(exp)),
        )

    def _grant_statements(
        self, name: str, grants: tuple[tuple[str, tuple[str, str]], ...]
    ) -> Iterable[sql.Composed]:
        role = sql.Identifier(name)
        schemas: dict[str, None] = {}
        for relation, perms in _permissions(grants).items():
            schemas[relation[0]] = None
            yield sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in perms), _table(*relation), role
            )
        for schema in schemas:
            yield sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role)
        if schemas:
            yield sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(self.resource.database), role
            )

    # -- end --------------------------------------------------------------------------------
    async def _drop(self, name: str) -> None:
        conn = await self._connect()
        try:
            await self._end_role(conn, name)
        finally:
            await conn.close()
        self._skipped.pop(name, None)

    async def _drop_or_keep(self, conn: psycopg.AsyncConnection[Any], name: str) -> None:
        """Drop a role that must not be handed out; if that fails, the sweeper retries."""
        try:
            await self._end_role(conn, name)
        except Exception:
            self._pending.add(name)

    async def _end_role(self, conn: psycopg.AsyncConnection[Any], name: str) -> None:
        """No new login, no open session, nothing held or owned, then no role."""
        exists = await self._run(
            conn, "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (name,)
        )
        if not exists:
            return
        role = sql.Identifier(name)
        await self._run(conn, sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
        await self._run(
            conn,
            "SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = %s",
            (name,),
        )
        await self._run(conn, sql.SQL("DROP OWNED BY {}").format(role))
        await self._run(conn, sql.SQL("DROP ROLE IF EXISTS {}").format(role))

    async def _leftovers(self) -> list[str]:
        """``lg_`` roles whose VALID UNTIL has passed: no task can use them any more."""
        conn = await self._connect()
        try:
            rows = await self._run(
                conn,
                "SELECT rolname FROM pg_catalog.pg_roles"
                " WHERE rolname LIKE %s AND rolvaliduntil < now()",
                (PREFIX.replace("_", "\\_") + "%",),
            )
        finally:
            await conn.close()
        return [str(r[0]) for r in rows]


__all__ = ["PERMISSIONS", "USER_RELATIONS", "PostgresRoles", "sslmode"]
