"""The portable SQL subset every store writes, and its translation to PostgreSQL.

Stores write one text for both backends, in SQLite's flavour: ``?`` placeholders,
``INSERT ... ON CONFLICT (...) DO NOTHING / DO UPDATE SET c = excluded.c``, the column types
INTEGER, REAL, TEXT and BLOB, no booleans, no ``AUTOINCREMENT``, no PRAGMAs. PostgreSQL gets
``%s`` placeholders (a literal ``%`` doubled, as psycopg expects) and, in DDL, BIGINT,
DOUBLE PRECISION and BYTEA. Write types in upper case and names in lower case: only an upper
case INTEGER/REAL/BLOB after a name is a type. Quoted text (``'...'``, ``"..."``) is never
touched.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable

# A quoted literal or identifier, or one character of anything else.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|[^'\"]+|['\"]")
_DDL_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}
# A type is upper case and follows a column name (so a column called ``blob`` stays one).
_DDL_TYPE_WORD = re.compile(r"(?<=[\w\"])(\s+)(INTEGER|REAL|BLOB)\b")


def _outside_quotes(text: str, change: Callable[[str], str]) -> str:
    """``text`` with ``change`` applied to everything but its quoted parts."""
    return "".join(
        token if token[0] in "'\"" and len(token) > 1 else change(token)
        for token in _TOKEN.findall(text)
    )


def to_postgres_params(sql: str) -> str:
    """``?`` -> ``%s`` and ``%`` -> ``%%`` (psycopg's placeholder style); inside quotes
    only ``%`` is doubled, which psycopg reads back as one."""
    return _outside_quotes(sql.replace("%", "%%"), lambda part: part.replace("?", "%s"))


def to_postgres_ddl(ddl: str) -> str:
    """SQLite column types to PostgreSQL's, outside quotes."""
    return _outside_quotes(
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


__all__ = ["split_statements", "to_postgres_ddl", "to_postgres_params"]
