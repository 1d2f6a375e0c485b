"""CQL lexer: Cassandra's ``src/antlr/Lexer.g`` as one ordered table of token rules.

Every token the grammar has, with its exact edges, and nothing else: a character no rule
places, or an unterminated construct, raises :class:`CqlSyntaxError` (Cassandra reports a
lexer error for those and refuses the whole text, so refusing is parity, never a guess).

Token kinds (``Token = (kind, value)``):

* ``id``  — IDENT and every keyword, lowercased (the parser lowercases unquoted names)
* ``qid`` — QUOTED_NAME with ``""`` unescaped and case kept; EMPTY_QUOTED_NAME is ``""``
* ``str`` — STRING_LITERAL, ``'...'`` with ``''`` unescaped or ``$$...$$`` verbatim
* ``int`` / ``float`` / ``bool`` / ``duration`` / ``uuid`` / ``hex`` — the constants
  (``float`` includes NaN and Infinity with their ``-`` forms; lowercased)
* ``p``   — punctuation and operators of Parser.g, RANGE ``..``, QMARK ``?`` and ``expr(``

Whitespace (WS is only space, tab, ``\\n``, ``\\r``), COMMENT and MULTILINE_COMMENT are
dropped. The grammar's lexer is ANTLR 3: it takes the longest token that completes, and the
rule listed first on a tie (keywords before IDENT, DURATION before IDENT). The alternation
below is ordered so that the first alternative that matches is that token; the one case
the order cannot express (``P1D`` is a DURATION, ``P1Dx`` an IDENT) is a look-ahead.
"""

from __future__ import annotations

import re

Token = tuple[str, str]


class CqlSyntaxError(ValueError):
    """The text is not CQL Cassandra would accept (lexically or structurally)."""


_HEX = "[0-9A-Fa-f]"
# DURATION_UNIT: y mo w d h m s ms us µs ns, case-insensitive except µ (U+00B5 only).
# Two-letter units first so "1ms" is one unit, not "1m" followed by an IDENT "s".
_UNIT = "(?:[Mm][OoSs]|[Uu\u00b5][Ss]|[Nn][Ss]|[YyWwDdHhMmSs])"
# DURATION_ISO_8601_TIME_DESIGNATORS and _PERIOD_DESIGNATORS (case-sensitive letters).
_ISO_TIME = "T(?:[0-9]+H(?:[0-9]+M)?(?:[0-9]+S)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S)"
_ISO_PERIOD = "(?:[0-9]+Y(?:[0-9]+M)?(?:[0-9]+D)?|[0-9]+M(?:[0-9]+D)?|[0-9]+D)"
_ISO_FORMS = f"(?:{_ISO_TIME}|[0-9]+W|{_ISO_PERIOD}(?:{_ISO_TIME})?)"
_ISO_ALT = "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"

# One match = the whitespace and comments before a token, then the token (or nothing, at
# the end of the text). WS is only space, tab, \n and \r.
# COMMENT: ('--' | '//') .* ('\n'|'\r') — ends at the first \n OR \r, and needs one: a line
# comment running into the end of the text is a lexer error, as is '/*' without '*/'.
# MULTILINE_COMMENT: '/*' .* '*/' — not nested, ends at the first '*/'.
_TRIVIA = r"(?:[ \t\n\r]+|(?:--|//)[^\n\r]*[\n\r]|/\*(?s:.*?)\*/)*"
_UUID = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
# Ordered so that the first alternative that matches is the token Lexer.g makes there; the
# most frequent tokens come first, guarded by look-aheads where a rule listed before them
# in Lexer.g would take the same text.
_TOKENS = [
    # IDENT and keywords — unless the word is the start of a UUID, is exactly an ISO 8601
    # DURATION (DURATION is listed first and wins the tie: "P1D"; a longer IDENT wins:
    # "P1Dx"), or is Parser.g's literal token 'expr(' (case-sensitive).
    rf"(?P<ident>(?!{_UUID})(?!P{_ISO_ALT}|P{_ISO_FORMS}(?![A-Za-z0-9_]))(?!expr\()"
    r"[A-Za-z][A-Za-z0-9_]*)",
    # Parser.g's operators and punctuation, RANGE and QMARK; '-' and '/' only when they do
    # not start a comment, a negative constant or '-='.
    r"(?P<p>\.\.|<=|>=|!=|\+=|[+*%=<>(),;.\[\]{}:?]|-(?![-=0-9PnNiI])|/(?![/*]))",
    # STRING_LITERAL, conventional form: '' inside is one quote; any char else.
    r"(?P<str>'[^']*(?:''[^']*)*')",
    # QUOTED_NAME ("" inside is one quote) and EMPTY_QUOTED_NAME ("").
    r'(?P<qid>"[^"]*(?:""[^"]*)*")',
    rf"(?P<uuid>{_UUID})",
    r"(?P<hex>0[xX][0-9A-Fa-f]*)",
    # DURATION: ISO 8601 forms, then DIGIT+ DURATION_UNIT (DIGIT+ DURATION_UNIT)*.
    rf"(?P<duration>-?P{_ISO_ALT}|-?P{_ISO_FORMS}|-?(?:[0-9]+{_UNIT})+)",
    # FLOAT: (INTEGER '.' RANGE) => INTEGER '.'  |  (INTEGER RANGE) => INTEGER
    #        | INTEGER ('.' DIGIT*)? EXPONENT?     — so "1..2" is 1 .. 2 and "1...2" 1. .. 2
    r"(?P<float_before_range>-?[0-9]+\.(?=\.\.))",
    r"(?P<number>-?[0-9]++(?!\.\.)(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|-?[0-9]+)",
    # K_NEGATIVE_NAN, K_NEGATIVE_INFINITY.
    r"(?P<negconst>-(?:[Nn][Aa][Nn]|[Ii][Nn][Ff][Ii][Nn][Ii][Tt][Yy]))",
    r"(?P<expr>expr\()",
    # STRING_LITERAL, pg form: everything up to the first '$$', verbatim.
    r"(?P<dstr>\$\$(?s:.*?)\$\$)",
    # The beginning of a comment, string or name that never ends: refused.
    r"(?P<unterminated>--|//|/\*|['\"$])",
    r"(?P<minus>-=?)",
    r"(?P<error>(?s:.))",
    r"(?P<end>\Z)",
]
_TOKEN_RE = re.compile(_TRIVIA + "(?:" + "|".join(_TOKENS) + ")")

# Every keyword of Lexer.g (lowercased; K_KEYSPACE also spells "schema", K_COLUMNFAMILY
# "table", K_TABLES "columnfamilies") that Parser.g's unreserved_keyword rule does not
# accept as a name. A reserved word can never be a keyspace, table or role name, and the
# statement verbs among them (INSERT, UPDATE, DELETE, APPLY, BATCH ...) can only ever be
# those verbs — which is what lets a batch be split into its children without ';'.
# fmt: off
RESERVED = frozenset((
    "select", "from", "where", "and", "entries", "full", "insert", "update", "with", "limit",
    "using", "use", "set", "begin", "unlogged", "batch", "apply", "truncate", "delete", "in",
    "create", "schema", "keyspace", "columnfamily", "table", "materialized", "view", "index",
    "on", "to", "drop", "primary", "into", "alter", "rename", "add", "order", "by", "asc",
    "desc", "allow", "if", "is", "grant", "of", "revoke", "modify", "authorize", "describe",
    "execute", "norecursive", "token", "null", "not", "or",
))
# fmt: on
_CONSTANT_WORDS = {"true": "bool", "false": "bool", "nan": "float", "infinity": "float"}


def lex(text: str, spans: list[tuple[int, int]] | None = None) -> list[Token]:
    """Tokens of ``text``; with ``spans``, also each token's (start, end) offsets in it.

    Raises :class:`CqlSyntaxError` where Cassandra's lexer reports an error.
    """
    out: list[Token] = []
    append = out.append
    for m in _TOKEN_RE.finditer(text):
        group = m.lastgroup
        assert group is not None  # every alternative of _TOKEN_RE is a named group
        raw = m[group]
        if group == "ident":
            word = raw.lower()
            append((_CONSTANT_WORDS.get(word, "id"), word))
        elif group == "p" or group == "minus" or group == "expr":
            append(("p", raw))
        elif group == "str":
            append(("str", raw[1:-1].replace("''", "'")))
        elif group == "end":
            break
        elif group == "number":
            append(("float" if ("." in raw or "e" in raw or "E" in raw) else "int", raw))
        elif group == "qid":
            if raw == '""' and text.startswith('"', m.end()):
                # '"""...' is a QUOTED_NAME (it starts with an escaped quote) that never
                # ends; the alternation only fell back to EMPTY_QUOTED_NAME because of that.
                raise CqlSyntaxError("unterminated quoted name")
            append(("qid", raw[1:-1].replace('""', '"')))
        elif group == "dstr":
            append(("str", raw[2:-2]))
        elif group == "duration" or group == "uuid" or group == "hex":
            append((group, raw))
        elif group == "float_before_range":
            append(("float", raw))
        elif group == "negconst":
            append(("float", raw.lower()))
        elif group == "unterminated":
            raise CqlSyntaxError(f"unterminated {raw!r} at offset {m.start(group)}")
        else:
            raise CqlSyntaxError(f"no CQL token starts with {raw!r} at offset {m.start(group)}")
        if spans is not None:
            spans.append(m.span(group))
    return out
