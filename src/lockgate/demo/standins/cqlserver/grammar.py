"""Statement rules on top of ``cql.Parser``: ``parse(text) -> (statement, marker_count)``.

One function per statement family; each consumes tokens and returns a dataclass from
``cql``. Table options in CREATE TABLE are accepted and ignored except CLUSTERING ORDER.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

from typing import Any

from . import cql
from .cql import Parser, syntax
from .wire import CqlError


def parse(text: str) -> tuple[Any, int]:
    p = Parser(text)
    stmt = _statement(p)
    p.end()
    return stmt, p.markers


def _statement(p: Parser) -> Any:
    if p.kw("use"):
        return cql.Use(p.ident())
    if p.kw("select"):
        return _select(p)
    if p.kw("insert"):
        return _insert(p)
    if p.kw("update"):
        return _update(p)
    if p.kw("delete"):
        return _delete(p)
    if p.kw("truncate"):
        p.kw("table")
        return cql.Truncate(p.table_ref())
    if p.kw("begin"):
        return _batch(p)
    if p.kw("create"):
        return _create(p)
    if p.kw("drop"):
        return _drop(p)
    if p.kw("alter") and p.kw("role", "user"):
        return cql.RoleStmt("alter", p.name_or_string(), False, _role_options(p))
    if p.kw("grant"):
        return _grant(p, True)
    if p.kw("revoke"):
        return _grant(p, False)
    raise syntax(f"line 1:0 no viable alternative at input {p.peek()[1]!r}")


def _select(p: Parser) -> cql.Select:
    p.kw("distinct")
    selectors: list[tuple[str, str]] | None = []
    count = False
    if p.op("*"):
        selectors = None
    else:
        while True:
            if p.is_kw("count") and p.peek(1) == ("op", "("):
                p.i += 2
                if not (p.op("*") or (p.peek()[0] == "num" and p.next())):
                    raise syntax("count() takes * or 1")
                p.expect(")")
                count = True
                name = "count"
            else:
                name = p.ident()
            alias = p.ident() if p.kw("as") else name
            if not count and selectors is not None:
                selectors.append((name, alias))
            if not p.op(","):
                break
    p.expect_kw("from")
    table = p.table_ref()
    where = p.where() if p.kw("where") else ()
    desc = False
    if p.kw("order"):
        p.expect_kw("by")
        p.ident()
        desc = p.kw("desc")
        p.kw("asc")
    limit = p.term() if p.kw("limit") else None
    if p.kw("allow"):
        p.expect_kw("filtering")
    return cql.Select(
        table, None if selectors is None else tuple(selectors), count, where, desc, limit
    )


def _names(p: Parser) -> tuple[str, ...]:
    p.expect("(")
    out = [p.ident()]
    while p.op(","):
        out.append(p.ident())
    p.expect(")")
    return tuple(out)


def _insert(p: Parser) -> cql.Insert:
    p.expect_kw("into")
    table = p.table_ref()
    cols = _names(p)
    p.expect_kw("values")
    p.expect("(")
    vals = [p.term()]
    while p.op(","):
        vals.append(p.term())
    p.expect(")")
    if len(vals) != len(cols):
        raise CqlError(0x2200, "Unmatched column names/values")
    ine = p.if_clause(("not", "exists"))
    return cql.Insert(table, cols, tuple(vals), ine, p.using())


def _update(p: Parser) -> cql.Update:
    table = p.table_ref()
    using = p.using()
    p.expect_kw("set")
    assigns = []
    while True:
        col = p.ident()
        p.expect("=")
        assigns.append((col, p.term()))
        if not p.op(","):
            break
    p.expect_kw("where")
    where = p.where()
    return cql.Update(table, tuple(assigns), where, p.if_clause(("exists",)), using)


def _delete(p: Parser) -> cql.Delete:
    cols: list[str] = []
    while not p.is_kw("from"):
        cols.append(p.ident())
        p.op(",")
    p.expect_kw("from")
    table = p.table_ref()
    using = p.using()
    p.expect_kw("where")
    where = p.where()
    return cql.Delete(table, tuple(cols), where, p.if_clause(("exists",)), using)


def _batch(p: Parser) -> cql.Batch:
    # Parser.g batchStatement: K_BEGIN (K_UNLOGGED | K_COUNTER)? K_BATCH usingClause?
    #   (batchStatementObjective ';'?)* K_APPLY K_BATCH
    # so children need no ';' between them, and ';' may not lead or repeat.
    p.kw("unlogged", "counter")
    p.expect_kw("batch")
    p.using()
    stmts = []
    while not p.kw("apply"):
        if not p.is_kw("insert", "update", "delete"):
            raise syntax("Only INSERT, UPDATE and DELETE are allowed in a BATCH")
        stmts.append(_statement(p))
        p.op(";")
    p.expect_kw("batch")
    return cql.Batch(tuple(stmts))


def _create(p: Parser) -> Any:
    if p.kw("keyspace", "schema"):
        ine = p.if_clause(("not", "exists"))
        name = p.ident()
        p.expect_kw("with")
        repl: dict[str, str] = {}
        durable = True
        while True:
            opt = p.ident()
            p.expect("=")
            val = p.term()
            if opt == "replication" and isinstance(val, dict):
                repl = {str(k): str(v) for k, v in val.items()}
            elif opt == "durable_writes":
                durable = bool(val)
            if not p.kw("and"):
                break
        if "class" not in repl:
            raise CqlError(0x2300, "Missing mandatory replication strategy class")
        return cql.CreateKeyspace(name, ine, repl, durable)
    if p.kw("table", "columnfamily"):
        return _create_table(p)
    if p.kw("materialized"):
        return _create_view(p)
    if p.kw("role", "user"):
        user = p.toks[p.i - 1][1].lower() == "user"
        ine = p.if_clause(("not", "exists"))
        name = p.name_or_string()
        opts = _user_options(p) if user else _role_options(p)
        return cql.RoleStmt("create", name, ine, opts)
    raise syntax(f"line 1: CREATE {p.peek()[1]} is not supported by the fake server")


def _create_view(p: Parser) -> cql.CreateView:
    """``VIEW [IF NOT EXISTS] v AS SELECT ... FROM base ...``; the node keeps the view's name
    and base only (its rows are the base's), so the rest of the text is skipped."""
    p.expect_kw("view")
    ine = p.if_clause(("not", "exists"))
    view = p.table_ref()
    p.expect_kw("as")
    p.expect_kw("select")
    while not p.kw("from"):
        p.next()
    base = p.table_ref()
    while p.peek()[0] != "eof" and p.peek() != ("op", ";"):
        p.next()
    return cql.CreateView(view, base, ine)


def _create_table(p: Parser) -> cql.CreateTable:
    ine = p.if_clause(("not", "exists"))
    table = p.table_ref()
    p.expect("(")
    cols: list[tuple[str, str]] = []
    pk: tuple[str, ...] = ()
    ck: tuple[str, ...] = ()
    while True:
        if p.kw("primary"):
            p.expect_kw("key")
            p.expect("(")
            pk = _names(p) if p.peek() == ("op", "(") else (p.ident(),)
            rest = []
            while p.op(","):
                rest.append(p.ident())
            p.expect(")")
            ck = tuple(rest)
        else:
            name = p.ident()
            cols.append((name, _type_text(p)))
            p.kw("static")
            if p.kw("primary"):
                p.expect_kw("key")
                pk = (name,)
        if not p.op(","):
            break
    p.expect(")")
    desc: set[str] = set()
    if p.kw("with"):
        while p.peek()[0] != "eof" and p.peek() != ("op", ";"):
            if p.kw("clustering"):
                p.expect_kw("order")
                p.expect_kw("by")
                p.expect("(")
                while not p.op(")"):
                    col = p.ident()
                    if p.kw("desc"):
                        desc.add(col)
                    p.kw("asc")
                    p.op(",")
            else:
                p.next()  # other table options do not change the fake's behaviour
    if not pk:
        raise CqlError(0x2200, "No PRIMARY KEY specifed (exactly one required)")
    return cql.CreateTable(table, ine, tuple(cols), pk, ck, frozenset(desc))


def _type_text(p: Parser) -> str:
    out = p.word()  # type names such as set, map and list are keywords
    if p.op("<"):
        depth, parts = 1, [out, "<"]
        while depth:
            kind, val = p.next()
            depth += {"<": 1, ">": -1}.get(val, 0) if kind == "op" else 0
            parts.append(val)
        out = "".join(parts)
    return out


def _drop(p: Parser) -> Any:
    if p.kw("keyspace", "schema"):
        ie = p.if_clause(("exists",))
        return cql.DropKeyspace(p.ident(), ie)
    if p.kw("table", "columnfamily"):
        ie = p.if_clause(("exists",))
        return cql.DropTable(p.table_ref(), ie)
    if p.kw("role", "user"):
        ie = p.if_clause(("exists",))
        return cql.RoleStmt("drop", p.name_or_string(), ie)
    raise syntax(f"line 1: DROP {p.peek()[1]} is not supported by the fake server")


def _role_options(p: Parser) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if p.kw("with"):
        while True:
            opt = p.ident()
            p.expect("=")
            opts[opt] = p.term()
            if not p.kw("and"):
                break
    return opts


def _user_options(p: Parser) -> dict[str, Any]:
    opts: dict[str, Any] = {"login": True}
    if p.kw("with"):
        p.expect_kw("password")
        opts["password"] = p.term()
    if p.kw("superuser"):
        opts["superuser"] = True
    elif p.kw("nosuperuser"):
        opts["superuser"] = False
    return opts


def _grant(p: Parser, grant: bool) -> cql.GrantStmt:
    if p.kw("all"):
        perms = cql.PERMISSIONS
    else:
        word = p.word()
        if word not in cql.PERMISSIONS:
            raise syntax(f"unknown permission {word!r} (role grants are not supported)")
        perms = frozenset({word})
    p.kw("permission", "permissions")
    p.expect_kw("on")
    resource: tuple[str, ...]
    if p.kw("all"):
        p.expect_kw("keyspaces")
        resource = ("all",)
    elif p.kw("keyspace"):
        resource = ("ks", p.ident())
    else:
        p.kw("table")
        ref = p.table_ref()
        resource = ("table", ref.keyspace or "", ref.name)
    p.expect_kw("to" if grant else "from")
    return cql.GrantStmt(grant, perms, resource, p.name_or_string())
