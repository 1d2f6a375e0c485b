"""The portable SQL subset every store writes, and its translation to PostgreSQL.

Stores write one text for both backends, in SQLite's flavour: ``?`` placeholders,
``INSERT ... ON CONFLICT (...) DO NOTHING / DO UPDATE SET c = excluded.c``, the column types
INTEGER, REAL, TEXT and BLOB, no booleans, no ``AUTOINCREMENT``, no PRAGMAs. PostgreSQL gets
``%s`` placeholders (every literal ``%`` doubled, as psycopg expects: it reads ``%`` even
inside quotes) and, in DDL, BIGINT, DOUBLE PRECISION and BYTEA. Write types in upper case and
names in lower case: only an upper case INTEGER/REAL/BLOB after a name is a type.

The text is read the way PostgreSQL's lexer reads it, so a ``?`` is a placeholder only in
code: never inside ``'...'`` (``''`` escaped), ``E'...'`` (backslash escapes too),
``$tag$...$tag$``, ``"identifiers"``, ``-- comments`` or ``/* comments */`` (nested, as
PostgreSQL nests them). Text it cannot place (an unterminated quote or comment) raises
:class:`UnplaceableSQL` rather than guessing.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator

_DDL_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}
# A type is upper case and follows a column name (so a column called ``blob`` stays one).
_DDL_TYPE_WORD = re.compile(r"(?<=[\w\"])(\s+)(INTEGER|REAL|BLOB)\b")
# Where something that is not code may start: a quote, a comment, a dollar quote.
_SPECIAL = re.compile(r"['\"$]|--|/\*")
# PostgreSQL's dollar-quote tag: a letter, '_' or any non-ASCII character first, digits after.
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_STANDARD_STRING = re.compile(r"'(?:[^']|'')*'")
_ESCAPE_STRING = re.compile(r"'(?:[^'\\]|''|\\.)*'", re.DOTALL)
_IDENTIFIER = re.compile(r'"(?:[^"]|"")*"')
_NESTED_COMMENT = re.compile(r"/\*|\*/")


class UnplaceableSQL(ValueError):
    """A statement text the translator cannot read as PostgreSQL would (a code error)."""


def _pieces(sql: str) -> Iterator[tuple[bool, str]]:
    """``sql`` cut into ``(is_code, text)`` pieces; the texts joined give ``sql`` back."""
    code_start = pos = 0
    while (found := _SPECIAL.search(sql, pos)) is not None:
        start = found.start()
        end = _end_of_special(sql, start)
        if end is None:  # a '$' that opens no dollar quote (``a$b``, ``$1``): code
            pos = start + 1
            continue
        if start > code_start:
            yield True, sql[code_start:start]
        yield False, sql[start:end]
        code_start = pos = end
    if code_start < len(sql):
        yield True, sql[code_start:]


def _end_of_special(sql: str, start: int) -> int | None:
    """Where the quote or comment starting at ``start`` ends (None: ``$`` is code)."""
    lead = sql[start]
    if lead == "'":
        escape = start > 0 and sql[start - 1] in "eE" and not _word_before(sql, start - 1)
        pattern = _ESCAPE_STRING if escape else _STANDARD_STRING
        return _match_end(pattern, sql, start, "string literal")
    if lead == '"':
        return _match_end(_IDENTIFIER, sql, start, "quoted identifier")
    if lead == "$":
        tag = _DOLLAR_TAG.match(sql, start)
        if tag is None or _word_before(sql, start):
            return None
        close = sql.find(tag.group(), tag.end())
        if close < 0:
            raise UnplaceableSQL(f"unterminated dollar quote {tag.group()} in SQL")
        return close + len(tag.group())
    if sql.startswith("--", start):
        newline = sql.find("\n", start)
        return len(sql) if newline < 0 else newline + 1
    return _end_of_block_comment(sql, start)


def _word_before(sql: str, index: int) -> bool:
    """Whether ``sql[index]`` continues an identifier (so it starts no token of its own)."""
    return index > 0 and (sql[index - 1].isalnum() or sql[index - 1] in "_$")


def _match_end(pattern: re.Pattern[str], sql: str, start: int, what: str) -> int:
    match = pattern.match(sql, start)
    if match is None:
        raise UnplaceableSQL(f"unterminated {what} in SQL")
    return match.end()


def _end_of_block_comment(sql: str, start: int) -> int:
    depth = 0
    for mark in _NESTED_COMMENT.finditer(sql, start):
        depth += 1 if mark.group() == "/*" else -1
        if depth == 0:
            return mark.end()
    raise UnplaceableSQL("unterminated /* comment */ in SQL")


def _in_code(text: str, change: Callable[[str], str]) -> str:
    """``text`` with ``change`` applied to its code only (not to quotes or comments)."""
    return "".join(change(piece) if is_code else piece for is_code, piece in _pieces(text))


def to_postgres_params(sql: str) -> str:
    """``?`` -> ``%s`` in code, and every ``%`` -> ``%%`` (psycopg's placeholder style;
    psycopg reads ``%`` everywhere, quotes included, and turns ``%%`` back into one)."""
    return _in_code(sql.replace("%", "%%"), lambda part: part.replace("?", "%s"))


def to_postgres_ddl(ddl: str) -> str:
    """SQLite column types to PostgreSQL's, in code only."""
    return _in_code(
        ddl, lambda part: _DDL_TYPE_WORD.sub(lambda m: m.group(1) + _DDL_TYPES[m.group(2)], part)
    )


def split_statements(script: str) -> list[str]:
    """A script cut into its statements (``;`` inside quotes or a trigger body kept):
    drivers run one statement per call."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            text = pending.strip().rstrip(";").strip()
            if text and not _only_comments(text):
                statements.append(text)
            pending = ""
    rest = pending.rstrip(";").strip()
    if rest and not _only_comments(rest):
        statements.append(rest)
    return statements


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())


__all__ = ["UnplaceableSQL", "split_statements", "to_postgres_ddl", "to_postgres_params"]
