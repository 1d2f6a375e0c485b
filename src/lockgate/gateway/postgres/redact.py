"""Password redaction of PostgreSQL statement texts before an audit record or a log line.

Rule (:func:`redact`): a text is *sensitive* when it mentions ``passw``, ``pwd``,
``secret`` or ``://`` anywhere (any case: the PASSWORD role option, a ``password=`` in a
connection string, ``postgresql://user:pw@host`` in a dblink call, a comment) or holds
a ``CREATE|ALTER ROLE|USER|GROUP|SERVER|SUBSCRIPTION`` statement (or ``... USER MAPPING``),
whose options may carry secrets under other names. In a sensitive text every string
literal (``'...'``, ``E'...'``, ``U&'...'``, ``$tag$...$tag$``, bit and hex strings)
becomes ``'***'`` and every comment a space; the rest is kept as written. Positions come
from PostgreSQL's own scanner, never from a pattern over the raw text, so a quote inside a
comment or a dollar-quoted body cannot shift what is hidden. A text the scanner cannot read
is withheld whole when it could be sensitive.
"""

from __future__ import annotations

import itertools

from pglast import parser

__all__ = ["MASK", "redact"]

MASK = "'***'"
_LITERALS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST"})
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_VERBS = frozenset({"CREATE", "ALTER"})
_SECRET_HOLDERS = frozenset({"ROLE", "USER", "GROUP", "SERVER", "SUBSCRIPTION", "MAPPING"})
_SECRET_WORDS = ("passw", "pwd", "secret", "://")
_HINTS = (*_SECRET_WORDS, "role", "user", "group", "server", "subscription", "mapping")


def redact(sql: str) -> str:
    """``sql`` with string literals and comments hidden when it may hold a secret."""
    lowered = sql.lower()
    if not any(hint in lowered for hint in _HINTS):
        return sql  # cannot be sensitive: skip the scanner
    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        size = len(sql.encode("utf-8", "surrogatepass"))
        return f"<statement withheld: {size} bytes, may hold a password>"
    names = [t.name for t in tokens if t.name not in _COMMENTS]
    role_statement = any(
        verb in _VERBS and obj in _SECRET_HOLDERS for verb, obj in itertools.pairwise(names)
    ) or any(a == "USER" and b == "MAPPING" for a, b in itertools.pairwise(names))
    if not role_statement and not any(word in lowered for word in _SECRET_WORDS):
        return sql
    pieces: list[str] = []
    pos = 0
    for token in tokens:
        start, end = token.start, token.end + 1
        pieces.append(sql[pos:start])
        if token.name in _LITERALS:
            pieces.append(MASK)
        elif token.name in _COMMENTS:
            pieces.append(" ")
        else:
            pieces.append(sql[start:end])
        pos = end
    pieces.append(sql[pos:])
    return "".join(pieces)
