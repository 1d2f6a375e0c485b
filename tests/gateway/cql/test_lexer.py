"""The CQL lexer against Cassandra's Lexer.g: a table of edge cases and a generator round trip.

Expected tokens in the table are read off the grammar rules named next to them. The
property test renders generated token sequences to text (with random whitespace and
comments between them) and checks the lexer gives back exactly the generated tokens.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.gateway.cql.lexer import CqlSyntaxError, Token, lex


def _same(kind: str, *values: str) -> list[Token]:
    return [(kind, v) for v in values]


def _alternate(first: tuple[str, str], second: tuple[str, str]) -> list[Token]:
    """Tokens of ``first`` kind and ``second`` kind in turn (values space-separated)."""
    a, b = first[1].split(), second[1].split()
    out: list[Token] = []
    for i, value in enumerate(a):
        out.append((first[0], value))
        if i < len(b):
            out.append((second[0], b[i]))
    return out


TOKEN_CASES: list[tuple[str, list[Token] | None]] = [
    # WS is space, tab, \n, \r only
    ("a \t\r\nb", [("id", "a"), ("id", "b")]),
    # COMMENT ends at \n OR \r (the terminator is part of the comment)
    ("a -- x\rb", [("id", "a"), ("id", "b")]),
    ("a // x\rb", [("id", "a"), ("id", "b")]),
    ("a -- x\r\nb", [("id", "a"), ("id", "b")]),
    ("a --\nb", [("id", "a"), ("id", "b")]),
    # MULTILINE_COMMENT: not nested, ends at the first */
    ("a /* /* x */ b", [("id", "a"), ("id", "b")]),
    ("a /* x */ b */", [("id", "a"), ("id", "b"), ("p", "*"), ("p", "/")]),
    ("a /*/ b */ c", [("id", "a"), ("id", "c")]),
    ("a /**/b", [("id", "a"), ("id", "b")]),
    ("a /* -- */ b", [("id", "a"), ("id", "b")]),
    ("a -- /* \n b */", [("id", "a"), ("id", "b"), ("p", "*"), ("p", "/")]),
    ("a /* 'x */ b", [("id", "a"), ("id", "b")]),
    # STRING_LITERAL: '' is one quote; comments and newlines inside are text
    ("'it''s'", [("str", "it's")]),
    ("''", [("str", "")]),
    ("''''", [("str", "'")]),
    ("'-- x\n/* y'", [("str", "-- x\n/* y")]),
    ("'a''", None),
    # pg-style: verbatim up to the first $$
    ("$$it's$$", [("str", "it's")]),
    ("$$$$", [("str", "")]),
    ("$$a$b$$", [("str", "a$b")]),
    ("$$ '' -- $$", [("str", " '' -- ")]),
    ("$$a$$$$b$$", [("str", "a"), ("str", "b")]),
    ("$$a$$$", None),
    ("$$a", None),
    ("$x", None),
    # QUOTED_NAME: "" is one quote, case kept; EMPTY_QUOTED_NAME
    ('"MyTable"', [("qid", "MyTable")]),
    ('"a""b"', [("qid", 'a"b')]),
    ('""""', [("qid", '"')]),
    ('""', [("qid", "")]),
    ('"" x', [("qid", ""), ("id", "x")]),
    ('"""a"', [("qid", '"a')]),
    ('"""', None),
    ('"a', None),
    # IDENT is ASCII letters, digits, _; case-folded
    ("MyKs.My_Table1", [("id", "myks"), ("p", "."), ("id", "my_table1")]),
    ("_x", None),
    ("caf\u00e9", None),
    ("t\u0131me", None),  # dotless i: not an ASCII letter
    ("\uff33ELECT", None),  # fullwidth S
    # BOOLEAN and the NaN / Infinity keywords
    ("TRUE False", [("bool", "true"), ("bool", "false")]),
    ("NaN -NaN Infinity -infinity", _same("float", "nan", "-nan", "infinity", "-infinity")),
    ("nanx", [("id", "nanx")]),
    # INTEGER, FLOAT and the RANGE rules
    ("1 -1 007", [("int", "1"), ("int", "-1"), ("int", "007")]),
    ("1.5 1. 1e5 1E+5 1.5e-3 -2.0", _same("float", "1.5", "1.", "1e5", "1E+5", "1.5e-3", "-2.0")),
    ("1..2", [("int", "1"), ("p", ".."), ("int", "2")]),
    ("12...3", [("float", "12."), ("p", ".."), ("int", "3")]),
    ("1.e", [("float", "1."), ("id", "e")]),
    ("x-1", [("id", "x"), ("int", "-1")]),
    ("x - 1", [("id", "x"), ("p", "-"), ("int", "1")]),
    # DURATION
    (
        "12h30m 1mo 2ms 3us 3\u00b5s 4ns 1Y 2W",
        _same("duration", "12h30m", "1mo", "2ms", "3us", "3\u00b5s", "4ns", "1Y", "2W"),
    ),
    ("-5d", [("duration", "-5d")]),
    ("1hour", [("duration", "1h"), ("id", "our")]),
    ("P1Y2M3DT4H5M6S PT5M P2W -P1D", _same("duration", "P1Y2M3DT4H5M6S", "PT5M", "P2W", "-P1D")),
    ("P0001-02-03T04:05:06", [("duration", "P0001-02-03T04:05:06")]),
    ("P1Dx", [("id", "p1dx")]),
    ("p1d", [("id", "p1d")]),
    ("1\u03bcs", None),  # Greek mu is not the micro sign
    # UUID, HEXNUMBER
    ("DEADBEEF-dead-beef-0000-123456789abc", [("uuid", "DEADBEEF-dead-beef-0000-123456789abc")]),
    ("deadbeef-1", [("id", "deadbeef"), ("int", "-1")]),
    ("0xCAFE 0X", [("hex", "0xCAFE"), ("hex", "0X")]),
    # punctuation and operators
    ("a<=b>=c!=d+=e-=f", _alternate(("id", "a b c d e f"), ("p", "<= >= != += -="))),
    ("?:x[1]{}%/*", None),  # '/*' opens a comment that never closes
    (
        "? : [ ] { } % / * , ; ( ) . + - = < >",
        _same("p", "?", ":", "[", "]", "{", "}", "%", "/", "*", ",", ";", "(", ")", ".", "+")
        + _same("p", "-", "=", "<", ">"),
    ),
    ("expr(i, 'q')", [("p", "expr("), ("id", "i"), ("p", ","), ("str", "q"), ("p", ")")]),
    ("EXPR(i)", [("id", "expr"), ("p", "("), ("id", "i"), ("p", ")")]),
    # characters no rule places
    ("a!b", None),
    ("a@b", None),
    ("a#b", None),
    ("a`b`", None),
    ("a\\b", None),
    ("a\x00b", None),
    ("a\fb", None),  # form feed is not WS in Lexer.g
    ("a\u00a0b", None),
    ("a\u2028b", None),
    ("a\ufeffb", None),
    # comments and strings that never end
    ("a -- x", None),
    ("a //", None),
    ("a /* x", None),
    ("a /* x *", None),
    ("a 'x", None),
]


@pytest.mark.parametrize(("text", "want"), TOKEN_CASES, ids=[repr(c[0])[:40] for c in TOKEN_CASES])
def test_lexer_table(text: str, want: list[Token] | None) -> None:
    if want is None:
        with pytest.raises(CqlSyntaxError):
            lex(text)
    else:
        assert lex(text) == want


def test_spans_point_at_each_token() -> None:
    text = "SELECT \"A\"\"b\" /* c */ FROM 'x''y' -- z\r$$q$$"
    spans: list[tuple[int, int]] = []
    tokens = lex(text, spans)
    assert [text[s:e] for s, e in spans] == ["SELECT", '"A""b"', "FROM", "'x''y'", "$$q$$"]
    assert len(tokens) == len(spans)


# -- generator round trip -----------------------------------------------------------------------
# Each strategy yields (rendered text, expected token); the expectation comes from the
# generator, never from the lexer.
_KEYWORDS = ["select", "from", "where", "batch", "apply", "password", "user", "key", "schema"]
_PUNCT = ["..", "<=", ">=", "!=", "+=", "-=", "+", "-", "*", "/", "%", "=", "<", ">", "(", ")"]
_PUNCT += [",", ";", ".", "[", "]", "{", "}", ":", "?"]
# Punctuation that never merges with a neighbour, so it may be rendered without a separator.
_CLOSED = {"(", ")", ",", ";", "[", "]", "{", "}"}
_UNITS = ["y", "mo", "w", "d", "h", "m", "s", "ms", "us", "\u00b5s", "ns"]


def _random_case(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    # Only ASCII letters: Lexer.g's case-insensitive fragments are A-Z/a-z (µ stays µ).
    return "".join(c.upper() if f and c.isascii() else c for c, f in zip(word, flips, strict=True))


@st.composite
def _ident(draw: st.DrawFn) -> tuple[str, Token]:
    word = draw(
        st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True)
        | st.sampled_from(_KEYWORDS).flatmap(lambda w: st.builds(lambda: w))
    )
    # ISO-looking words are DURATIONs and "expr" may merge with "(": drawn elsewhere.
    if (word[0] == "P" and len(word) > 1 and (word[1].isdigit() or word[1] == "T")) or (
        word.lower() == "expr"
    ):
        word = "x" + word
    word = _random_case(draw, word) if word.islower() else word
    lower = word.lower()
    kind = {"true": "bool", "false": "bool", "nan": "float", "infinity": "float"}.get(lower, "id")
    return word, (kind, lower)


@st.composite
def _quoted_name(draw: st.DrawFn) -> tuple[str, Token]:
    value = draw(st.text(max_size=12))
    return '"' + value.replace('"', '""') + '"', ("qid", value)


@st.composite
def _string(draw: st.DrawFn) -> tuple[str, Token]:
    value = draw(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("'$-/*\r\n")))
    if "$$" not in value and not value.endswith("$") and draw(st.booleans()):
        return "$$" + value + "$$", ("str", value)
    return "'" + value.replace("'", "''") + "'", ("str", value)


@st.composite
def _number(draw: st.DrawFn) -> tuple[str, Token]:
    sign = draw(st.sampled_from(["", "-"]))
    digits = draw(st.from_regex(r"[0-9]{1,6}", fullmatch=True))
    form = draw(st.sampled_from(["int", "frac", "exp", "both", "nan", "inf"]))
    if form == "int":
        return sign + digits, ("int", sign + digits)
    if form in ("nan", "inf"):
        word = _random_case(draw, "nan" if form == "nan" else "infinity")
        return sign + word, ("float", (sign + word).lower())
    frac = "." + draw(st.from_regex(r"[0-9]{0,4}", fullmatch=True))
    exp = draw(st.from_regex(r"[eE][+-]?[0-9]{1,3}", fullmatch=True))
    text = sign + digits + {"frac": frac, "exp": exp, "both": frac + exp}[form]
    return text, ("float", text)


@st.composite
def _duration(draw: st.DrawFn) -> tuple[str, Token]:
    sign = draw(st.sampled_from(["", "-"]))
    n = st.integers(0, 999).map(str)
    if draw(st.booleans()):
        parts = draw(st.lists(st.tuples(n, st.sampled_from(_UNITS)), min_size=1, max_size=4))
        text = sign + "".join(d + _random_case(draw, u) for d, u in parts)
    else:
        text = sign + draw(
            st.sampled_from(
                ["P{}W", "PT{}H{}M", "P{}Y{}M{}D", "P{}DT{}S", "P{}MT{}H{}M{}S", "PT{}S"]
            ).map(lambda f: f.format(*[7] * f.count("{}")))
            | st.just("P0001-02-03T04:05:06")
        )
    return text, ("duration", text)


@st.composite
def _uuid_or_hex(draw: st.DrawFn) -> tuple[str, Token]:
    if draw(st.booleans()):
        text = _random_case(draw, str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))))
        return text, ("uuid", text)
    text = draw(st.from_regex(r"0[xX][0-9a-fA-F]{0,10}", fullmatch=True))
    return text, ("hex", text)


_punct = st.sampled_from(_PUNCT).map(lambda p: (p, ("p", p)))
_bool = st.sampled_from(["true", "false"]).map(lambda b: (b.upper(), ("bool", b)))
_token = st.one_of(
    _ident(), _quoted_name(), _string(), _number(), _duration(), _uuid_or_hex(), _punct, _bool
)
_line_text = st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=10)
_separator = st.one_of(
    st.sampled_from([" ", "\t", "\n", "\r", "\r\n", "  \t\r\n"]),
    st.tuples(st.sampled_from(["--", "//"]), _line_text, st.sampled_from(["\n", "\r"])).map(
        lambda p: " " + "".join(p)
    ),
    st.text(max_size=10).filter(lambda t: "*/" not in t).map(lambda t: f" /*{t}*/ "),
)


@given(st.lists(st.tuples(_token, _separator, st.booleans()), max_size=25))
@settings(max_examples=400, deadline=None)
def test_rendered_tokens_lex_back_to_the_same_tokens(
    parts: list[tuple[tuple[str, Token], str, bool]],
) -> None:
    text = ""
    expected: list[Token] = []
    previous = ""
    for (rendered, token), separator, adjacent in parts:
        if previous and not (adjacent and (previous in _CLOSED or rendered in _CLOSED)):
            text += separator
        text += rendered
        expected.append(token)
        previous = rendered
    spans: list[tuple[int, int]] = []
    assert lex(text, spans) == expected, text
    # Each span is exactly its token: lexed alone, it gives that token back.
    assert [lex(text[start:end]) for start, end in spans] == [[t] for t in expected], text
