"""Can two globs match a common string? The access map asks it of a DAG's principals
(``airflow:prod/etl_*/*``) against a rule's principal globs, and of a deny's objects against
an allow's.

Each glob is read as a list of items: one character out of a set (a literal, ``?``, a
``[class]``), or any run of such characters (``*``, an object's ``**``). Two globs share a
string exactly when a walk over both item lists, consuming one common character at a time,
reaches both ends. Character sets are only ever compared on a small alphabet: every
character either glob names, its neighbours, ``/`` and the two ends of Unicode. Any
non-empty intersection of the sets involved (unions of ranges and their complements)
contains one of those characters, so the answer is exact, not an approximation.

The access map asks many pairs (every rule by every known DAG), so the cheap answers come
first: globs whose literal starts or ends differ share nothing, the literal characters both
start and end with are trimmed before the walk, and answers are kept.

Dialects follow :mod:`lockgate.policy.globs`: ``name`` globs are :func:`fnmatch.fnmatchcase`
(``*`` crosses ``/``), ``object`` globs are path-aware (``*`` and ``?`` stay within one
segment, ``**`` crosses, a lone ``*`` or ``**`` matches everything).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lockgate.policy.globs import Kind, is_match_all, translate

CharTest = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class _Item:
    accepts: CharTest
    repeat: bool  # any run of accepted characters (a star), else exactly one
    literal: str | None = None  # the one character it accepts, when it is a literal


def _any(_: str) -> bool:
    return True


def _not_slash(c: str) -> bool:
    return c != "/"


#: the tests of ``?`` and ``*``: both accept plenty of characters other than "/"
_BROAD: tuple[CharTest, ...] = (_any, _not_slash)


def _literal(ch: str) -> CharTest:
    return ch.__eq__


def _bracket_end(pattern: str, i: int, kind: Kind) -> int:
    """Index of the ``]`` closing the class opened at ``i`` (-1: the ``[`` is a literal),
    found exactly as the dialect's own translation finds it."""
    n = len(pattern)
    if kind == "object":
        return pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
    j = i + 1
    if j < n and pattern[j] == "!":
        j += 1
    if j < n and pattern[j] == "]":
        j += 1
    while j < n and pattern[j] != "]":
        j += 1
    return j if j < n else -1


def _class_test(bracket: str, kind: Kind) -> CharTest:
    # the dialect's own translation of the class alone: membership exactly as it matches
    match = re.compile(translate(bracket, kind)).match
    return lambda c: match(c) is not None


@functools.lru_cache(maxsize=4096)
def items(pattern: str, kind: Kind) -> tuple[_Item, ...]:
    """``pattern`` as items (see the module docstring)."""
    if is_match_all(pattern, kind):
        return (_Item(_any, True),)
    one = _any if kind == "name" else _not_slash
    out: list[_Item] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            crosses = kind == "name" or j - i > 1
            out.append(_Item(_any if crosses else _not_slash, True))
            i = j
            continue
        if c == "?":
            out.append(_Item(one, False))
        elif c == "[" and (end := _bracket_end(pattern, i, kind)) != -1:
            out.append(_Item(_class_test(pattern[i : end + 1], kind), False))
            i = end
        else:
            out.append(_Item(_literal(c), False, c))
        i += 1
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _alphabet(*patterns: str) -> list[str]:
    chars = {"/", "\x00", "\U0010ffff"}
    for p in patterns:
        for c in p:
            code = ord(c)
            chars.update(chr(k) for k in (code - 1, code, code + 1) if 0 <= k <= 0x10FFFF)
    return sorted(chars)


def _share(x: _Item, y: _Item, alphabet: Callable[[], list[str]]) -> bool:
    """Some character is accepted by both."""
    if x.literal is not None:
        return y.accepts(x.literal)
    if y.literal is not None:
        return x.accepts(y.literal)
    if x.accepts in _BROAD and y.accepts in _BROAD:
        return True  # "x" is in both
    return any(x.accepts(c) and y.accepts(c) for c in alphabet())


def _trimmed(
    a: Sequence[_Item], b: Sequence[_Item]
) -> tuple[Sequence[_Item], Sequence[_Item]] | None:
    """``a`` and ``b`` without the literal characters both start (and end) with, which a
    common string must begin (and end) with; None when those characters differ."""
    start = 0
    while start < min(len(a), len(b)) and a[start].literal and b[start].literal:
        if a[start].literal != b[start].literal:
            return None
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1].literal and b[end_b - 1].literal:
        if a[end_a - 1].literal != b[end_b - 1].literal:
            return None
        end_a, end_b = end_a - 1, end_b - 1
    return a[start:end_a], b[start:end_b]


def items_intersect(
    a: Sequence[_Item], b: Sequence[_Item], alphabet: Callable[[], list[str]]
) -> bool:
    """Some string is matched by both item lists (``alphabet`` as the module says)."""
    trimmed = _trimmed(a, b)
    if trimmed is None:
        return False
    a, b = trimmed
    start = (0, 0)
    seen = {start}
    todo = [start]
    while todo:
        i, j = todo.pop()
        if i == len(a) and j == len(b):
            return True
        steps: list[tuple[int, int]] = []
        if i < len(a) and a[i].repeat:
            steps.append((i + 1, j))
        if j < len(b) and b[j].repeat:
            steps.append((i, j + 1))
        if i < len(a) and j < len(b):
            x, y = a[i], b[j]
            if _share(x, y, alphabet):
                steps.append((i if x.repeat else i + 1, j if y.repeat else j + 1))
        for step in steps:
            if step not in seen:
                seen.add(step)
                todo.append(step)
    return False


_GLOB = frozenset("*?[]")


def _ends(pattern: str) -> tuple[str, str]:
    """The literal text every match starts and ends with (a ``]`` ends it too: safe)."""
    head = next((i for i, c in enumerate(pattern) if c in _GLOB), len(pattern))
    if head == len(pattern):
        return pattern, pattern
    tail = next((i for i in range(len(pattern) - 1, -1, -1) if pattern[i] in _GLOB), -1)
    return pattern[:head], pattern[tail + 1 :]


def _ends_agree(a: str, b: str) -> bool:
    """Cheap first cut: two globs whose literal starts (or ends) differ share no string."""
    head_a, tail_a = _ends(a)
    head_b, tail_b = _ends(b)
    return (head_a.startswith(head_b) or head_b.startswith(head_a)) and (
        tail_a.endswith(tail_b) or tail_b.endswith(tail_a)
    )


@functools.lru_cache(maxsize=65536)
def intersects(a: str, b: str, kind: Kind, kind_b: Kind | None = None) -> bool:
    """True when some string matches glob ``a`` (of ``kind``) and glob ``b`` (of ``kind_b``,
    default the same). Answers are kept: the access map asks the same pairs again."""
    other: Kind = kind_b or kind
    if a == b and kind == other:
        return True
    if not (is_match_all(a, kind) or is_match_all(b, other) or _ends_agree(a, b)):
        return False
    return items_intersect(items(a, kind), items(b, other), lambda: _alphabet(a, b))


def any_intersect(wide: tuple[str, ...], narrow: tuple[str, ...], kind: Kind) -> bool:
    """Some pattern of one list shares a string with some pattern of the other."""
    return any(intersects(x, y, kind) for x in wide for y in narrow)
