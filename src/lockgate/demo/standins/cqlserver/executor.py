"""Executes parsed statements against the store: binding, authorization, DML, SELECT, DDL.

Strategy: ``bind_specs`` walks a statement and gives every bind marker the column spec
(keyspace, table, name, type) Cassandra would give it; those specs become PREPARED metadata
and drive value decoding for both EXECUTE and QUERY-with-values. SELECT filters rows with
every WHERE relation (the fake does not insist on ALLOW FILTERING), orders as Cassandra does,
then applies count/LIMIT/paging. Results are small dataclasses the server encodes.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Any

from . import cql
from .store import Role, Store, Table
from .system import SystemTables, VirtualTable
from .types import BIGINT, BOOLEAN, INT, CqlType
from .wire import INVALID, UNSET, CqlError

AnyTable = Table | VirtualTable


@dataclass(frozen=True, slots=True)
class Spec:
    keyspace: str
    table: str
    name: str
    type: CqlType


@dataclass
class Prepared:
    """A statement prepared on the node: what EXECUTE runs by its id."""

    text: str
    keyspace: str | None
    stmt: Any
    specs: list[Spec]


@dataclass(slots=True)
class Rows:
    keyspace: str
    table: str
    columns: list[tuple[str, CqlType]]
    rows: list[list[Any]]
    paging_state: bytes | None = None


@dataclass(slots=True)
class Void:
    pass


@dataclass(slots=True)
class SetKeyspace:
    keyspace: str


@dataclass(slots=True)
class SchemaChange:
    change: str  # CREATED | UPDATED | DROPPED
    target: str  # KEYSPACE | TABLE
    keyspace: str
    name: str | None = None


Result = Rows | Void | SetKeyspace | SchemaChange


@dataclass(slots=True)
class Bound:
    """The values of one execution, by marker index."""

    values: list[Any]

    def get(self, m: cql.Marker, spec_type: CqlType) -> Any:
        if m.index >= len(self.values):
            raise CqlError(
                INVALID,
                f"There were more markers(?) in CQL than bound variables ({len(self.values)})",
            )
        raw = self.values[m.index]
        if raw is None or raw is UNSET:
            return raw
        return spec_type.deserialize(raw)


def invalid(msg: str) -> CqlError:
    return CqlError(INVALID, msg)


class Executor:
    def __init__(self, store: Store, system: SystemTables) -> None:
        self.store = store
        self.system = system

    # -- name resolution ---------------------------------------------------------------
    def keyspace_of(self, ref: cql.TableRef, session_ks: str | None) -> str:
        ks = ref.keyspace or session_ks
        if ks is None:
            raise invalid(
                "No keyspace has been specified. USE a keyspace, or explicitly specify "
                "keyspace.tablename"
            )
        return ks

    def lookup(self, ref: cql.TableRef, session_ks: str | None) -> AnyTable:
        ks = self.keyspace_of(ref, session_ks)
        virtual = self.system.get(ks, ref.name)
        if virtual is not None:
            return virtual
        if ks in ("system", "system_schema", "system_auth"):
            raise invalid(f"unconfigured table {ref.name}")
        return self.store.table(ks, ref.name)

    # -- binding -----------------------------------------------------------------------
    def bind_specs(self, stmt: Any, session_ks: str | None, count: int) -> list[Spec]:
        found: dict[int, Spec] = {}
        self._collect(stmt, session_ks, found)
        if sorted(found) != list(range(count)):
            raise invalid(
                "Bind markers are only supported for column values, LIMIT, TTL, TIMESTAMP"
            )
        return [found[i] for i in range(count)]

    def _collect(self, stmt: Any, ks: str | None, out: dict[int, Spec]) -> None:
        if isinstance(stmt, cql.Batch):
            for inner in stmt.statements:
                self._collect(inner, ks, out)
            return
        if not isinstance(stmt, cql.Insert | cql.Update | cql.Delete | cql.Select):
            return
        t = self.lookup(stmt.table, ks)

        def add(term: Any, name: str, ctype: CqlType) -> None:
            terms = term if isinstance(term, tuple) else (term,)
            for x in terms:
                if isinstance(x, cql.Marker):
                    # Cassandra names a view's columns after the view, not its base.
                    out[x.index] = Spec(t.keyspace, stmt.table.name, name, ctype)

        def col(name: str) -> CqlType:
            if name not in t.columns:
                raise invalid(f"Undefined column name {name}")
            return t.columns[name]

        if isinstance(stmt, cql.Insert | cql.Update | cql.Delete):
            add(stmt.using.ttl, "[ttl]", INT)
            add(stmt.using.timestamp, "[timestamp]", BIGINT)
        if isinstance(stmt, cql.Insert):
            for name, term in zip(stmt.columns, stmt.values, strict=True):
                add(term, name, col(name))
        if isinstance(stmt, cql.Update):
            for name, term in stmt.assignments:
                add(term, name, col(name))
        if isinstance(stmt, cql.Update | cql.Delete | cql.Select):
            for rel in stmt.where:
                add(rel.term, rel.column, col(rel.column))
        if isinstance(stmt, cql.Select):
            add(stmt.limit, "[limit]", INT)

    def pk_indexes(self, stmt: Any, session_ks: str | None) -> list[int]:
        """Marker indexes binding each partition key column (for token-aware routing)."""
        if not isinstance(stmt, cql.Insert | cql.Update | cql.Delete | cql.Select):
            return []
        t = self.lookup(stmt.table, session_ks)
        pairs: dict[str, Any] = {}
        if isinstance(stmt, cql.Insert):
            pairs = dict(zip(stmt.columns, stmt.values, strict=True))
        else:
            pairs = {r.column: r.term for r in stmt.where if r.op == "="}
        out = []
        for name in t.partition_key:
            term = pairs.get(name)
            if not isinstance(term, cql.Marker):
                return []
            out.append(term.index)
        return out

    def value(self, term: Any, ctype: CqlType, bound: Bound) -> Any:
        if isinstance(term, cql.Marker):
            return bound.get(term, ctype)
        if isinstance(term, cql.Call):
            return ctype.coerce(self._call(term, bound))
        if isinstance(term, dict) and not term and ctype.name in ("set", "list"):
            return set() if ctype.name == "set" else []
        return ctype.coerce(term)

    def _call(self, c: cql.Call, bound: Bound) -> Any:
        if c.name == "now":
            return uuid.uuid1()
        if c.name == "uuid":
            return uuid.uuid4()
        if c.name in ("currenttimestamp", "totimestamp", "tounixtimestamp"):
            if c.args and isinstance(c.args[0], cql.Call):
                inner = self._call(c.args[0], bound)
                if isinstance(inner, uuid.UUID) and inner.version == 1:
                    return (inner.time - 0x01B21DD213814000) // 10000
            return int(time.time() * 1000)
        raise invalid(f"Unknown function {c.name}")

    # -- select ------------------------------------------------------------------------
    def select_columns(self, s: cql.Select, t: AnyTable) -> list[tuple[str, CqlType]]:
        if s.count:
            return [("count", BIGINT)]
        if s.selectors is None:
            if isinstance(t, Table):
                regular = sorted(c for c in t.columns if c not in t.key_columns)
                return [(c, t.columns[c]) for c in (*t.key_columns, *regular)]
            return list(t.columns.items())
        out = []
        for name, alias in s.selectors:
            if name not in t.columns:
                raise invalid(f"Undefined column name {name}")
            out.append((alias, t.columns[name]))
        return out

    def select(
        self, s: cql.Select, t: AnyTable, bound: Bound, page: tuple[int | None, bytes | None]
    ) -> Rows:
        rows = t.rows() if isinstance(t, Table) else list(t.rows)
        for rel in s.where:
            ctype = t.columns[rel.column]
            rows = [r for r in rows if _matches(r.get(rel.column), rel, ctype, self, bound)]
        if s.order_desc:
            rows.reverse()
        if s.limit is not None:
            limit = self.value(s.limit, INT, bound)
            if not isinstance(limit, int) or limit <= 0:
                raise invalid("LIMIT must be strictly positive")
            rows = rows[:limit]
        columns = self.select_columns(s, t)
        if s.count:
            return Rows(t.keyspace, t.name, columns, [[len(rows)]])
        names = [n for n, _ in s.selectors] if s.selectors is not None else [c for c, _ in columns]
        page_size, state = page
        start = int.from_bytes(state, "big") if state else 0
        next_state = None
        if page_size and page_size > 0:
            if start + page_size < len(rows):
                next_state = (start + page_size).to_bytes(8, "big")
            rows = rows[start : start + page_size]
        return Rows(
            t.keyspace, t.name, columns, [[r.get(n) for n in names] for r in rows], next_state
        )

    # -- writes ------------------------------------------------------------------------
    def key_values(
        self, t: Table, rels: tuple[cql.Relation, ...], bound: Bound, need_ck: bool
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]] | None]:
        by_col: dict[str, list[Any]] = {}
        for rel in rels:
            if rel.column not in t.columns:
                raise invalid(f"Undefined column name {rel.column}")
            if rel.column not in t.key_columns or rel.op not in ("=", "IN"):
                raise invalid(f"Non PRIMARY KEY columns found in where clause: {rel.column}")
            terms = rel.term if rel.op == "IN" else (rel.term,)
            vals = [self.value(x, t.columns[rel.column], bound) for x in terms]
            if any(v is None or v is UNSET for v in vals):
                raise invalid(f"Invalid null value in condition for column {rel.column}")
            by_col[rel.column] = vals
        missing = [c for c in t.partition_key if c not in by_col]
        if missing:
            raise invalid(f"Some partition key parts are missing: {', '.join(missing)}")
        pks = list(itertools.product(*(by_col[c] for c in t.partition_key)))
        if not any(c in by_col for c in t.clustering) and not need_ck:
            return pks, None
        missing = [c for c in t.clustering if c not in by_col]
        if missing:
            raise invalid(f"Some clustering keys are missing: {', '.join(missing)}")
        return pks, list(itertools.product(*(by_col[c] for c in t.clustering)))

    def insert(self, s: cql.Insert, t: Table, bound: Bound) -> Result:
        vals = {
            c: self.value(x, t.column(c), bound) for c, x in zip(s.columns, s.values, strict=True)
        }
        for c in t.key_columns:
            if vals.get(c) in (None, UNSET):
                which = "partition key part" if c in t.partition_key else "clustering key"
                raise invalid(
                    f"Some {which}s are missing: {c}"
                    if c not in vals
                    else f"Invalid null value in condition for column {c}"
                )
        pk = tuple(vals[c] for c in t.partition_key)
        ck = tuple(vals[c] for c in t.clustering)
        part = t.partitions.setdefault(pk, {})
        if s.if_not_exists and ck in part:
            return _lwt(t, False, part[ck])
        row = part.setdefault(ck, {})
        row.update({c: v for c, v in vals.items() if v is not UNSET})
        return _lwt(t, True) if s.if_not_exists else Void()

    def update(self, s: cql.Update, t: Table, bound: Bound) -> Result:
        pks, cks = self.key_values(t, s.where, bound, need_ck=True)
        changes = {c: self.value(x, t.column(c), bound) for c, x in s.assignments}
        for c in changes:
            if c in t.key_columns:
                raise invalid(f"PRIMARY KEY part {c} found in SET part")
        for pk in pks:
            for ck in cks or [()]:
                part = t.partitions.get(pk, {})
                if s.if_exists and ck not in part:
                    return _lwt(t, False)
                row = t.partitions.setdefault(pk, {}).setdefault(ck, {})
                if not row:
                    row.update(zip(t.partition_key, pk, strict=True))
                    row.update(zip(t.clustering, ck, strict=True))
                row.update({c: v for c, v in changes.items() if v is not UNSET})
        return _lwt(t, True) if s.if_exists else Void()

    def delete(self, s: cql.Delete, t: Table, bound: Bound) -> Result:
        pks, cks = self.key_values(t, s.where, bound, need_ck=bool(s.columns))
        for c in s.columns:
            if c in t.key_columns:
                raise invalid(
                    f"Invalid identifier {c} for deletion (should not be a PRIMARY KEY part)"
                )
            t.column(c)
        for pk in pks:
            part = t.partitions.get(pk)
            if part is None:
                continue
            if cks is None:
                del t.partitions[pk]
                continue
            for ck in cks:
                if ck in part:
                    if s.columns:
                        part[ck].update(dict.fromkeys(s.columns))
                    else:
                        del part[ck]
            if not part:
                del t.partitions[pk]
        return Void()


def _lwt(t: Table, applied: bool, existing: dict[str, Any] | None = None) -> Rows:
    cols: list[tuple[str, CqlType]] = [("[applied]", BOOLEAN)]
    row: list[Any] = [applied]
    if existing is not None:
        for c, ctype in t.columns.items():
            cols.append((c, ctype))
            row.append(existing.get(c))
    return Rows(t.keyspace, t.name, cols, [row])


def _matches(actual: Any, rel: cql.Relation, ctype: CqlType, ex: Executor, bound: Bound) -> bool:
    if rel.op == "IN":
        return actual in {ex.value(x, ctype, bound) for x in rel.term}
    want = ex.value(rel.term, ctype, bound)
    if rel.op == "=":
        return bool(actual == want)
    if actual is None or want is None:
        return False
    return bool(
        {"<": actual < want, "<=": actual <= want, ">": actual > want, ">=": actual >= want}[rel.op]
    )


def role_of(store: Store, name: str) -> Role:
    return store.roles[name]
