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

# A quoted literal or identifier, or one character of anything else.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|[^'\"]+|['\"]")
_DDL_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}
# A type is upper case and follows a column name (so a column called ``blob`` stays one).
_DDL_TYPE_WORD = re.compile(r"(?<=[\w\"])(\s+)(INTEGER|REAL|BLOB)\b")


def to_postgres_params(sql: str) -> str:
    """``?`` -> ``%s`` and ``%`` -> ``%%`` outside quotes (psycopg's placeholder style)."""
    out: list[str] = []
    for token in _TOKEN.findall(sql):
        if token[0] in "'\"" and len(token) > 1:
            out.append(token.replace("%", "%%"))
        else:
            out.append(token.replace("%", "%%").replace("?", "%s"))
    return "".join(out)


def to_postgres_ddl(ddl: str) -> str:
    """SQLite column types to PostgreSQL's, outside quotes."""
    out: list[str] = []
    for token in _TOKEN.findall(ddl):
        if token[0] in "'\"" and len(token) > 1:
            out.append(token)
        else:
            out.append(_DDL_TYPE_WORD.sub(lambda m: m.group(1) + _DDL_TYPES[m.group(2)], token))
    return "".join(out)


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
