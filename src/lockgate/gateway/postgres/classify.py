"""SQL text -> what each statement needs from policy, with PostgreSQL's own parser.

:func:`classify` parses a text with libpg_query (through pglast: the server's grammar, so a
``;`` inside a string, a dollar quote or a nested comment splits nothing it should not) and
returns every statement in order with its :class:`Access`\\ es and session
:class:`Effect`\\ s. Deny by default: a text the parser rejects, a statement kind not
handled here, a relation that resolves nowhere — :class:`Unplaceable`, never a guess.

* queries (SELECT, INSERT, UPDATE, DELETE, MERGE, TABLE, VALUES): :mod:`.classify_query`
  (reads, writes, function and operator calls);
* DDL and administration: :mod:`.classify_ddl` (``admin``);
* session statements (SET, RESET, SHOW, transactions, PREPARE / EXECUTE / DEALLOCATE,
  DISCARD, cursors, EXPLAIN, COPY): here.

Actions: a SELECT (or COPY TO) reads; INSERT/UPDATE/DELETE/MERGE (or COPY FROM) write, and
also read their target when they look at its rows (WHERE, RETURNING, SET a = a + 1, ON
CONFLICT DO UPDATE), as the server then wants SELECT too; SELECT ... FOR UPDATE/SHARE and
LOCK write; TRUNCATE and DDL are admin; COPY with a file or a PROGRAM is admin on the
table and on ``database``. SET of a setting outside :data:`HARMLESS_SETTINGS` is admin on
``setting:<name>``. ``client_encoding`` and ``standard_conforming_strings`` (also through
``set_config``) only to a value the gateway's parser agrees with, else the text is
refused whatever policy says (:mod:`.lexing`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from pglast import ast, parser
from pglast.enums.parsenodes import (
    DiscardMode,
    ObjectType,
    TransactionStmtKind,
    VariableSetKind,
)

from .classified import Access, Classified, Effect, Statement, Unplaceable, name_part
from .classify_ddl import DDL_HANDLERS, create_relation
from .classify_query import Walker, unsafe_lexing
from .lexing import LEXING_SETTINGS, safe_lexing_value
from .redact import redact
from .resolver import Resolver, present
from .scope import NameScope, TextScope, cursors_of

__all__ = [
    "HARMLESS_SETTINGS",
    "MAX_STATEMENTS_PER_TEXT",
    "MAX_TEXT_CHARS",
    "Access",
    "Classified",
    "Effect",
    "Statement",
    "Unplaceable",
    "classify",
]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


HARMLESS_SETTINGS = _words(
    """
    application_name timezone datestyle intervalstyle statement_timeout lock_timeout
    idle_in_transaction_session_timeout idle_session_timeout transaction_timeout
    extra_float_digits work_mem maintenance_work_mem temp_buffers client_min_messages
    bytea_output transaction_isolation transaction_read_only transaction_deferrable
    default_transaction_isolation default_transaction_read_only
    default_transaction_deferrable synchronous_commit jit random_page_cost seq_page_cost
    cpu_tuple_cost cpu_index_tuple_cost cpu_operator_cost effective_cache_size
    default_statistics_target plan_cache_mode max_parallel_workers_per_gather
    from_collapse_limit join_collapse_limit geqo lc_monetary lc_numeric lc_time xmloption
    xmlbinary array_nulls quote_all_identifiers escape_string_warning row_security
    gin_fuzzy_search_limit cursor_tuple_fraction constraint_exclusion
    """
)
#: Limits on one text (a Query, or a Parse's statement), so that classifying it cannot hold
#: the gateway for long (each statement is also one audit record). Over either the text is
#: refused (Unplaceable ``text_too_large`` / ``too_many_statements``) whatever policy says.
MAX_TEXT_CHARS = 256 * 1024
MAX_STATEMENTS_PER_TEXT = 1000
# The shortest statement with its ";" ("END;"): a shorter text cannot exceed the count.
_MIN_CHARS_PER_STATEMENT = 4
# Texts longer than this are parsed on a thread with a deep stack (:func:`_parse_long`);
# a shorter one cannot nest deep enough to need it.
_LONG_TEXT = 4000
_DEEP_STACK_BYTES = 1024 * 1024 * 1024  # address space; only what the parse touches is used
_DEEP_STACK_LOCK = threading.Lock()
# Tag-like commands for statements whose node name does not say it.
_COMMANDS = {
    ast.SelectStmt: "SELECT",
    ast.InsertStmt: "INSERT",
    ast.UpdateStmt: "UPDATE",
    ast.DeleteStmt: "DELETE",
    ast.MergeStmt: "MERGE",
    ast.CreateStmt: "CREATE TABLE",
    ast.CreateTableAsStmt: "CREATE TABLE AS",
    ast.ViewStmt: "CREATE VIEW",
    ast.IndexStmt: "CREATE INDEX",
    ast.CreateSeqStmt: "CREATE SEQUENCE",
    ast.CreatedbStmt: "CREATE DATABASE",
    ast.DropdbStmt: "DROP DATABASE",
    ast.CreateTrigStmt: "CREATE TRIGGER",
    ast.RuleStmt: "CREATE RULE",
    ast.VariableSetStmt: "SET",
    ast.VariableShowStmt: "SHOW",
    ast.TruncateStmt: "TRUNCATE TABLE",
    ast.LockStmt: "LOCK TABLE",
    ast.CopyStmt: "COPY",
    ast.ExplainStmt: "EXPLAIN",
    ast.DoStmt: "DO",
    ast.CallStmt: "CALL",
    ast.GrantStmt: "GRANT",
    ast.GrantRoleStmt: "GRANT ROLE",
    ast.CreateFunctionStmt: "CREATE FUNCTION",
    ast.DeclareCursorStmt: "DECLARE CURSOR",
    ast.FetchStmt: "FETCH",
    ast.ClosePortalStmt: "CLOSE CURSOR",
    ast.CheckPointStmt: "CHECKPOINT",
    ast.VacuumStmt: "VACUUM",
    ast.RefreshMatViewStmt: "REFRESH MATERIALIZED VIEW",
}
_TRANSACTION_COMMANDS = {
    TransactionStmtKind.TRANS_STMT_BEGIN: ("BEGIN", "begin"),
    TransactionStmtKind.TRANS_STMT_START: ("START TRANSACTION", "begin"),
    TransactionStmtKind.TRANS_STMT_COMMIT: ("COMMIT", "commit"),
    TransactionStmtKind.TRANS_STMT_ROLLBACK: ("ROLLBACK", "rollback"),
    TransactionStmtKind.TRANS_STMT_SAVEPOINT: ("SAVEPOINT", "savepoint"),
    TransactionStmtKind.TRANS_STMT_RELEASE: ("RELEASE", "release"),
    TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: ("ROLLBACK", "rollback_to"),
}


def classify(sql: str, scope: NameScope) -> Classified:
    """Every statement of ``sql`` with what it needs; :class:`Unplaceable` if any cannot be."""
    _check_size(sql)
    try:
        raw = parser.parse_sql(sql) if len(sql) <= _LONG_TEXT else _parse_long(sql)
    except parser.ParseError as exc:
        raise Unplaceable("parse_error", f"syntax error: {exc}") from None
    except RecursionError:
        raise Unplaceable("too_complex", "statement nested too deeply") from None
    try:
        return _classify_parsed(sql, raw, scope)
    except RecursionError:
        raise Unplaceable("too_complex", "statement nested too deeply") from None


def _check_size(sql: str) -> None:
    """Refuse, before the costly parse, a text too large to classify in reasonable time.

    Classification costs some 60 µs a statement and 2 µs a character of a long statement:
    a text of 50000 statements would take seconds. Counting statements is the scanner's
    alone (some 20 ms for 450 KB), so it runs only on texts long enough to exceed the cap.
    """
    if len(sql) > MAX_TEXT_CHARS:
        raise Unplaceable(
            "text_too_large",
            f"a text of {len(sql)} characters is over Lockgate's limit of {MAX_TEXT_CHARS}: "
            "send fewer statements at a time (rows in bulk: COPY)",
        )
    if len(sql) <= _MIN_CHARS_PER_STATEMENT * MAX_STATEMENTS_PER_TEXT:
        return
    try:
        count = len(parser.split(sql, with_parser=False))
    except parser.ParseError:
        return  # the parse proper refuses it with its message
    if count > MAX_STATEMENTS_PER_TEXT:
        raise Unplaceable(
            "too_many_statements",
            f"a text of {count} statements is over Lockgate's limit of "
            f"{MAX_STATEMENTS_PER_TEXT}: send fewer at a time",
        )


def _parse_long(sql: str) -> tuple[ast.RawStmt, ...]:
    """Parse a long text on a thread with a deep stack.

    pglast builds its tree recursively in C: a tree some 15000 deep ("SELECT 1 UNION SELECT
    1 UNION ..." or "1+1+...+1") overflows a normal thread's stack and would end the process.
    A short text cannot be that deep; a long one is first offered to libpg_query's JSON writer,
    which refuses a too-deep expression cleanly, then parsed where the stack has room.
    """
    parser.parse_sql_json(sql)
    outcome: list[tuple[ast.RawStmt, ...] | BaseException] = []

    def parse() -> None:
        try:
            outcome.append(parser.parse_sql(sql))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    with _DEEP_STACK_LOCK:
        previous = threading.stack_size(_DEEP_STACK_BYTES)
        try:
            worker = threading.Thread(target=parse, name="lockgate-pg-parse", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
    worker.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _classify_parsed(sql: str, raw: tuple[ast.RawStmt, ...], scope: NameScope) -> Classified:
    statements: list[Statement] = []
    # A later statement of the text sees what the earlier ones did (SET search_path, a
    # temporary table, PREPARE): the server runs them in order.
    moving = TextScope(scope) if len(raw) > 1 else scope
    sensitive = False
    for item in raw:
        start = item.stmt_location or 0
        end = start + item.stmt_len if item.stmt_len else len(sql)
        text = sql[start:end].strip()
        resolver = Resolver(moving)
        statement = _statement(present(item.stmt), text, resolver, moving)
        sensitive |= resolver.catalog_sensitive
        statements.append(statement)
        if isinstance(moving, TextScope):
            moving.done(statement)
    return Classified(tuple(statements), catalog_sensitive=sensitive)


def _statement(node: ast.Node, text: str, resolver: Resolver, scope: NameScope) -> Statement:
    walker = Walker(resolver, relation_action="admin")
    walker.on_execute = lambda stmt: _execute_inner(stmt, walker, scope)
    command, effects, prepared_name = _dispatch(node, walker, text, scope)
    if isinstance(node, ast.DoStmt | ast.CallStmt) or any(
        access.obj.startswith("function:") for access in walker.accesses
    ):
        effects.append(Effect("opaque_search_path"))
    return Statement(
        command=command,
        accesses=tuple(walker.accesses),
        text=redact(text),
        effects=tuple(effects),
        prepared_name=prepared_name,
    )


def _dispatch(
    node: ast.Node, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    """Fill ``w`` with the accesses of ``node``; return its command, effects, prepared name."""
    kind = type(node)
    if kind in (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt):
        effects: list[Effect] = []
        if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
            effects = create_relation(w, node.intoClause.rel)  # SELECT INTO makes a table
        w.walk(node)
        return _COMMANDS[kind], effects, ""
    session = _SESSION_HANDLERS.get(kind)
    if session is not None:
        return session(node, w, text, scope)
    ddl = DDL_HANDLERS.get(kind)
    if ddl is not None:
        return _command_of(node), ddl(w, node), ""
    raise Unplaceable("unsupported_statement", f"{kind.__name__} statements are not supported")


def _command_of(node: ast.Node) -> str:
    known = _COMMANDS.get(type(node))
    if known:
        return known
    if isinstance(node, ast.DropStmt):
        return f"DROP {_object_words(node.removeType)}"
    if isinstance(node, ast.RenameStmt):
        member = node.renameType in (ObjectType.OBJECT_COLUMN, ObjectType.OBJECT_TABCONSTRAINT)
        kind = node.relationType if member else node.renameType  # a column: ALTER TABLE
        return f"ALTER {_object_words(kind)}"
    if isinstance(node, ast.AlterObjectSchemaStmt | ast.AlterOwnerStmt):
        return f"ALTER {_object_words(node.objectType)}"
    words = re.findall(r"[A-Z][a-z]*", type(node).__name__.removesuffix("Stmt"))
    return " ".join(words).upper()


def _object_words(kind: ObjectType | None) -> str:
    return ObjectType(present(kind)).name.removeprefix("OBJECT_").replace("_", " ")


Handler = Callable[[ast.Node, Walker, str, NameScope], tuple[str, list[Effect], str]]


def _variable_set(
    node: ast.VariableSetStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    name = node.name or ""
    setkind = node.kind
    if setkind == VariableSetKind.VAR_RESET_ALL:
        return "RESET", [Effect("reset_search_path")], ""
    if setkind == VariableSetKind.VAR_SET_MULTI:
        return "SET", [], ""  # SET TRANSACTION / SESSION CHARACTERISTICS
    command = "RESET" if setkind == VariableSetKind.VAR_RESET else "SET"
    if name == "search_path":
        if setkind == VariableSetKind.VAR_SET_VALUE:
            schemas = tuple(_setting_text(arg) for arg in node.args or ())
            return command, [Effect("search_path", schemas, local=bool(node.is_local))], ""
        if setkind in (VariableSetKind.VAR_SET_DEFAULT, VariableSetKind.VAR_RESET):
            return command, [Effect("reset_search_path", local=bool(node.is_local))], ""
        w.add("admin", "setting:search_path")  # SET ... FROM CURRENT
        return command, [], ""
    if name in ("role", "session_authorization"):
        values = [_setting_text(arg) for arg in node.args or ()]
        w.add("admin", "role:" + name_part(values[0] if values else "default"))
        return command, [], ""
    if name in LEXING_SETTINGS:
        # Only a value the gateway's parser agrees with; DEFAULT / RESET / FROM CURRENT
        # keep or restore the login's pinned one (:mod:`.lexing`).
        if setkind == VariableSetKind.VAR_SET_VALUE:
            values = [_setting_text(arg) for arg in node.args or ()]
            if len(values) != 1 or not safe_lexing_value(name, values[0]):
                raise unsafe_lexing(name)
        return command, [], ""
    if name not in HARMLESS_SETTINGS:
        w.add("admin", "setting:" + name_part(name))
    return command, [], ""


def _setting_text(arg: object) -> str:
    if isinstance(arg, ast.A_Const) and arg.val is not None:
        value = arg.val
        for attr in ("sval", "ival", "fval", "boolval"):
            if hasattr(value, attr):
                return str(getattr(value, attr))
    raise Unplaceable("unsupported_statement", "a setting value could not be read")


def _transaction(
    node: ast.TransactionStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    kind = present(node.kind)
    known = _TRANSACTION_COMMANDS.get(kind)
    if known is None:
        # PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED: two-phase commit.
        w.add("admin", "database")
        command = TransactionStmtKind(kind).name.removeprefix("TRANS_STMT_")
        ends = node.kind == TransactionStmtKind.TRANS_STMT_PREPARE  # hands the block over
        return command.replace("_", " "), [Effect("commit")] if ends else [], ""
    command, effect = known
    name = node.savepoint_name or ""
    return command, [Effect(effect, local=bool(node.chain), name=name)], ""


def _prepare(
    node: ast.PrepareStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    inner = _prepared_text(text)
    # The prepared statement must itself be placeable now; EXECUTE is judged on it later.
    classify(inner, scope)
    name = present(node.name)
    return "PREPARE", [Effect("prepare", (inner,), name=name)], name


def _prepared_text(text: str) -> str:
    """The statement after ``PREPARE name [(types)] AS``, found with the scanner."""
    depth = 0
    for token in parser.scan(text):
        if token.name == "ASCII_40":
            depth += 1
        elif token.name == "ASCII_41":
            depth -= 1
        elif token.name == "AS" and depth == 0:
            return text[token.end + 1 :].strip()
    raise Unplaceable("parse_error", "PREPARE without AS")


def _execute(
    node: ast.ExecuteStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    command = _execute_inner(node, w, scope)
    w.walk(node.params)
    return command, [], present(node.name)


def _execute_inner(node: ast.ExecuteStmt, w: Walker, scope: NameScope) -> str:
    inner = scope.prepared.get(present(node.name))
    if inner is None:
        raise Unplaceable(
            "unknown_prepared_statement", f'prepared statement "{node.name}" does not exist'
        )
    classified = classify(inner, scope)
    w.resolver.catalog_sensitive |= classified.catalog_sensitive
    statements = classified.statements
    for stmt in statements:
        for access in stmt.accesses:
            w.add(access.action, access.obj)
    return statements[0].command if statements else "EXECUTE"


def _deallocate(
    node: ast.DeallocateStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    name = "" if node.isall else (node.name or "")
    return "DEALLOCATE", [Effect("deallocate", name=name)], name


def _discard(
    node: ast.DiscardStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    effects = [Effect("discard_all")] if node.target == DiscardMode.DISCARD_ALL else []
    return "DISCARD", effects, ""


def _nothing(command: str) -> Handler:
    def handle(
        node: ast.Node, w: Walker, text: str, scope: NameScope
    ) -> tuple[str, list[Effect], str]:
        return command, [], ""

    return handle


def _explain(
    node: ast.ExplainStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    # EXPLAIN needs the inner statement's privileges, and ANALYZE runs it.
    _, effects, _ = _dispatch(present(node.query), w, text, scope)
    return "EXPLAIN", effects, ""


def _declare_cursor(
    node: ast.DeclareCursorStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    w.walk(node.query)
    # A FETCH from the cursor is judged on what its query touches (under the policy of then).
    touched = tuple(f"{a.action} {a.obj}" for a in w.accesses)
    return "DECLARE CURSOR", [Effect("declare_cursor", touched, name=present(node.portalname))], ""


def _fetch(
    node: ast.FetchStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    name = present(node.portalname)
    touched = cursors_of(scope).get(name)
    if touched is None:
        raise Unplaceable("unknown_cursor", f'cursor "{name}" is not known here')
    for entry in touched:
        action, _, obj = entry.partition(" ")
        w.add(action, obj)
    return ("MOVE" if node.ismove else "FETCH"), [], ""


def _close_cursor(
    node: ast.ClosePortalStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    return "CLOSE CURSOR", [Effect("close_cursor", name=node.portalname or "")], ""


def _copy(
    node: ast.CopyStmt, w: Walker, text: str, scope: NameScope
) -> tuple[str, list[Effect], str]:
    to_client = node.filename is None and not node.is_program
    if node.relation is not None:
        action = ("write" if node.is_from else "read") if to_client else "admin"
        w.add_relation(action, node.relation)
        w.relation_action = "read"
        w.walk(node.whereClause)
    else:
        w.walk(node.query)
    if not to_client:
        w.add("admin", "database")  # a server file or program
    return "COPY", [], ""


_SESSION_HANDLERS: dict[type[ast.Node], Handler] = {
    ast.VariableSetStmt: _variable_set,  # type: ignore[dict-item]
    ast.VariableShowStmt: _nothing("SHOW"),
    ast.TransactionStmt: _transaction,  # type: ignore[dict-item]
    ast.PrepareStmt: _prepare,  # type: ignore[dict-item]
    ast.ExecuteStmt: _execute,  # type: ignore[dict-item]
    ast.DeallocateStmt: _deallocate,  # type: ignore[dict-item]
    ast.DiscardStmt: _discard,  # type: ignore[dict-item]
    ast.ExplainStmt: _explain,  # type: ignore[dict-item]
    ast.DeclareCursorStmt: _declare_cursor,  # type: ignore[dict-item]
    ast.FetchStmt: _fetch,  # type: ignore[dict-item]
    ast.ClosePortalStmt: _close_cursor,  # type: ignore[dict-item]
    ast.ConstraintsSetStmt: _nothing("SET CONSTRAINTS"),
    ast.CopyStmt: _copy,  # type: ignore[dict-item]
}
