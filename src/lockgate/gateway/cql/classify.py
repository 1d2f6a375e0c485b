"""CQL statement → policy targets ``(action, object, statement_kind)``.

Strategy: lex the whole text with Cassandra's own lexical rules (:mod:`.lexer`, written from
``Lexer.g``), check it has the shape Cassandra's ``query`` rule accepts — one statement,
optionally followed by ``;`` — and read the grammar's fixed prefix of that statement (verb,
object kind, name). No regex ever looks at raw text, so comments and literals cannot hide
or forge a verb or an object, and a text the node would read as two statements is refused.

Rules:

* ``SELECT`` → ``read``; ``INSERT`` / ``UPDATE`` / ``DELETE`` → ``write``, and also
  ``read`` when conditional (``IF ...``: a failed condition returns the row); ``CREATE`` /
  ``ALTER`` / ``DROP`` / ``TRUNCATE`` / ``GRANT`` / ``REVOKE`` / ``LIST`` → ``admin``;
  ``USE ks`` → ``use`` on ``ks`` (the keyspace in effect after the text).
  ``BEGIN [UNLOGGED|COUNTER] BATCH [USING ...] ... APPLY BATCH`` → one target per child;
  children are INSERT, UPDATE or DELETE, each followed by at most one ``;`` (Parser.g
  ``batchStatement``); the three verbs are reserved words, so each starts a child whether
  or not a ``;`` precedes it. Only ``;`` may follow ``APPLY BATCH``.
* Objects: ``keyspace.table`` for table statements; unqualified names use
  ``current_keyspace``, and with none the keyspace is ``""`` (object ``".table"``), which
  no policy grants, so the engine denies. ``keyspace`` for CREATE/ALTER/DROP KEYSPACE
  (or SCHEMA); ``role:<name>`` for roles and users; ``keyspace.<name>`` for INDEX, TYPE,
  FUNCTION, AGGREGATE and MATERIALIZED VIEW (an index lives in its table's keyspace; an
  unnamed index is named after its table); TRIGGER → its table. ``CREATE INDEX`` is also
  admin on its table and ``CREATE MATERIALIZED VIEW`` reads and is admin on its base table
  (Cassandra requires ALTER on that table for both), ``CREATE TABLE ... LIKE`` reads its
  source table.
  ``GRANT``/``REVOKE`` of a permission → admin on the resource and on ``role:<grantee>``;
  of a role → admin on both roles. ``LIST ROLES|USERS|PERMISSIONS`` → admin on
  ``role:<name>`` after ``OF``, else ``role:*``.
* Names follow Parser.g: unquoted names are lowercased (``CREATE/ALTER/DROP USER`` keeps
  the case as written, as Cassandra does), quoted names keep their case, a reserved
  keyword is never a name, and a keyspace or table name must be ``[A-Za-z0-9_]+``.
* Fail closed: a lexer error, more than one statement in a text, an unknown statement,
  a missing name, an unterminated or empty batch, a non-DML batch child, text after
  ``APPLY BATCH`` or an empty text yields ``admin`` on ``"*"`` (kind ``"unknown"``), which
  only a full administrator may do.
"""

from __future__ import annotations

from dataclasses import dataclass

from .lexer import RESERVED, CqlSyntaxError, Token, lex
from .redact import redact_secrets

__all__ = [
    "ANY_OBJECT",
    "UNKNOWN",
    "CqlSyntaxError",
    "Target",
    "Token",
    "classify",
    "classify_with_keyspace",
    "is_system_metadata_read",
    "redact_secrets",
    "tokenize",
]

ANY_OBJECT = "*"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")

# System tables every driver reads for metadata; never system_auth.
_SYSTEM_METADATA_TABLES = frozenset({"system.local", "system.peers", "system.peers_v2"})
_SYSTEM_METADATA_KEYSPACES = ("system_schema.", "system_virtual_schema.")


@dataclass(frozen=True, slots=True)
class Target:
    """One thing a statement does: ``action`` (read/write/admin/use) on ``object``."""

    action: str
    object: str
    statement_kind: str


UNKNOWN = Target("admin", ANY_OBJECT, "unknown")


_SEMI: Token = ("p", ";")
#: Statements a batch may hold (Parser.g ``batchStatementObjective``); all three verbs are
#: reserved words, so each occurrence starts the next child.
_BATCH_CHILD_VERBS = frozenset({("id", "insert"), ("id", "update"), ("id", "delete")})
#: Reserved words that start a statement (or a batch's end) and never occur inside a
#: SELECT, INSERT, UPDATE or DELETE: one of them there means a second statement.
_STATEMENT_WORDS = frozenset(
    ("id", w)
    for w in (
        "select", "insert", "update", "delete", "begin", "apply", "batch", "use",
        "truncate", "create", "alter", "drop", "grant", "revoke", "describe",
    )
)  # fmt: skip
_DML_VERBS = frozenset({"select", "insert", "update", "delete"})
_IF: Token = ("id", "if")


def tokenize(text: str) -> list[Token]:
    """CQL tokens of ``text`` (:func:`.lexer.lex`); ``CqlSyntaxError`` where Cassandra errs too."""
    return lex(text)


# -- statement parser ---------------------------------------------------------------------------
class _Cursor:
    def __init__(self, toks: list[Token]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self, k: int = 0) -> Token | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def at_end(self) -> bool:
        return self.i >= len(self.toks)

    def kw(self, *words: str) -> bool:
        """Consume the unquoted keywords ``words`` if they come next."""
        for k, w in enumerate(words):
            if self.peek(k) != ("id", w):
                return False
        self.i += len(words)
        return True

    def word(self) -> str | None:
        t = self.peek()
        if t is not None and t[0] == "id":
            self.i += 1
            return t[1]
        return None

    def name(self) -> str:
        """Parser.g ``ident``: IDENT or unreserved keyword (lowercased), or QUOTED_NAME."""
        t = self.peek()
        if t is None or not t[1] or not (t[0] == "qid" or (t[0] == "id" and t[1] not in RESERVED)):
            raise CqlSyntaxError("expected a name")
        self.i += 1
        return t[1]

    def role_name(self) -> str:
        """Parser.g ``roleName``: a name, or a STRING_LITERAL (case kept)."""
        t = self.peek()
        if t is not None and t[0] == "str" and t[1]:
            self.i += 1
            return t[1]
        return self.name()

    def qualified(self) -> tuple[str | None, str]:
        first = self.name()
        if self.peek() == ("p", "."):
            self.i += 1
            return first, self.name()
        return None, first

    def find_kw(self, word: str) -> bool:
        """Advance past the first unquoted ``word`` outside parentheses."""
        depth = 0
        while (t := self.peek()) is not None:
            self.i += 1
            if t == ("p", "("):
                depth += 1
            elif t == ("p", ")"):
                depth -= 1
            elif depth == 0 and t == ("id", word):
                return True
        return False


def _schema_name(name: str) -> str:
    if not name or not set(name) <= _NAME_CHARS:
        raise CqlSyntaxError("not a keyspace/table name")
    return name


class _Parser:
    def __init__(self, text: str, keyspace: str | None) -> None:
        self.text = text
        self.keyspace = keyspace

    def query(self, tokens: list[Token]) -> list[Target]:
        """Parser.g ``query: cqlStatement (';')* EOF`` — exactly one statement."""
        end = len(tokens)
        while end and tokens[end - 1] == _SEMI:
            end -= 1
        if not end:
            raise CqlSyntaxError("no statement")
        body = tokens if end == len(tokens) else tokens[:end]
        if body[0] == ("id", "begin"):
            return self.batch(body)
        if _SEMI in body:
            raise CqlSyntaxError("more than one statement in one text")
        return self.statement(body)

    def table(self, c: _Cursor) -> str:
        ks, name = c.qualified()
        ks = _schema_name(ks) if ks is not None else (self.keyspace or "")
        return f"{ks}.{_schema_name(name)}"

    def statement(self, toks: list[Token]) -> list[Target]:
        c = _Cursor(toks)
        verb = c.word()
        if verb in _DML_VERBS and not _STATEMENT_WORDS.isdisjoint(toks[1:]):
            raise CqlSyntaxError("a second statement inside a data statement")
        if verb == "select":
            if not c.find_kw("from"):
                raise CqlSyntaxError("SELECT without FROM")
            return [Target("read", self.table(c), "select")]
        if verb == "insert":
            if not c.kw("into"):
                raise CqlSyntaxError("INSERT without INTO")
            return self.modification("insert", self.table(c), toks)
        if verb == "update":
            return self.modification("update", self.table(c), toks)
        if verb == "delete":
            if not c.find_kw("from"):
                raise CqlSyntaxError("DELETE without FROM")
            return self.modification("delete", self.table(c), toks)
        if verb == "truncate":
            c.kw("columnfamily") or c.kw("table")
            return [Target("admin", self.table(c), "truncate")]
        if verb == "use":
            ks = _schema_name(c.name())
            if not c.at_end():
                raise CqlSyntaxError("USE takes one keyspace name")
            self.keyspace = ks
            return [Target("use", ks, "use")]
        if verb in ("create", "alter", "drop"):
            return self.ddl(verb, c)
        if verb in ("grant", "revoke"):
            return self.grant(verb, c)
        if verb == "list":
            return self.list_(c)
        raise CqlSyntaxError("unknown statement")

    @staticmethod
    def modification(kind: str, table: str, toks: list[Token]) -> list[Target]:
        """A write; a conditional one (``IF ...``, a lightweight transaction) reads too.

        A failed condition answers with the row's current values, so Cassandra requires
        SELECT as well as MODIFY for it (``ModificationStatement.checkAccess``). ``if`` is
        reserved, so an unquoted ``if`` token in an INSERT, UPDATE or DELETE is its condition.
        """
        if _IF in toks:
            return [Target("write", table, kind), Target("read", table, kind)]
        return [Target("write", table, kind)]

    def ddl(self, verb: str, c: _Cursor) -> list[Target]:
        if verb == "create":
            c.kw("or", "replace")
        custom = verb == "create" and c.kw("custom")
        thing = c.word()
        if thing == "materialized":
            if not c.kw("view"):
                raise CqlSyntaxError("MATERIALIZED without VIEW")
            thing = "materialized_view"
        # Lexer.g: K_COLUMNFAMILY is also spelt TABLE, K_KEYSPACE also SCHEMA.
        thing = {"columnfamily": "table", "schema": "keyspace"}.get(thing or "", thing)
        if custom and thing != "index":
            raise CqlSyntaxError("CUSTOM is only for indexes")
        kind = f"{verb}_{thing}"
        c.kw("if", "not", "exists") or c.kw("if", "exists")
        if thing == "keyspace":
            return [Target("admin", _schema_name(c.name()), kind)]
        if thing == "table":
            targets = [Target("admin", self.table(c), kind)]
            if verb == "create" and c.kw("like"):  # CREATE TABLE new LIKE source
                targets.append(Target("read", self.table(c), kind))
            return targets
        if thing in ("type", "function", "aggregate"):
            return [Target("admin", self.table(c), kind)]
        if thing == "materialized_view":
            view = self.table(c)
            targets = [Target("admin", view, kind)]
            if verb == "create":
                if not (c.kw("as", "select") and c.find_kw("from")):
                    raise CqlSyntaxError("view without AS SELECT ... FROM")
                base = self.table(c)
                # The view serves the base's rows, and Cassandra requires ALTER on the base
                # to create one (CreateViewStatement.authorize).
                targets += [Target("read", base, kind), Target("admin", base, kind)]
            return targets
        if thing == "user":
            return [Target("admin", f"role:{self.user_name(c)}", kind)]
        if thing == "role":
            return [Target("admin", f"role:{c.role_name()}", kind)]
        if thing == "index" and verb == "drop":
            return [Target("admin", self.table(c), kind)]
        if thing == "index":
            index = None if c.peek() == ("id", "on") else _schema_name(c.name())
            if not c.kw("on"):
                raise CqlSyntaxError("INDEX without ON")
            table = self.table(c)
            if index is None:
                return [Target("admin", table, kind)]
            # Cassandra requires ALTER on the indexed table (CreateIndexStatement.authorize):
            # a grant on an index name must not let a principal index any table.
            return [Target("admin", f"{table.split('.', 1)[0]}.{index}", kind),
                    Target("admin", table, kind)]  # fmt: skip
        if thing == "trigger":
            c.name()
            if not c.kw("on"):
                raise CqlSyntaxError("TRIGGER without ON")
            return [Target("admin", self.table(c), kind)]
        raise CqlSyntaxError("unknown schema object")

    def user_name(self, c: _Cursor) -> str:
        """Parser.g ``username``: IDENT with its case as written, or a STRING_LITERAL."""
        t = c.peek()
        if t is None or not t[1] or t[0] not in ("id", "str"):
            raise CqlSyntaxError("expected a user name")
        if t[0] == "id":
            if t[1] in RESERVED:
                raise CqlSyntaxError("expected a user name")
            # The token list holds the lowercased word; Cassandra keeps the case of a user
            # name (``name.setName($u.text, true)``), so read it back from the text.
            spans: list[tuple[int, int]] = []
            lex(self.text, spans)
            start, end = spans[c.i]
            c.i += 1
            return self.text[start:end]
        c.i += 1
        return t[1]

    def resource(self, c: _Cursor) -> str:
        if c.kw("all", "keyspaces") or c.kw("all", "roles") or c.kw("all", "mbeans"):
            return ANY_OBJECT
        if c.kw("all", "functions") or c.kw("all", "tables"):
            if c.kw("in", "keyspace"):
                return _schema_name(c.name())
            return ANY_OBJECT
        if c.kw("keyspace"):
            return _schema_name(c.name())
        if c.kw("role"):
            return f"role:{c.role_name()}"
        if c.kw("mbean") or c.kw("mbeans"):
            c.i += 1  # the MBean name (a string): JMX is cluster-wide
            return ANY_OBJECT
        if c.kw("function"):  # FUNCTION ks.f(<argument types>)
            target = self.table(c)
            if c.peek() == ("p", "("):  # types nest with <>, never with ()
                while (t := c.peek()) is not None and t != ("p", ")"):
                    c.i += 1
                if t is None:
                    raise CqlSyntaxError("unterminated argument types")
                c.i += 1
            return target
        c.kw("columnfamily") or c.kw("table")
        return self.table(c)

    def grant(self, verb: str, c: _Cursor) -> list[Target]:
        to_word = "to" if verb == "grant" else "from"
        if c.find_kw("on"):  # GRANT <permission> ON <resource> TO <role>
            resource = self.resource(c)
            if not c.kw(to_word):
                raise CqlSyntaxError(f"{verb.upper()} without {to_word.upper()}")
            return [
                Target("admin", resource, f"{verb}_permission"),
                Target("admin", f"role:{c.role_name()}", f"{verb}_permission"),
            ]
        c.i = 1  # GRANT <role> TO <role>
        granted = c.role_name()
        if not c.kw(to_word):
            raise CqlSyntaxError(f"{verb.upper()} without {to_word.upper()}")
        return [
            Target("admin", f"role:{granted}", f"{verb}_role"),
            Target("admin", f"role:{c.role_name()}", f"{verb}_role"),
        ]

    def list_(self, c: _Cursor) -> list[Target]:
        what = c.word()
        if what == "all":
            what = c.word()
        if what not in ("roles", "users", "superusers", "permissions", "permission"):
            raise CqlSyntaxError("unknown LIST")
        kind = f"list_{what}"
        if c.find_kw("of"):
            return [Target("admin", f"role:{c.role_name()}", kind)]
        return [Target("admin", "role:*", kind)]

    def batch(self, body: list[Token]) -> list[Target]:
        """Parser.g ``batchStatement``: the header, children, ``APPLY BATCH`` and nothing else.

        ``body`` has no trailing ``;``. Children are ``(batchStatementObjective ';'?)*``: an
        INSERT, UPDATE or DELETE, each followed by at most one ``;``.
        """
        c = _Cursor(body)
        c.kw("begin")
        c.kw("unlogged") or c.kw("counter")
        if not c.kw("batch"):
            raise CqlSyntaxError("BEGIN without BATCH")
        if c.kw("using"):
            self.using_clause(c)
        if body[-2:] != [("id", "apply"), ("id", "batch")]:
            raise CqlSyntaxError("a batch must end with APPLY BATCH")
        end = len(body) - 2
        if ("id", "apply") in body[c.i : end]:
            raise CqlSyntaxError("text after APPLY BATCH")
        targets: list[Target] = []
        start = c.i
        while start < end:
            if body[start] not in _BATCH_CHILD_VERBS:
                raise CqlSyntaxError("only INSERT, UPDATE and DELETE may be batched")
            stop = start + 1
            while stop < end and body[stop] not in _BATCH_CHILD_VERBS:
                stop += 1
            child = body[start:stop]
            if child[-1] == _SEMI:
                child = child[:-1]
            if _SEMI in child:  # ';' only ever ends a child, and only one of them
                raise CqlSyntaxError("misplaced ';' in a batch")
            targets.extend(self.statement(child))
            start = stop
        if not targets:
            raise CqlSyntaxError("empty batch")
        return targets

    @staticmethod
    def using_clause(c: _Cursor) -> None:
        """``USING (TIMESTAMP|TTL) intValue (AND ...)*``; intValue is INTEGER or a marker."""
        while True:
            if not (c.kw("timestamp") or c.kw("ttl")):
                raise CqlSyntaxError("USING without TIMESTAMP or TTL")
            t = c.peek()
            if t is not None and (t[0] == "int" or t == ("p", "?")):
                c.i += 1
            elif t == ("p", ":"):
                c.i += 1
                c.name()
            else:
                raise CqlSyntaxError("USING needs an integer or a bind marker")
            if not c.kw("and"):
                return


def classify_with_keyspace(
    statement: str, current_keyspace: str | None
) -> tuple[list[Target], str | None]:
    """Like :func:`classify`, also returning the keyspace in effect after the text (USE)."""
    parser = _Parser(statement, current_keyspace)
    try:
        return parser.query(lex(statement)), parser.keyspace
    except CqlSyntaxError:
        return [UNKNOWN], current_keyspace


def classify(statement: str, current_keyspace: str | None) -> list[Target]:
    """Every target the CQL ``statement`` text touches (fail closed: see module docstring)."""
    return classify_with_keyspace(statement, current_keyspace)[0]


def is_system_metadata_read(target: Target) -> bool:
    """True for reads of the tables drivers query for cluster/schema metadata."""
    if target.action != "read":
        return False
    obj = target.object
    return obj in _SYSTEM_METADATA_TABLES or obj.startswith(_SYSTEM_METADATA_KEYSPACES)
