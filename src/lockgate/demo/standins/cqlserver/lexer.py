"""The fake node's CQL lexer, written from apache/cassandra ``src/antlr/Lexer.g``.

It shares nothing with Lockgate's classifier on purpose: the node is the oracle the
gateway is judged against, so it must lex exactly as a Cassandra node does, not as the
gateway does. Each alternative below names the Lexer.g rule it follows:

* ``WS``: ``(' ' | '\\t' | '\\n' | '\\r')+`` only; form feed, vertical tab and Unicode
  spaces are not whitespace to Cassandra and fail to lex.
* ``COMMENT``: ``('--' | '//') .* ('\\n'|'\\r')``, the shortest run, so a line comment ends
  at the first CR *or* LF, and a line comment with neither before the end of the text is
  a lexer error (Cassandra: "mismatched character '<EOF>'").
* ``MULTILINE_COMMENT``: ``'/*' .* '*/'``, shortest run, not nested; unterminated is an error.
* ``STRING_LITERAL``: ``'...'`` with ``''`` for a quote, or ``$$...$$`` (up to the first
  ``$$``, no escapes).
* ``QUOTED_NAME``: ``"..."`` with ``""`` for a quote, at least one character;
  ``EMPTY_QUOTED_NAME`` (``""``) is its own token, which no identifier rule accepts.
* ``UUID``, ``HEXNUMBER`` (``0x...``), ``DURATION`` (``12h30m``, ISO 8601 forms),
  ``FLOAT`` / ``INTEGER`` (a leading ``-`` belongs to the number; ``1..2`` is ``1`` RANGE
  ``2``), ``K_NEGATIVE_NAN`` / ``K_NEGATIVE_INFINITY``, ``IDENT`` (ASCII letter first:
  ``_x`` does not lex), ``QMARK``, and the literal punctuation of Parser.g.

Anything else (``#``, a lone ``$``, an unterminated quote or comment, NUL...) is a lexer
error, which Cassandra reports as a SyntaxException (0x2000); so does this module.
Keywords are not told apart from identifiers here: the parser compares ``id`` tokens
case-insensitively, as the ``K_*`` rules do.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import re

from .wire import SYNTAX_ERROR, CqlError

Token = tuple[str, str]  # (kind, value); str/qid values are already unescaped

_UNIT = r"(?i:mo|ms|us|\u00b5s|ns|y|w|d|h|m|s)"
_ISO_TIME = r"T(?:[0-9]+H(?:[0-9]+M)?(?:[0-9]+S)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S)"
_ISO_PERIOD = r"P(?:[0-9]+Y(?:[0-9]+M)?(?:[0-9]+D)?|[0-9]+M(?:[0-9]+D)?|[0-9]+D)"
_NOT_IDENT = r"(?![A-Za-z0-9_])"

_TOKEN = re.compile(
    rf"""
    (?P<ws>[ \t\n\r]+)
  | (?P<comment>(?:--|//)[^\n\r]*[\n\r]|/\*.*?\*/)
  | (?P<badcomment>--|//|/\*)
  | '(?P<str>(?:[^']|'')*+)'
  | \$\$(?P<pgstr>.*?)\$\$
  | "(?P<qid>(?:[^"]|"")*+)"
  | (?P<uuid>[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{12}})
  | (?P<blob>0[xX][0-9a-fA-F]*)
  | (?P<duration>-?(?:[0-9]+{_UNIT})+
        |-?P[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}{_NOT_IDENT}
        |-?P{_ISO_TIME}{_NOT_IDENT}
        |-?P[0-9]+W{_NOT_IDENT}
        |-?{_ISO_PERIOD}(?:{_ISO_TIME})?{_NOT_IDENT})
  | (?P<num>-?[0-9]+(?:\.(?!\.)[0-9]*)?(?:[eE][+-]?[0-9]+)?|(?i:-(?:nan|infinity)){_NOT_IDENT})
  | (?P<id>[A-Za-z][A-Za-z0-9_]*)
  | (?P<mark>\?)
  | (?P<op>\.\.|<=|>=|!=|[(),;.=*<>{{}}\[\]:+\-/%])
    """,
    re.VERBOSE | re.DOTALL,
)


def lex_error(text: str, pos: int, what: str) -> CqlError:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1)
    return CqlError(SYNTAX_ERROR, f"line {line}:{col} {what}")


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text`` with whitespace and comments dropped (ANTLR's HIDDEN channel)."""
    out: list[Token] = []
    pos = 0
    end = len(text)
    match = _TOKEN.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            raise lex_error(text, pos, f"no viable alternative at character {text[pos]!r}")
        kind = m.lastgroup
        pos = m.end()
        if kind == "ws" or kind == "comment":
            continue
        if kind == "badcomment":
            raise lex_error(text, m.start(), "mismatched character '<EOF>' (unterminated comment)")
        value = m.group(kind or "")
        if kind == "str":
            value = value.replace("''", "'")
        elif kind == "pgstr":
            kind = "str"
        elif kind == "qid":
            if not value:
                kind = "eqid"  # EMPTY_QUOTED_NAME
            value = value.replace('""', '"')
        out.append((kind or "", value))
    return out
