"""A parser for the CQL subset the fake server executes.

Strategy: tokens from ``lexer`` (Cassandra's Lexer.g) and a small recursive-descent parser
producing frozen dataclasses; a text is one statement followed by any number of ``;`` (the
``query`` rule of Cql.g), and unquoted reserved keywords are not identifiers.
Bind markers (``?`` and ``:name``) are numbered in order of appearance across the whole text
(so a text ``BEGIN BATCH ... APPLY BATCH`` numbers them like Cassandra does); the executor
finds each marker's column later to learn its type. Unquoted names fold to lower case,
"quoted" names keep their case. Anything outside the subset raises a syntax error (0x2000).

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .lexer import tokenize
from .wire import SYNTAX_ERROR, CqlError


@dataclass(frozen=True, slots=True)
class Marker:
    index: int
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """A function term evaluated at execution time: now(), uuid(), totimestamp(now())..."""

    name: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Relation:
    column: str
    op: str  # = < <= > >= IN
    term: Any  # a literal, Marker, Call, or a tuple of them for IN


@dataclass(frozen=True, slots=True)
class TableRef:
    keyspace: str | None
    name: str


@dataclass(frozen=True, slots=True)
class Use:
    keyspace: str


@dataclass(frozen=True, slots=True)
class CreateKeyspace:
    name: str
    if_not_exists: bool
    replication: dict[str, str]
    durable_writes: bool


@dataclass(frozen=True, slots=True)
class DropKeyspace:
    name: str
    if_exists: bool


@dataclass(frozen=True, slots=True)
class CreateTable:
    table: TableRef
    if_not_exists: bool
    columns: tuple[tuple[str, str], ...]
    partition_key: tuple[str, ...]
    clustering: tuple[str, ...]
    descending: frozenset[str]


@dataclass(frozen=True, slots=True)
class CreateView:
    """CREATE MATERIALIZED VIEW: the node serves the base table's rows under the view's name."""

    view: TableRef
    base: TableRef
    if_not_exists: bool


@dataclass(frozen=True, slots=True)
class DropTable:
    table: TableRef
    if_exists: bool


@dataclass(frozen=True, slots=True)
class Truncate:
    table: TableRef


@dataclass(frozen=True, slots=True)
class Using:
    ttl: Any = None
    timestamp: Any = None


@dataclass(frozen=True, slots=True)
class Insert:
    table: TableRef
    columns: tuple[str, ...]
    values: tuple[Any, ...]
    if_not_exists: bool
    using: Using


@dataclass(frozen=True, slots=True)
class Update:
    table: TableRef
    assignments: tuple[tuple[str, Any], ...]
    where: tuple[Relation, ...]
    if_exists: bool
    using: Using


@dataclass(frozen=True, slots=True)
class Delete:
    table: TableRef
    columns: tuple[str, ...]
    where: tuple[Relation, ...]
    if_exists: bool
    using: Using


@dataclass(frozen=True, slots=True)
class Select:
    table: TableRef
    selectors: tuple[tuple[str, str], ...] | None  # (column, alias); None means *
    count: bool
    where: tuple[Relation, ...]
    order_desc: bool
    limit: Any


@dataclass(frozen=True, slots=True)
class Batch:
    statements: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class RoleStmt:
    verb: str  # create | alter | drop
    name: str
    if_flag: bool = False  # IF NOT EXISTS / IF EXISTS
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GrantStmt:
    grant: bool  # False means REVOKE
    permissions: frozenset[str]
    resource: tuple[str, ...]  # ("all",) | ("ks", name) | ("table", ks|None, name)
    role: str


# org.apache.cassandra.cql3.ReservedKeywords (3.11): never an unquoted identifier.
RESERVED = frozenset({
    "select", "from", "where", "and", "entries", "full", "insert", "update", "with", "limit",
    "using", "use", "set", "begin", "unlogged", "batch", "apply", "truncate", "delete", "in",
    "create", "keyspace", "schema", "columnfamily", "table", "materialized", "view", "index",
    "on", "to", "drop", "primary", "into", "alter", "rename", "add", "order", "by", "asc",
    "desc", "allow", "if", "is", "grant", "of", "revoke", "modify", "authorize", "describe",
    "execute", "norecursive", "token", "null", "not", "nan", "infinity", "or", "replace",
    "default", "unset", "mbean", "mbeans",
})  # fmt: skip

PERMISSIONS = frozenset({"create", "alter", "drop", "select", "modify", "authorize", "describe"})


def syntax(msg: str) -> CqlError:
    return CqlError(SYNTAX_ERROR, msg)


class Parser:
    def __init__(self, text: str) -> None:
        self.toks = tokenize(text)
        self.i = 0
        self.markers = 0

    # -- token helpers -----------------------------------------------------------------
    def peek(self, k: int = 0) -> tuple[str, str]:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("eof", "")

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        if tok[0] == "eof":
            raise syntax("line 1: mismatched input at end of statement")
        self.i += 1
        return tok

    def is_kw(self, *words: str, k: int = 0) -> bool:
        kind, val = self.peek(k)
        return kind == "id" and val.lower() in words

    def kw(self, *words: str) -> bool:
        if self.is_kw(*words):
            self.i += 1
            return True
        return False

    def expect_kw(self, word: str) -> None:
        if not self.kw(word):
            raise syntax(f"line 1: expecting {word.upper()} near {self.peek()[1]!r}")

    def op(self, sym: str) -> bool:
        if self.peek() == ("op", sym):
            self.i += 1
            return True
        return False

    def expect(self, sym: str) -> None:
        if not self.op(sym):
            raise syntax(f"line 1: expecting {sym!r} near {self.peek()[1]!r}")

    def ident(self) -> str:
        kind, val = self.next()
        if kind == "id":
            low = val.lower()
            if low in RESERVED:
                raise syntax(f"line 1: no viable alternative at input {val!r} (reserved keyword)")
            return low
        if kind == "qid":
            return val
        raise syntax(f"line 1: expecting an identifier near {val!r}")

    def word(self) -> str:
        """An unquoted word, reserved or not (permission names, option keywords)."""
        kind, val = self.next()
        if kind != "id":
            raise syntax(f"line 1: expecting a keyword near {val!r}")
        return val.lower()

    def name_or_string(self) -> str:
        kind, val = self.peek()
        if kind == "str":
            self.i += 1
            return val
        return self.ident()

    def table_ref(self) -> TableRef:
        first = self.ident()
        if self.op("."):
            return TableRef(first, self.ident())
        return TableRef(None, first)

    def if_clause(self, words: tuple[str, ...]) -> bool:
        if self.is_kw("if") and all(self.is_kw(w, k=n + 1) for n, w in enumerate(words)):
            self.i += 1 + len(words)
            return True
        return False

    def end(self) -> None:
        while self.op(";"):  # Cql.g: query : cqlStatement (';')* EOF
            pass
        if self.peek()[0] != "eof":
            raise syntax(f"line 1: extraneous input {self.peek()[1]!r}")

    # -- terms -------------------------------------------------------------------------
    def term(self) -> Any:
        kind, val = self.next()
        if kind == "str":
            return val
        if kind == "num":
            return float(val) if any(c in val for c in ".eEnNiI") else int(val)
        if kind == "uuid":
            return uuid.UUID(val)
        if kind == "blob":
            return bytes.fromhex(val[2:])
        if kind == "mark":
            self.markers += 1
            return Marker(self.markers - 1)
        if (kind, val) == ("op", ":"):  # Parser.g: ':' noncol_ident, a named bind marker
            name = self.ident()
            self.markers += 1
            return Marker(self.markers - 1, name)
        if kind == "id":
            low = val.lower()
            if low in ("true", "false"):
                return low == "true"
            if low == "null":
                return None
            if low in ("nan", "infinity"):
                return float(low)
            if self.op("("):
                args: list[Any] = []
                while not self.op(")"):
                    args.append(self.term())
                    self.op(",")
                return Call(low, tuple(args))
        if (kind, val) == ("op", "{"):
            return self._brace()
        if (kind, val) == ("op", "["):
            items = []
            while not self.op("]"):
                items.append(self.term())
                self.op(",")
            return items
        raise syntax(f"line 1: no viable alternative at input {val!r}")

    def _brace(self) -> Any:
        if self.op("}"):
            return {}
        first = self.term()
        if self.op(":"):
            out = {first: self.term()}
            while self.op(","):
                k = self.term()
                self.expect(":")
                out[k] = self.term()
            self.expect("}")
            return out
        items = {first}
        while self.op(","):
            items.add(self.term())
        self.expect("}")
        return items

    def where(self) -> tuple[Relation, ...]:
        rels = []
        while True:
            col = self.ident()
            if self.kw("in"):
                if self.peek()[0] == "mark" or self.peek() == ("op", ":"):
                    raise syntax("IN with a single bind marker is not supported by the fake")
                self.expect("(")
                items = []
                while not self.op(")"):
                    items.append(self.term())
                    self.op(",")
                rels.append(Relation(col, "IN", tuple(items)))
            else:
                kind, sym = self.next()
                if kind != "op" or sym not in ("=", "<", "<=", ">", ">="):
                    raise syntax(f"line 1: unsupported relation operator {sym!r}")
                rels.append(Relation(col, sym, self.term()))
            if not self.kw("and"):
                return tuple(rels)

    def using(self) -> Using:
        ttl = ts = None
        if self.kw("using"):
            while True:
                if self.kw("ttl"):
                    ttl = self.term()
                elif self.kw("timestamp"):
                    ts = self.term()
                else:
                    raise syntax("expecting TTL or TIMESTAMP after USING")
                if not self.kw("and"):
                    break
        return Using(ttl, ts)
