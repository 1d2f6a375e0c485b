"""Password redaction of CQL statement texts before they reach an audit record or a log line.

Rule (:func:`redact_secrets`): a text is *sensitive* when it mentions ``password`` anywhere
(any case: the PASSWORD / HASHED PASSWORD role options, a password column, a comment) or
holds a ``CREATE|ALTER ROLE|USER`` statement (whose OPTIONS map may carry secrets for a
custom role manager). In a sensitive text every string literal, and whatever token
follows ``PASSWORD [=]``, becomes ``'***'`` and comments are dropped; the rest of the text
is kept as written. Positions come from the lexer's token spans, never from a pattern over
the raw text, so a quote inside a comment or a ``$$`` string cannot shift what is hidden.
A text the lexer cannot read is withheld whole when it mentions ``password``, ``role`` or
``user`` (it may be a role statement: where its literals are cannot be known); anything
else is returned as is.
"""

from __future__ import annotations

import itertools

from .lexer import CqlSyntaxError, Token, lex

MASK = "'***'"
_ROLE_STATEMENT_VERBS = frozenset({("id", "create"), ("id", "alter")})
_ROLE_STATEMENT_OBJECTS = frozenset({("id", "role"), ("id", "user")})
# Role options and connectives that may follow PASSWORD without being its value
# (GENERATED PASSWORD AND LOGIN = true ...).
_NOT_A_VALUE = frozenset(
    ("id", w) for w in ("and", "with", "superuser", "nosuperuser", "login", "nologin", "access")
) | {("id", "options"), ("p", ";"), ("p", "=")}


def redact_secrets(text: str) -> str:
    """``text`` with password values and other string literals hidden when it is sensitive."""
    lowered = text.lower()
    if "password" not in lowered and "role" not in lowered and "user" not in lowered:
        return text  # cannot be sensitive: skip the lexer
    spans: list[tuple[int, int]] = []
    try:
        tokens = lex(text, spans)
    except CqlSyntaxError:
        # Unlexable, so where its literals are is unknown: a text that may hold a role
        # statement (whose OPTIONS need not say "password") is withheld too.
        size = len(text.encode("utf-8", "surrogatepass"))
        if "password" in lowered:
            return f"<statement withheld: {size} bytes, contains a password option>"
        return f"<statement withheld: {size} bytes, may be a role statement>"
    if "password" not in lowered and not _has_role_statement(tokens):
        return text
    return _masked(text, tokens, spans)


def _has_role_statement(tokens: list[Token]) -> bool:
    return any(
        verb in _ROLE_STATEMENT_VERBS and obj in _ROLE_STATEMENT_OBJECTS
        for verb, obj in itertools.pairwise(tokens)
    )


def _masked(text: str, tokens: list[Token], spans: list[tuple[int, int]]) -> str:
    hidden = {i for i, (kind, _) in enumerate(tokens) if kind == "str"}
    for i, token in enumerate(tokens):
        if token[0] in ("id", "qid") and token[1].lower() == "password":
            value = i + 2 if i + 1 < len(tokens) and tokens[i + 1] == ("p", "=") else i + 1
            if value < len(tokens) and tokens[value] not in _NOT_A_VALUE:
                hidden.add(value)
    pieces: list[str] = []
    pos = 0
    for i, (start, end) in enumerate(spans):
        pieces.append(_gap(text[pos:start]))
        pieces.append(MASK if i in hidden else text[start:end])
        pos = end
    pieces.append(_gap(text[pos:]))
    return "".join(pieces)


def _gap(between: str) -> str:
    """What separated two tokens: kept if only whitespace, one space if it held a comment."""
    if not between or between.isspace():
        return between
    return " "
