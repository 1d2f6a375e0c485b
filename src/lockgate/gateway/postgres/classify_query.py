"""Relations, functions and operators a query touches: the walker under :mod:`.classify`.

Names are placed by :class:`~.resolver.Resolver` (the server's search rules).
:class:`Walker` collects :class:`Access`\\ es from
a statement tree: every ``RangeVar`` (FROM, JOINs, subqueries anywhere, CTE bodies, set
operations, DML targets), every ``FuncCall`` and every operator, keeping CTE names in scope
only inside their WITH (a non-recursive CTE sees only the CTEs listed before it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from pglast import ast
from pglast.enums.parsenodes import A_Expr_Kind, SetOperation

from . import functions
from .classified import Access, Unplaceable, qualified_object, split_object
from .lexing import LEXING_SETTINGS, safe_lexing_value
from .resolver import Resolver, present, qualified_name

__all__ = ["Walker", "unsafe_lexing"]

_SELECT_SKIP = frozenset({"withClause", "intoClause", "lockingClause"})
_SET_OPERATION_SKIP = _SELECT_SKIP | {"larg", "rarg"}
# BETWEEN's name is the keyword; it expands to the built-in comparisons.
_NOT_OPERATORS = frozenset(
    {
        A_Expr_Kind.AEXPR_BETWEEN,
        A_Expr_Kind.AEXPR_NOT_BETWEEN,
        A_Expr_Kind.AEXPR_BETWEEN_SYM,
        A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM,
    }
)


class Walker:
    """Collects the accesses of statement trees into :attr:`accesses` (in order, unique)."""

    def __init__(self, resolver: Resolver, *, relation_action: str = "read") -> None:
        self.resolver = resolver
        self.relation_action = relation_action  # what a bare RangeVar means (read; admin in DDL)
        self.accesses: dict[Access, None] = {}
        self._ctes: list[frozenset[str]] = []
        # How an EXECUTE of a SQL-level prepared statement is judged (set by the classifier).
        self.on_execute: Callable[[ast.ExecuteStmt], object] | None = None

    # -- collecting ------------------------------------------------------------------------

    def add(self, action: str, obj: str) -> None:
        self.accesses[Access(action, obj)] = None

    def add_relation(
        self, action: str, rv: ast.RangeVar | None, *, missing_ok: bool = False
    ) -> None:
        rv = present(rv)
        if rv.catalogname:
            raise Unplaceable("cross_database_reference", f"{rv.catalogname} names a database")
        relname = present(rv.relname)
        catalog = self.resolver.catalog
        for obj in self.resolver.relation(rv.schemaname, relname, missing_ok=missing_ok):
            self.add(action, obj)
            if catalog is not None and action in ("read", "write"):
                # The server reads a view's relations and a parent's children too.
                schema, name = split_object(obj)
                children = rv.inh is not False
                reached_through = catalog.reads_through(schema, name, children=children)
                for reached in reached_through:
                    self.add(action, qualified_object(*reached))
                # ...and runs the functions of views, triggers and rules; rules write more
                calls, touches = catalog.sets_off(
                    schema, name, writing=action == "write", children=children, cascades=True
                )
                if reached_through or calls or touches:
                    self.resolver.catalog_sensitive = True
                for function_schema, function_name in calls:
                    self.function(function_schema, function_name, ())
                for touched in touches:
                    self.add("write", qualified_object(*touched))
                # ...and what the session's own (temporary) views and triggers set off
                for dependant in catalog.session_dependants(
                    schema, name, writing=action == "write"
                ):
                    self.add(*dependant)

    def is_cte(self, rv: ast.RangeVar) -> bool:
        return rv.schemaname is None and any(rv.relname in names for names in self._ctes)

    # -- walking ---------------------------------------------------------------------------

    def walk(self, node: object) -> None:
        if isinstance(node, (tuple, list)):
            for item in node:
                self.walk(item)
            return
        if not isinstance(node, ast.Node):
            return
        handler = _HANDLERS.get(type(node))
        if handler is not None:
            handler(self, node)  # type: ignore[operator]
        else:
            self.walk_children(node)

    def walk_children(self, node: ast.Node, skip: frozenset[str] = frozenset()) -> None:
        for attr in node:
            if attr not in skip:
                value = getattr(node, attr)
                if isinstance(value, (ast.Node, tuple, list)):
                    self.walk(value)

    def with_scope(self, with_clause: ast.WithClause | None, body: Iterator[None]) -> None:
        """Run ``body`` (a generator walking the statement) with the WITH names in scope."""
        # Bare relations inside a query are read, whatever statement holds the query.
        outer_action, self.relation_action = self.relation_action, "read"
        try:
            self._with_scope(with_clause, body)
        finally:
            self.relation_action = outer_action

    def _with_scope(self, with_clause: ast.WithClause | None, body: Iterator[None]) -> None:
        if with_clause is None:
            for _ in body:
                pass
            return
        ctes = [c for c in with_clause.ctes or () if isinstance(c, ast.CommonTableExpr)]
        names = frozenset(present(c.ctename) for c in ctes)
        if with_clause.recursive:
            self._ctes.append(names)
            for cte in ctes:
                self.walk(cte.ctequery)
        else:
            seen: list[str] = []
            for cte in ctes:
                self._ctes.append(frozenset(seen))
                self.walk(cte.ctequery)
                self._ctes.pop()
                seen.append(present(cte.ctename))
            self._ctes.append(names)
        try:
            for _ in body:
                pass
        finally:
            self._ctes.pop()

    def execute(self, stmt: ast.ExecuteStmt) -> None:
        if self.on_execute is None:
            raise Unplaceable("unsupported_statement", "EXECUTE is not allowed here")
        self.on_execute(stmt)
        self.walk(stmt.params)

    def range_var(self, rv: ast.RangeVar) -> None:
        if not self.is_cte(rv):
            self.add_relation(self.relation_action, rv)

    def func_call(self, call: ast.FuncCall) -> None:
        schema, name = qualified_name(call.funcname or ())
        self.function(schema, name, call.args or ())
        self.walk_children(call, frozenset({"funcname"}))

    def function(self, schema: str | None, name: str, args: tuple[object, ...]) -> None:
        if name == "set_config":
            _check_set_config(args)
        if functions.always_admin(name):
            self.add("admin", "function:" + qualified_object(schema or "pg_catalog", name))
            return
        schemas = [schema] if schema else self.resolver.function_schemas(name)
        catalog = self.resolver.catalog
        unknown = schema is None and not (catalog is not None and catalog.knows_functions)
        if unknown and (name in functions.SEQUENCE_FUNCTIONS or functions.is_safe(name)):
            schemas = ["pg_catalog"]  # where functions live is unknown: take the built-in
        if "pg_catalog" in schemas:
            # The built-in may be what runs: sequence functions touch their sequence,
            # allow-listed ones nothing; a same-named function elsewhere stays admin.
            if name in functions.SEQUENCE_FUNCTIONS:
                target = functions.literal_sequence(args)
                if target is not None:
                    for obj in self.resolver.relation(*target):
                        self.add(functions.SEQUENCE_FUNCTIONS[name], obj)
                    schemas.remove("pg_catalog")
            elif functions.is_safe(name):
                schemas.remove("pg_catalog")
        for s in schemas:
            self.add("admin", "function:" + qualified_object(s, name))

    def column_ref(self, ref: ast.ColumnRef) -> None:
        fields = ref.fields or ()
        if len(fields) >= 2:  # "t.f" with no column f in t is the call f(t)
            self.attribute_call(fields[-1])

    def indirection(self, node: ast.A_Indirection) -> None:
        for item in node.indirection or ():  # "(t).f" likewise; "[1]" and "*" are no calls
            self.attribute_call(item)
        self.walk_children(node)

    def attribute_call(self, field: object) -> None:
        """Judge ``f`` of ``t.f`` as a possible call ``f(t)`` (attribute notation): which
        columns ``t`` has is not known here, so every user function of that name the path
        reaches is ``admin`` (the built-ins taking any row only read their argument)."""
        if not isinstance(field, ast.String) or not field.sval:
            return
        catalog, name = self.resolver.catalog, field.sval
        if catalog is not None and catalog.knows_functions:
            holders = catalog.function_schemas(name)
            if not holders - {"pg_catalog"}:
                return
            candidates = self.resolver.function_schemas(name)
        else:
            # where functions live is unknown: the built-in is taken for allow-listed
            # names, any other may be a user function on the path
            if functions.is_safe(name):
                return
            holders, candidates = None, self.resolver.function_schemas(name)
        for s in candidates:
            if s != "pg_catalog" and (holders is None or s in holders):
                self.add("admin", "function:" + qualified_object(s, name))

    def type_cast(self, cast: ast.TypeCast) -> None:
        """A cast to a domain runs its CHECK functions; one of a value (not a literal,
        read by the type's input function) may run a user cast function."""
        catalog = self.resolver.catalog
        if catalog is not None and cast.typeName is not None:
            schema, name = qualified_name(cast.typeName.names or ())
            converting = not isinstance(cast.arg, ast.A_Const)
            # not catalog-sensitive: that would re-read the catalog for every such cast
            for called in catalog.cast_calls(schema, name, converting=converting):
                self.function(*called, ())
        self.walk_children(cast)

    def a_expr(self, expr: ast.A_Expr) -> None:
        # A long chain ("a + b + c + ...") nests to the left: walked in a loop, not recursion.
        node: object = expr
        while isinstance(node, ast.A_Expr):
            if node.name and node.kind not in _NOT_OPERATORS:  # IN is "=", LIKE is "~~", ...
                schema, op = qualified_name(node.name)
                if schema not in (None, "pg_catalog") or op not in functions.SAFE_OPERATORS:
                    schemas = [schema] if schema else self.resolver.function_schemas()
                    for s in schemas:
                        self.add("admin", "operator:" + qualified_object(s, op))
            self.walk_children(node, frozenset({"name", "lexpr"}))
            node = node.lexpr
        self.walk(node)

    # -- queries ---------------------------------------------------------------------------

    def select(self, stmt: ast.SelectStmt) -> None:
        def body() -> Iterator[None]:
            if stmt.op == SetOperation.SETOP_NONE:
                self.walk_children(stmt, _SELECT_SKIP)
                for clause in stmt.lockingClause or ():
                    if isinstance(clause, ast.LockingClause):
                        self._lock(stmt.fromClause or (), clause)
            else:
                self._set_operation(stmt)
            yield

        self.with_scope(stmt.withClause, body())

    def _set_operation(self, stmt: ast.SelectStmt) -> None:
        """UNION / INTERSECT / EXCEPT: a long chain nests deep, so walked in a loop."""
        pending: list[object] = [stmt]
        while pending:
            node = pending.pop()
            if (
                isinstance(node, ast.SelectStmt)
                and node.op != SetOperation.SETOP_NONE
                and (node is stmt or node.withClause is None)
            ):
                self.walk_children(node, _SET_OPERATION_SKIP)
                pending.extend((node.rarg, node.larg))
            else:
                self.walk(node)  # an operand: a plain SELECT (or one with its own WITH)

    def _lock(self, from_clause: tuple[object, ...], clause: ast.LockingClause) -> None:
        """FOR UPDATE/SHARE needs UPDATE privilege on the rows' tables: a write."""
        wanted = {rv.relname for rv in clause.lockedRels or () if isinstance(rv, ast.RangeVar)}
        for refname, item in _from_items(from_clause):
            if wanted and refname not in wanted:
                continue
            if isinstance(item, ast.RangeVar):
                if not self.is_cte(item):
                    self.add_relation("write", item)
            elif isinstance(item, ast.RangeSubselect) and isinstance(item.subquery, ast.SelectStmt):
                self._lock(item.subquery.fromClause or (), ast.LockingClause())

    def insert(self, stmt: ast.InsertStmt) -> None:
        def body() -> Iterator[None]:
            self.add_relation("write", stmt.relation)
            conflict = stmt.onConflictClause
            # RETURNING, a conflict target and DO UPDATE all look at the target's columns.
            if stmt.returningClause or (
                conflict is not None and (conflict.infer is not None or conflict.targetList)
            ):
                self.add_relation("read", stmt.relation)
            self.walk_children(stmt, frozenset({"withClause", "relation"}))
            yield

        self.with_scope(stmt.withClause, body())

    def update(self, stmt: ast.UpdateStmt) -> None:
        def body() -> Iterator[None]:
            self.add_relation("write", stmt.relation)
            parts = (stmt.targetList, stmt.whereClause, stmt.returningClause)
            if _reads_target(parts, stmt.relation):
                self.add_relation("read", stmt.relation)
            self.walk_children(stmt, frozenset({"withClause", "relation"}))
            yield

        self.with_scope(stmt.withClause, body())

    def delete(self, stmt: ast.DeleteStmt) -> None:
        def body() -> Iterator[None]:
            self.add_relation("write", stmt.relation)
            if _reads_target((stmt.whereClause, stmt.returningClause), stmt.relation):
                self.add_relation("read", stmt.relation)
            self.walk_children(stmt, frozenset({"withClause", "relation"}))
            yield

        self.with_scope(stmt.withClause, body())

    def merge(self, stmt: ast.MergeStmt) -> None:
        def body() -> Iterator[None]:
            self.add_relation("write", stmt.relation)
            parts = (stmt.joinCondition, stmt.mergeWhenClauses, stmt.returningClause)
            if _reads_target(parts, stmt.relation):
                self.add_relation("read", stmt.relation)
            self.walk_children(stmt, frozenset({"withClause", "relation"}))
            yield

        self.with_scope(stmt.withClause, body())


def unsafe_lexing(name: str) -> Unplaceable:
    """The refusal of a change to a setting that decides how the server lexes texts."""
    return Unplaceable(
        "lexing_setting",
        f"changing {name} is refused: the server must read statements as Lockgate does "
        "(client_encoding UTF8, standard_conforming_strings on)",
    )


def _check_set_config(args: tuple[object, ...]) -> None:
    """``set_config(name, value, local)`` may not change how the server lexes: its name and
    value must be constants, and a lexing setting's value a safe one (:mod:`.lexing`)."""
    texts = [_constant_text(arg) for arg in args[:2]]
    name, value = [*texts, None, None][:2]
    if name is None:
        raise unsafe_lexing("a setting named by an expression (set_config)")
    name = name.strip().lower()
    if name in LEXING_SETTINGS and (value is None or not safe_lexing_value(name, value)):
        raise unsafe_lexing(name)


def _constant_text(arg: object) -> str | None:
    if isinstance(arg, ast.TypeCast):
        arg = arg.arg
    if isinstance(arg, ast.A_Const) and isinstance(arg.val, ast.String):
        return arg.val.sval or ""
    return None


def _refname(rv: ast.RangeVar) -> str:
    return present(rv.alias.aliasname if rv.alias is not None else rv.relname)


def _from_items(items: Iterable[object]) -> Iterator[tuple[str, object]]:
    """``(reference name, item)`` for each relation or subquery of one FROM level."""
    for item in items:
        if isinstance(item, ast.JoinExpr):
            if item.alias is not None:
                # A join with an alias hides its members' names.
                for _, inner in _from_items((item.larg, item.rarg)):
                    yield present(item.alias.aliasname), inner
            else:
                yield from _from_items((item.larg, item.rarg))
        elif isinstance(item, ast.RangeVar):
            yield _refname(item), item
        elif isinstance(item, ast.RangeSubselect) and item.alias is not None:
            yield present(item.alias.aliasname), item


def _column_refs(node: object) -> Iterator[ast.ColumnRef]:
    """Every column reference under ``node``, subqueries included."""
    if isinstance(node, (tuple, list)):
        for item in node:
            yield from _column_refs(item)
    elif isinstance(node, ast.ColumnRef):
        yield node
    elif isinstance(node, ast.Node):
        for attr in node:
            value = getattr(node, attr)
            if isinstance(value, (ast.Node, tuple, list)):
                yield from _column_refs(value)


def _reads_target(parts: Iterable[object], target: ast.RangeVar | None) -> bool:
    """Whether an expression may read the DML target's columns (it then needs SELECT).

    A column qualified with the target's name is the target's; one qualified with another
    name is not; an unqualified one may be (it may be the target's, even from a subquery).
    """
    name = _refname(present(target))
    for ref in _column_refs(tuple(parts)):
        fields = ref.fields or ()
        if len(fields) < 2:
            return True  # "col" or "*"
        qualifier = fields[-2]  # "t.col", "schema.t.col", "t.*"
        if not isinstance(qualifier, ast.String) or qualifier.sval == name:
            return True
    return False


_HANDLERS = {
    ast.SelectStmt: Walker.select,
    ast.InsertStmt: Walker.insert,
    ast.UpdateStmt: Walker.update,
    ast.DeleteStmt: Walker.delete,
    ast.MergeStmt: Walker.merge,
    ast.RangeVar: Walker.range_var,
    ast.ExecuteStmt: Walker.execute,
    ast.FuncCall: Walker.func_call,
    ast.A_Expr: Walker.a_expr,
    ast.ColumnRef: Walker.column_ref,
    ast.A_Indirection: Walker.indirection,
    ast.TypeCast: Walker.type_cast,
}
