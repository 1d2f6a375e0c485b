"""CQL statement → policy targets ``(action, object, statement_kind)``.

Strategy: tokenize the whole text with CQL's own lexical rules (``--`` and ``//`` line
comments, ``/* */`` block comments, ``'...'`` strings with ``''`` escapes, ``$$...$$``
strings, ``"..."`` quoted identifiers with ``""`` escapes and case kept, unquoted identifiers
lowercased), split it into statements on ``;`` outside strings and comments, and read only
the grammar's fixed prefix of each statement (verb, object kind, name). No regex ever looks
at raw text, so comments and literals cannot hide or forge a verb or an object.

Rules:

* ``SELECT`` → ``read``; ``INSERT`` / ``UPDATE`` / ``DELETE`` → ``write``; ``CREATE`` /
  ``ALTER`` / ``DROP`` / ``TRUNCATE`` / ``GRANT`` / ``REVOKE`` / ``LIST`` → ``admin``;
  ``USE ks`` → ``use`` on ``ks`` (the new keyspace; later statements in the same text are
  resolved against it); ``BEGIN [UNLOGGED|COUNTER] BATCH ... APPLY BATCH`` → one target per
  inner statement (only INSERT/UPDATE/DELETE may appear inside).
* Objects: ``keyspace.table`` for table statements; unqualified names use
  ``current_keyspace``, and with none the keyspace is ``""`` (object ``".table"``), which
  no policy grants, so the engine denies. ``keyspace`` for CREATE/ALTER/DROP KEYSPACE;
  ``role:<name>`` for roles and users; ``keyspace.<name>`` for INDEX, TYPE, FUNCTION,
  AGGREGATE and MATERIALIZED VIEW (an index lives in its table's keyspace; an unnamed index
  is named after its table); TRIGGER → its table. ``CREATE MATERIALIZED VIEW`` also reads
  its base table. ``GRANT``/``REVOKE`` of a permission → admin on the resource and on
  ``role:<grantee>``; of a role → admin on both roles. ``LIST ROLES|USERS|PERMISSIONS`` →
  admin on ``role:<name>`` after ``OF``, else ``role:*``.
* Fail closed: anything unknown, unparseable (unterminated string or comment, missing
  name, a table or keyspace name that is not ``[A-Za-z0-9_]+``, an unterminated batch, a
  non-DML statement inside a batch, empty text) yields ``admin`` on ``"*"`` (kind
  ``"unknown"``), which only a full administrator may do.
"""

from __future__ import annotations

from dataclasses import dataclass

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


class _Unparseable(Exception):
    pass


# -- tokenizer ----------------------------------------------------------------------------------
# Token kinds: "id" (unquoted, lowercased), "qid" (quoted, case kept), "str", "num", "p" (punct).
Token = tuple[str, str]


def tokenize(text: str) -> list[Token]:
    """Split CQL text into tokens; raises ``_Unparseable`` on unterminated constructs."""
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith(("--", "//"), i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise _Unparseable("unterminated comment")
            i = j + 2
        elif c == "'" or c == '"':
            buf: list[str] = []
            i += 1
            while True:
                j = text.find(c, i)
                if j < 0:
                    raise _Unparseable("unterminated string or identifier")
                buf.append(text[i:j])
                if text.startswith(c, j + 1):  # doubled quote = one literal quote
                    buf.append(c)
                    i = j + 2
                    continue
                i = j + 1
                break
            out.append(("str" if c == "'" else "qid", "".join(buf)))
        elif text.startswith("$$", i):
            j = text.find("$$", i + 2)
            if j < 0:
                raise _Unparseable("unterminated $$ string")
            out.append(("str", text[i + 2 : j]))
            i = j + 2
        elif c.isascii() and c.isalpha():
            j = i + 1
            while j < n and text[j] in _NAME_CHARS:
                j += 1
            out.append(("id", text[i:j].lower()))
            i = j
        elif c.isascii() and c.isdigit():
            j = i + 1
            while j < n and (text[j] in _NAME_CHARS or text[j] == "."):
                j += 1
            out.append(("num", text[i:j]))
            i = j
        else:
            out.append(("p", c))
            i += 1
    return out


def _split(tokens: list[Token]) -> list[list[Token]]:
    stmts: list[list[Token]] = [[]]
    for t in tokens:
        if t == ("p", ";"):
            stmts.append([])
        else:
            stmts[-1].append(t)
    return [s for s in stmts if s]


# -- statement parser ---------------------------------------------------------------------------
class _Cursor:
    def __init__(self, toks: list[Token]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self, k: int = 0) -> Token | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

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
        t = self.peek()
        if t is None or t[0] not in ("id", "qid") or not t[1]:
            raise _Unparseable("expected a name")
        self.i += 1
        return t[1]

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
        raise _Unparseable("not a keyspace/table name")
    return name


class _Parser:
    def __init__(self, keyspace: str | None) -> None:
        self.keyspace = keyspace

    def table(self, c: _Cursor) -> str:
        ks, name = c.qualified()
        ks = _schema_name(ks) if ks is not None else (self.keyspace or "")
        return f"{ks}.{_schema_name(name)}"

    def statement(self, toks: list[Token]) -> list[Target]:
        c = _Cursor(toks)
        verb = c.word()
        if verb == "select":
            if not c.find_kw("from"):
                raise _Unparseable("SELECT without FROM")
            return [Target("read", self.table(c), "select")]
        if verb == "insert":
            if not c.kw("into"):
                raise _Unparseable("INSERT without INTO")
            return [Target("write", self.table(c), "insert")]
        if verb == "update":
            return [Target("write", self.table(c), "update")]
        if verb == "delete":
            if not c.find_kw("from"):
                raise _Unparseable("DELETE without FROM")
            return [Target("write", self.table(c), "delete")]
        if verb == "truncate":
            c.kw("table") or c.kw("columnfamily")
            return [Target("admin", self.table(c), "truncate")]
        if verb == "use":
            ks = _schema_name(c.name())
            self.keyspace = ks
            return [Target("use", ks, "use")]
        if verb in ("create", "alter", "drop"):
            return self.ddl(verb, c)
        if verb in ("grant", "revoke"):
            return self.grant(verb, c)
        if verb == "list":
            return self.list_(c)
        raise _Unparseable("unknown statement")

    def ddl(self, verb: str, c: _Cursor) -> list[Target]:
        if verb == "create":
            c.kw("or", "replace")
        custom = verb == "create" and c.kw("custom")
        thing = c.word()
        if thing == "materialized":
            if not c.kw("view"):
                raise _Unparseable("MATERIALIZED without VIEW")
            thing = "materialized_view"
        if thing == "columnfamily":
            thing = "table"
        if custom and thing != "index":
            raise _Unparseable("CUSTOM is only for indexes")
        kind = f"{verb}_{thing}"
        c.kw("if", "not", "exists") or c.kw("if", "exists")
        if thing == "keyspace":
            return [Target("admin", _schema_name(c.name()), kind)]
        if thing in ("table", "type", "function", "aggregate"):
            return [Target("admin", self.table(c), kind)]
        if thing == "materialized_view":
            view = self.table(c)
            targets = [Target("admin", view, kind)]
            if verb == "create":
                if not (c.kw("as", "select") and c.find_kw("from")):
                    raise _Unparseable("view without AS SELECT ... FROM")
                targets.append(Target("read", self.table(c), kind))
            return targets
        if thing in ("role", "user"):
            return [Target("admin", f"role:{c.name()}", kind)]
        if thing == "index" and verb == "drop":
            return [Target("admin", self.table(c), kind)]
        if thing == "index":
            index = None if c.peek() == ("id", "on") else _schema_name(c.name())
            if not c.kw("on"):
                raise _Unparseable("INDEX without ON")
            table = self.table(c)
            ks = table.split(".", 1)[0]
            return [Target("admin", f"{ks}.{index}" if index else table, kind)]
        if thing == "trigger":
            c.name()
            if not c.kw("on"):
                raise _Unparseable("TRIGGER without ON")
            return [Target("admin", self.table(c), kind)]
        raise _Unparseable("unknown schema object")

    def resource(self, c: _Cursor) -> str:
        if c.kw("all", "keyspaces") or c.kw("all", "roles") or c.kw("all", "functions"):
            return ANY_OBJECT
        if c.kw("keyspace"):
            return _schema_name(c.name())
        if c.kw("role"):
            return f"role:{c.name()}"
        c.kw("table")
        return self.table(c)

    def grant(self, verb: str, c: _Cursor) -> list[Target]:
        to_word = "to" if verb == "grant" else "from"
        if c.find_kw("on"):  # GRANT <permission> ON <resource> TO <role>
            resource = self.resource(c)
            if not c.kw(to_word):
                raise _Unparseable(f"{verb.upper()} without {to_word.upper()}")
            return [
                Target("admin", resource, f"{verb}_permission"),
                Target("admin", f"role:{c.name()}", f"{verb}_permission"),
            ]
        c.i = 1  # GRANT <role> TO <role>
        granted = c.name()
        if not c.kw(to_word):
            raise _Unparseable(f"{verb.upper()} without {to_word.upper()}")
        return [
            Target("admin", f"role:{granted}", f"{verb}_role"),
            Target("admin", f"role:{c.name()}", f"{verb}_role"),
        ]

    def list_(self, c: _Cursor) -> list[Target]:
        what = c.word()
        if what == "all":
            what = c.word()
        if what not in ("roles", "users", "permissions", "permission"):
            raise _Unparseable("unknown LIST")
        kind = f"list_{what}"
        if c.find_kw("of"):
            return [Target("admin", f"role:{c.name()}", kind)]
        return [Target("admin", "role:*", kind)]

    def batch(self, stmts: list[list[Token]], start: int) -> tuple[list[Target], int]:
        """Parse ``BEGIN ... BATCH`` at ``stmts[start]``; return targets and the next index."""
        c = _Cursor(stmts[start])
        c.kw("begin")
        c.kw("unlogged") or c.kw("counter")
        if not c.kw("batch"):
            raise _Unparseable("BEGIN without BATCH")
        if c.kw("using"):  # USING TIMESTAMP <n>
            c.i += 2
        inner = [stmts[start][c.i :], *stmts[start + 1 :]]
        targets: list[Target] = []
        for k, toks in enumerate(inner):
            done = toks[-2:] == [("id", "apply"), ("id", "batch")]
            body = toks[:-2] if done else toks
            if body:
                if body[0] not in (("id", "insert"), ("id", "update"), ("id", "delete")):
                    raise _Unparseable("only INSERT, UPDATE and DELETE may be batched")
                targets.extend(self.statement(body))
            if done:
                if not targets:
                    raise _Unparseable("empty batch")
                return targets, start + 1 + k
        raise _Unparseable("BATCH without APPLY BATCH")


def classify_with_keyspace(
    statement: str, current_keyspace: str | None
) -> tuple[list[Target], str | None]:
    """Like :func:`classify`, also returning the keyspace in effect after the text (USE)."""
    parser = _Parser(current_keyspace)
    try:
        stmts = _split(tokenize(statement))
        if not stmts:
            return [UNKNOWN], current_keyspace
        targets: list[Target] = []
        i = 0
        while i < len(stmts):
            if stmts[i][0] == ("id", "begin"):
                found, i = parser.batch(stmts, i)
                targets.extend(found)
            else:
                targets.extend(parser.statement(stmts[i]))
            i += 1
        return targets, parser.keyspace
    except _Unparseable:
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
