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

Dialects follow :mod:`lockgate.policy.globs`: ``name`` globs are :func:`fnmatch.fnmatchcase`
(``*`` crosses ``/``), ``object`` globs are path-aware (``*`` and ``?`` stay within one
segment, ``**`` crosses, a lone ``*`` or ``**`` matches everything).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lockgate.policy.globs import Kind, is_match_all, translate

CharTest = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class _Item:
    accepts: CharTest
    repeat: bool  # any run of accepted characters (a star), else exactly one


def _any(_: str) -> bool:
    return True


def _not_slash(c: str) -> bool:
    return c != "/"


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


def items(pattern: str, kind: Kind) -> list[_Item]:
    """``pattern`` as items (see the module docstring)."""
    if is_match_all(pattern, kind):
        return [_Item(_any, True)]
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
            out.append(_Item(_literal(c), False))
        i += 1
    return out


def _alphabet(*patterns: str) -> list[str]:
    chars = {"/", "\x00", "\U0010ffff"}
    for p in patterns:
        for c in p:
            code = ord(c)
            chars.update(chr(k) for k in (code - 1, code, code + 1) if 0 <= k <= 0x10FFFF)
    return sorted(chars)


def items_intersect(a: list[_Item], b: list[_Item], alphabet: list[str]) -> bool:
    """Some string is matched by both item lists (``alphabet`` as the module says)."""
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
            if any(x.accepts(c) and y.accepts(c) for c in alphabet):
                steps.append((i if x.repeat else i + 1, j if y.repeat else j + 1))
        for step in steps:
            if step not in seen:
                seen.add(step)
                todo.append(step)
    return False


def intersects(a: str, b: str, kind: Kind, kind_b: Kind | None = None) -> bool:
    """True when some string matches glob ``a`` (of ``kind``) and glob ``b`` (of ``kind_b``,
    default the same)."""
    if a == b and kind == (kind_b or kind):
        return True
    return items_intersect(items(a, kind), items(b, kind_b or kind), _alphabet(a, b))


def any_intersect(wide: tuple[str, ...], narrow: tuple[str, ...], kind: Kind) -> bool:
    """Some pattern of one list shares a string with some pattern of the other."""
    return any(intersects(x, y, kind) for x in wide for y in narrow)
