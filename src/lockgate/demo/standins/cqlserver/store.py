"""In-memory cluster state: keyspaces, tables and their rows, roles and permissions.

Strategy: plain dicts, mutated only from the event loop thread (no locks). Rows are kept per
partition (insertion order) and per clustering key; SELECT sorts clustering keys honouring
CLUSTERING ORDER. Roles hold a password that is compared with ``hmac.compare_digest``.
Permissions are sets of (permission, resource) where resource is ("all",), ("ks", ks) or
("table", ks, t); a grant on a parent covers its children, as in Cassandra.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import functools
import hmac
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import cql
from .types import CqlType, parse_type
from .wire import ALREADY_EXISTS, INVALID, UNAUTHORIZED, CqlError, short, string

SYSTEM_KEYSPACES = frozenset(
    {"system", "system_schema", "system_auth", "system_distributed", "system_traces"}
)


@dataclass
class Table:
    keyspace: str
    name: str
    columns: dict[str, CqlType]
    partition_key: tuple[str, ...]
    clustering: tuple[str, ...]
    descending: frozenset[str]
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    # partition key tuple -> clustering key tuple -> row (column -> value)
    partitions: dict[tuple[Any, ...], dict[tuple[Any, ...], dict[str, Any]]] = field(
        default_factory=dict
    )

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self.partition_key + self.clustering

    def column(self, name: str) -> CqlType:
        try:
            return self.columns[name]
        except KeyError:
            raise CqlError(INVALID, f"Undefined column name {name}") from None

    def rows(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cmp = functools.cmp_to_key(self._compare_ck)
        for part in self.partitions.values():
            out.extend(part[ck] for ck in sorted(part, key=cmp))
        return out

    def _compare_ck(self, a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
        for col, x, y in zip(self.clustering, a, b, strict=True):
            if x != y:
                res = -1 if x < y else 1
                return -res if col in self.descending else res
        return 0


@dataclass
class Keyspace:
    name: str
    replication: dict[str, str]
    durable_writes: bool = True
    tables: dict[str, Table] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)  # materialized view -> base table


@dataclass
class Role:
    name: str
    password: str | None
    login: bool
    superuser: bool
    permissions: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)

    def check_password(self, candidate: str) -> bool:
        if self.password is None or not self.login:
            return False
        return hmac.compare_digest(self.password.encode(), candidate.encode())


def unauthorized(role: str, perm: str, resource: str) -> CqlError:
    return CqlError(
        UNAUTHORIZED,
        f"User {role} has no {perm.upper()} permission on {resource} or any of its parents",
    )


def already_exists(ks: str, table: str = "") -> CqlError:
    if table:
        msg = f'Cannot add already existing table "{table}" to keyspace "{ks}"'
    else:
        msg = f'Cannot add existing keyspace "{ks}"'
    return CqlError(ALREADY_EXISTS, msg, string(ks) + string(table))


class Store:
    """The cluster's data and auth model; the executor calls into it."""

    def __init__(self, users: dict[str, str], superusers: set[str]) -> None:
        self.keyspaces: dict[str, Keyspace] = {}
        self.roles: dict[str, Role] = {
            name: Role(name, pw, True, name in superusers) for name, pw in users.items()
        }
        self.schema_version = uuid.uuid4()

    # -- lookups -----------------------------------------------------------------------
    def keyspace(self, name: str) -> Keyspace:
        try:
            return self.keyspaces[name]
        except KeyError:
            raise CqlError(INVALID, f"Keyspace '{name}' does not exist") from None

    def table(self, ks: str, name: str) -> Table:
        """A table by name; a materialized view's name gives its base table (its rows, and
        the permissions Cassandra checks for reading it)."""
        keyspace = self.keyspace(ks)
        t = keyspace.tables.get(keyspace.views.get(name, name))
        if t is None:
            raise CqlError(INVALID, f"unconfigured table {name}")
        return t

    def authenticate(self, user: str, password: str) -> Role | None:
        role = self.roles.get(user)
        if role is None:
            # Compare anyway so unknown users cost the same as wrong passwords.
            hmac.compare_digest(password.encode(), b"x" * len(password))
            return None
        return role if role.check_password(password) else None

    # -- authorization -----------------------------------------------------------------
    def authorize(self, role: Role, perm: str, ks: str | None, table: str | None = None) -> None:
        if role.superuser:
            return
        if ks in SYSTEM_KEYSPACES:
            # Everyone may read the schema and topology tables; nobody else may touch them.
            if perm == "select" and ks in ("system", "system_schema"):
                return
            raise unauthorized(role.name, perm, f"<keyspace {ks}>")
        candidates: list[tuple[str, ...]] = [("all",)]
        if ks is not None:
            candidates.append(("ks", ks))
            if table is not None:
                candidates.append(("table", ks, table))
        if any((perm, res) in role.permissions for res in candidates):
            return
        where = (
            f"<table {ks}.{table}>" if table else f"<keyspace {ks}>" if ks else "<all keyspaces>"
        )
        raise unauthorized(role.name, perm, where)

    def require_superuser(self, role: Role, what: str) -> None:
        if not role.superuser:
            raise CqlError(UNAUTHORIZED, f"Only superusers are allowed to perform {what} queries")

    # -- DDL ---------------------------------------------------------------------------
    def _schema_changed(self) -> None:
        self.schema_version = uuid.uuid4()

    def create_keyspace(self, s: cql.CreateKeyspace, role: Role) -> bool:
        self.authorize(role, "create", None)
        if s.name in self.keyspaces or s.name in SYSTEM_KEYSPACES:
            if s.if_not_exists:
                return False
            raise already_exists(s.name)
        self.keyspaces[s.name] = Keyspace(s.name, dict(s.replication), s.durable_writes)
        # Like Cassandra, the creator is granted every permission on what it created.
        role.permissions |= {(p, ("ks", s.name)) for p in cql.PERMISSIONS}
        self._schema_changed()
        return True

    def drop_keyspace(self, s: cql.DropKeyspace, role: Role) -> bool:
        if s.name not in self.keyspaces:
            if s.if_exists:
                return False
            raise CqlError(INVALID, f"Cannot drop non existing keyspace '{s.name}'.")
        self.authorize(role, "drop", s.name)
        del self.keyspaces[s.name]
        self._schema_changed()
        return True

    def create_table(self, s: cql.CreateTable, ks: str, role: Role) -> bool:
        keyspace = self.keyspace(ks)
        self.authorize(role, "create", ks)
        if s.table.name in keyspace.tables:
            if s.if_not_exists:
                return False
            raise already_exists(ks, s.table.name)
        columns = {name: parse_type(t) for name, t in s.columns}
        for key in s.partition_key + s.clustering:
            if key not in columns:
                raise CqlError(INVALID, f"Unknown definition {key} referenced in PRIMARY KEY")
        keyspace.tables[s.table.name] = Table(
            ks, s.table.name, columns, s.partition_key, s.clustering, s.descending
        )
        role.permissions |= {(p, ("table", ks, s.table.name)) for p in cql.PERMISSIONS}
        self._schema_changed()
        return True

    def base_of(self, ks: str | None, name: str) -> str | None:
        """The base table of materialized view ``ks.name``; None for anything else."""
        keyspace = self.keyspaces.get(ks or "")
        return keyspace.views.get(name) if keyspace is not None else None

    def create_view(self, s: cql.CreateView, ks: str, role: Role) -> bool:
        keyspace = self.keyspace(ks)
        if s.base.keyspace not in (None, ks):
            raise CqlError(
                INVALID, "Cannot create a materialized view on a table in another keyspace"
            )
        base = self.table(ks, s.base.name)
        self.authorize(role, "alter", ks, base.name)
        if s.view.name in keyspace.tables or s.view.name in keyspace.views:
            if s.if_not_exists:
                return False
            raise already_exists(ks, s.view.name)
        keyspace.views[s.view.name] = base.name
        self._schema_changed()
        return True

    def drop_table(self, s: cql.DropTable, ks: str, role: Role) -> bool:
        keyspace = self.keyspace(ks)
        if s.table.name not in keyspace.tables:
            if s.if_exists:
                return False
            raise CqlError(INVALID, f"unconfigured table {s.table.name}")
        self.authorize(role, "drop", ks, s.table.name)
        del keyspace.tables[s.table.name]
        self._schema_changed()
        return True

    # -- roles -------------------------------------------------------------------------
    def role_statement(self, s: cql.RoleStmt, role: Role) -> None:
        self.require_superuser(role, f"{s.verb.upper()} ROLE")
        existing = self.roles.get(s.name)
        if s.verb == "create":
            if existing is not None:
                if s.if_flag:
                    return
                raise CqlError(INVALID, f"{s.name} already exists")
            self.roles[s.name] = Role(s.name, None, False, False)
            self._apply_role_options(self.roles[s.name], s.options)
        elif s.verb == "alter":
            if existing is None:
                raise CqlError(INVALID, f"{s.name} doesn't exist")
            self._apply_role_options(existing, s.options)
        else:
            if existing is None:
                if s.if_flag:
                    return
                raise CqlError(INVALID, f"{s.name} doesn't exist")
            if existing is role:
                raise CqlError(INVALID, "Cannot DROP primary role for current login")
            del self.roles[s.name]

    @staticmethod
    def _apply_role_options(target: Role, opts: dict[str, Any]) -> None:
        for key, val in opts.items():
            if key == "password":
                if not isinstance(val, str):
                    raise CqlError(INVALID, "PASSWORD must be a string literal")
                target.password = val
            elif key == "login":
                target.login = bool(val)
            elif key == "superuser":
                target.superuser = bool(val)
            elif key != "options":
                raise CqlError(0x2000, f"Unknown role option {key}")

    def grant(self, s: cql.GrantStmt, role: Role) -> None:
        self.require_superuser(role, "GRANT" if s.grant else "REVOKE")
        target = self.roles.get(s.role)
        if target is None:
            raise CqlError(INVALID, f"{s.role} doesn't exist")
        resource = s.resource
        if resource[0] == "ks":
            self.keyspace(resource[1])
        elif resource[0] == "table":
            self.table(resource[1], resource[2])
        entries = {(p, resource) for p in s.permissions}
        if s.grant:
            target.permissions |= entries
        else:
            target.permissions -= entries


def schema_change_body(change: str, target: str, ks: str, name: str | None = None) -> bytes:
    """RESULT kind 5 body (after the kind int)."""
    body = string(change) + string(target) + string(ks)
    return body + (string(name) if name is not None else b"")


__all__ = ["SYSTEM_KEYSPACES", "Keyspace", "Role", "Store", "Table", "schema_change_body", "short"]
