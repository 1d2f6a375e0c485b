"""The differential oracle of ``test_attack_corpus.py``: the classifier against the server.

A statement is classified in a session's scope; a fresh role is granted exactly what the
classifier asked for (read -> SELECT, write -> INSERT, UPDATE, DELETE, TRUNCATE or a
sequence's USAGE, UPDATE, admin on ``function:`` -> EXECUTE) plus USAGE on every schema,
and runs the statement in a transaction that is rolled back. An ``insufficient_privilege``
(42501) from the server names an object the server checks and the classifier never put
before policy: a hole. A statement the classifier refuses (:class:`Unplaceable`) is safe.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from psycopg import sql as pgsql

from lockgate.gateway.postgres.classified import Access, Unplaceable, split_object
from lockgate.gateway.postgres.classify import classify
from lockgate.gateway.postgres.scope import RelationCatalog, SessionScope

Conn = psycopg.Connection[tuple[object, ...]]

_ROLES = itertools.count()


def read_catalog(conn: Conn) -> RelationCatalog:
    """The relation catalog the engine would read from this server."""
    rows = [
        (str(schema), None if name is None else str(name))
        for schema, name in conn.execute(RelationCatalog.QUERY).fetchall()
    ]
    return RelationCatalog(rows)


@dataclass
class CorpusOracle:
    """One superuser session and the classifier's scope that follows it."""

    conn: Conn
    scope: SessionScope = field(init=False)

    def __post_init__(self) -> None:
        self.scope = SessionScope(("public",), read_catalog(self.conn), user="postgres")

    def setup(self, sql: str) -> None:
        """Run ``sql`` as the superuser; the scope follows it (temp tables, search_path)."""
        try:
            statements = classify(sql, self.scope).statements
        except Unplaceable:
            self.conn.execute(sql.encode())  # the gateway would refuse it: set up behind it
        else:
            for stmt in statements:
                self.conn.execute(stmt.text.encode())
                self.scope.statement_done(stmt, stmt.command)
        self.scope.set_catalog(read_catalog(self.conn))

    def accesses(self, sql: str) -> list[Access] | None:
        """What the classifier asks policy for, or None when it refuses the text."""
        try:
            statements = classify(sql, self.scope).statements
        except Unplaceable:
            return None
        return [access for stmt in statements for access in stmt.accesses]

    def missed(self, sql: str) -> str | None:
        """The server's 42501 message when ``sql`` runs with only the classifier's grants."""
        accesses = self.accesses(sql)
        if accesses is None:
            return None  # refused by the gateway: nothing reaches the server
        return self.refusal(sql, accesses)

    def refusal(self, sql: str, accesses: list[Access]) -> str | None:
        """The server's 42501 message when ``sql`` runs granted only ``accesses``."""
        role = f"atk_corpus_{next(_ROLES)}"
        cur = self.conn.cursor()
        cur.execute("BEGIN")
        try:
            cur.execute(pgsql.SQL("CREATE ROLE {} NOLOGIN").format(pgsql.Identifier(role)))
            for schema in self._schemas():
                cur.execute(
                    pgsql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                        pgsql.Identifier(schema), pgsql.Identifier(role)
                    )
                )
            for access in accesses:
                for grant in self._grants(access, role):
                    cur.execute(grant)
            cur.execute(pgsql.SQL("SET LOCAL ROLE {}").format(pgsql.Identifier(role)))
            cur.execute("SET LOCAL statement_timeout = '2s'")
            try:
                cur.execute(sql.encode())
            except psycopg.errors.InsufficientPrivilege as exc:
                return f"{exc} (classifier: {accesses})"
            except psycopg.Error:
                return None  # failed for another reason: not a privilege the classifier missed
            return None
        finally:
            cur.execute("ROLLBACK")

    def _schemas(self) -> Iterator[str]:
        rows = self.conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_t%'"
            " OR oid = pg_my_temp_schema()"
        ).fetchall()
        return (str(name) for (name,) in rows)

    def _grants(self, access: Access, role: str) -> list[pgsql.Composed]:
        grantee = pgsql.Identifier(role)
        if access.obj.startswith("function:"):
            assert access.action == "admin", access
            schema, name = split_object(access.obj.removeprefix("function:"))
            rows = self.conn.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n"
                " ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = %s",
                (schema, name),
            ).fetchall()
            return [
                pgsql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(pgsql.SQL(str(sig)), grantee)
                for (sig,) in rows
            ]
        assert access.action in ("read", "write") and ":" not in access.obj, access
        schema, name = split_object(access.obj)
        if schema == "pg_temp":
            found = self.conn.execute(
                "SELECT relkind FROM pg_class WHERE relnamespace = pg_my_temp_schema()"
                " AND relname = %s",
                (name,),
            ).fetchone()
        else:
            found = self.conn.execute(
                "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s",
                (schema, name),
            ).fetchone()
        if found is None:
            return []  # a candidate that does not exist: nothing to grant
        target = pgsql.Identifier(schema, name)
        if found[0] == "S":
            privileges = "SELECT" if access.action == "read" else "USAGE, UPDATE"
            return [
                pgsql.SQL("GRANT {} ON SEQUENCE {} TO {}").format(
                    pgsql.SQL(privileges), target, grantee
                )
            ]
        privileges = "SELECT" if access.action == "read" else "INSERT, UPDATE, DELETE, TRUNCATE"
        return [pgsql.SQL("GRANT {} ON {} TO {}").format(pgsql.SQL(privileges), target, grantee)]
