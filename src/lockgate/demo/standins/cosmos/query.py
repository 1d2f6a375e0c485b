"""The small slice of Cosmos DB SQL the fake understands.

Grammar (case-insensitive keywords)::

    SELECT [TOP n] (* | VALUE COUNT(1) | VALUE COUNT(*)) FROM name [[AS] alias]
        [WHERE alias.path = operand [AND alias.path = operand]...]
    operand := @param | 'string' | "string" | number | true | false | null

Anything else raises :class:`QueryError`, which the server answers with 400 (a substatus the
SDK does not treat as "fetch a query plan", so the failure surfaces to the caller).

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Query", "QueryError", "parse_query", "run_query"]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<param>@\w+)
      | (?P<word>[A-Za-z_][\w]*)
      | (?P<sym>[*=().,])
    )""",
    re.VERBOSE,
)
_MISSING = object()


class QueryError(ValueError):
    """A query outside the supported subset, or a parameter that was not supplied."""


@dataclass
class Query:
    alias: str
    top: int | None = None
    count: bool = False
    # (path within the document, operand): operand is ("param", name) or ("lit", value)
    where: list[tuple[list[str], tuple[str, Any]]] = field(default_factory=list)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(f"unsupported syntax at offset {pos}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise QueryError("unexpected end of query")
        self.i += 1
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok and tok[0] == "word" and tok[1].upper() == word:
            self.i += 1
            return True
        return False

    def expect(self, value: str) -> None:
        _, text = self.take()
        if text.upper() != value:
            raise QueryError(f"expected {value}, got {text!r}")


def parse_query(text: str) -> Query:
    p = _Parser(text)
    p.expect("SELECT")
    top: int | None = None
    if p.keyword("TOP"):
        kind, value = p.take()
        if kind != "num" or not value.isdigit():
            raise QueryError("TOP needs a whole number")
        top = int(value)
    count = False
    if p.keyword("VALUE"):
        p.expect("COUNT")
        p.expect("(")
        kind, value = p.take()
        if value not in ("1", "*"):
            raise QueryError("only COUNT(1) is supported")
        p.expect(")")
        count = True
    else:
        p.expect("*")
    p.expect("FROM")
    kind, alias = p.take()
    if kind != "word":
        raise QueryError("FROM needs an alias")
    # "FROM root r" / "FROM root AS r": the second name is the alias terms refer to.
    p.keyword("AS")
    nxt = p.peek()
    if nxt and nxt[0] == "word" and nxt[1].upper() != "WHERE":
        alias = p.take()[1]
    query = Query(alias=alias, top=top, count=count)
    if p.keyword("WHERE"):
        while True:
            query.where.append((_path(p, alias), _operand(p)))
            if not p.keyword("AND"):
                break
    if p.peek() is not None:
        raise QueryError(f"unsupported clause near {p.peek()[1]!r}")  # type: ignore[index]
    return query


def _path(p: _Parser, alias: str) -> list[str]:
    kind, head = p.take()
    if kind != "word" or head != alias:
        raise QueryError(f"WHERE terms must start with {alias}.")
    path: list[str] = []
    while p.peek() == ("sym", "."):
        p.take()
        kind, name = p.take()
        if kind != "word":
            raise QueryError("bad property path")
        path.append(name)
    if not path:
        raise QueryError("WHERE needs a property")
    p.expect("=")
    return path


def _operand(p: _Parser) -> tuple[str, Any]:
    kind, value = p.take()
    if kind == "param":
        return ("param", value)
    if kind == "str":
        # Backslash escapes the next character; enough for quotes inside strings.
        return ("lit", re.sub(r"\\(.)", r"\1", value[1:-1]))
    if kind == "num":
        return ("lit", float(value) if "." in value else int(value))
    if kind == "word" and value.lower() in ("true", "false", "null"):
        return ("lit", {"true": True, "false": False, "null": None}[value.lower()])
    raise QueryError(f"unsupported operand {value!r}")


def _get(doc: Any, path: list[str]) -> Any:
    for name in path:
        if not isinstance(doc, dict) or name not in doc:
            return _MISSING
        doc = doc[name]
    return doc


def _same(a: Any, b: Any) -> bool:
    # Cosmos equality does not coerce types: 1 = true is false, 1 = 1.0 is true.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and bool(a == b)
    return bool(a == b)


def run_query(query: Query, params: dict[str, Any], items: list[dict[str, Any]]) -> list[Any]:
    """Filter ``items``; returns documents, or ``[count]`` for ``SELECT VALUE COUNT(1)``."""
    resolved: list[tuple[list[str], Any]] = []
    for path, (kind, value) in query.where:
        if kind == "param":
            if value not in params:
                raise QueryError(f"parameter {value} was not supplied")
            value = params[value]
        resolved.append((path, value))
    hits = [
        doc
        for doc in items
        if all(
            (got := _get(doc, path)) is not _MISSING and _same(got, want) for path, want in resolved
        )
    ]
    if query.top is not None:
        hits = hits[: query.top]
    return [len(hits)] if query.count else hits
