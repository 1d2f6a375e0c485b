"""Glob patterns for principals, resources and objects, compiled once at load.

Two dialects, both case-sensitive and anchored at both ends:

* **names** (principals, resources): plain :func:`fnmatch.fnmatchcase`; ``*`` matches any run
  of characters including ``/``, ``?`` one character, ``[seq]`` / ``[!seq]`` a class.
* **objects**: path-aware. ``*`` matches within one ``/``-separated segment, ``**`` matches
  across segments (including none), ``?`` one character other than ``/``. A pattern that is
  exactly ``*`` or ``**`` matches every object, the empty one included, so the default
  ``objects: ["*"]`` means "anything in the resource".

:class:`Matcher` folds a list of patterns into one exact-name set plus one compiled regex, so
the hot path is a set lookup and at most one ``re.match``. :func:`covers` is a conservative
"pattern A matches at least everything pattern B matches" used by lint: it may say False
for a true cover, never True for a false one.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from typing import Literal

Kind = Literal["name", "object"]

_GLOB_CHARS = frozenset("*?[")


def is_literal(pattern: str) -> bool:
    """True if ``pattern`` has no glob characters and so matches only itself."""
    return not any(c in _GLOB_CHARS for c in pattern)


def is_match_all(pattern: str, kind: Kind) -> bool:
    if kind == "object":
        return pattern in ("*", "**")
    return pattern == "*"


def _translate_object(pattern: str) -> str:
    """Regex source for a path-aware object glob (``*`` stays within one segment)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                # Any run of '*' longer than one crosses segments; collapse it.
                while i < n and pattern[i] == "*":
                    i += 1
                out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                if body.startswith("!"):
                    # A negated class must not let a '/' slip into a single segment.
                    out.append("[^/" + _escape_class(body[1:]) + "]")
                else:
                    out.append("[" + _escape_class(body) + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "(?s:" + "".join(out) + r")\Z"


def _escape_class(body: str) -> str:
    # Keep ranges ("a-z") working; neutralise characters with meaning inside a regex class.
    return body.replace("\\", r"\\").replace("^", r"\^").replace("[", r"\[")


def translate(pattern: str, kind: Kind) -> str:
    return _translate_object(pattern) if kind == "object" else fnmatch.translate(pattern)


class Matcher:
    """Matches a string against a list of globs of one kind.

    An empty list matches nothing (a rule with an empty list has no effect).
    """

    __slots__ = ("exact", "kind", "match_all", "patterns", "regex")

    def __init__(self, patterns: Iterable[str], kind: Kind) -> None:
        self.patterns: tuple[str, ...] = tuple(patterns)
        self.kind: Kind = kind
        self.match_all = any(is_match_all(p, kind) for p in self.patterns)
        self.exact = frozenset(p for p in self.patterns if is_literal(p))
        globs = [translate(p, kind) for p in self.patterns if not is_literal(p)]
        self.regex: Callable[[str], re.Match[str] | None] | None = (
            re.compile("|".join(globs)).match if globs and not self.match_all else None
        )

    def __call__(self, value: str) -> bool:
        if self.match_all or value in self.exact:
            return True
        regex = self.regex
        return regex is not None and regex(value) is not None

    def __repr__(self) -> str:
        return f"Matcher({list(self.patterns)!r}, {self.kind!r})"


def match_one(pattern: str, value: str, kind: Kind) -> bool:
    return Matcher((pattern,), kind)(value)


# Private-use characters standing for the wildcards of a *narrow* pattern when it is matched,
# as a string, against the wide pattern (see covers()).
_STAR, _DSTAR, _QMARK = "\ue000", "\ue001", "\ue002"
_TOKENS = _STAR + _DSTAR + _QMARK


def _encode(pattern: str, kind: Kind) -> str:
    if kind == "object":
        pattern = re.sub(r"\*{2,}", _DSTAR, pattern)
    return pattern.replace("*", _STAR).replace("?", _QMARK)


def _wide_regex(pattern: str, kind: Kind) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*" and kind == "object" and pattern[i : i + 2] == "**":
            while i < len(pattern) and pattern[i] == "*":
                i += 1
            out.append(".*")  # crosses everything, narrow ** included
            continue
        if c == "*":
            # names: anything; objects: one segment, which a narrow * or ? stays within too
            out.append(".*" if kind == "name" else f"[^/{_DSTAR}]*")
        elif c == "?":
            out.append(f"[^{_STAR}{_DSTAR}]" if kind == "name" else f"[^/{_STAR}{_DSTAR}]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def covers(wide: str, narrow: str, kind: Kind) -> bool:
    """True only if every string ``narrow`` matches is also matched by ``wide``.

    Sound but incomplete: ``narrow`` is read as a string in which each of its wildcards is a
    symbol that only an equal-or-wider wildcard of ``wide`` may consume (``*`` by ``*``/``**``,
    ``**`` only by ``**``, ``?`` by ``?``/``*``/``**``), and ``wide`` must match that string.
    Patterns with ``[...]`` classes are only covered by an identical or match-all pattern.
    """
    if wide == narrow or is_match_all(wide, kind):
        return True
    if is_match_all(narrow, kind):
        return False
    if any(c in _TOKENS for c in wide + narrow):
        return False
    if "[" in narrow:
        return False
    if "[" in wide:
        return is_literal(narrow) and match_one(wide, narrow, kind)
    return _wide_regex(wide, kind).fullmatch(_encode(narrow, kind)) is not None


def covers_all(wide: Iterable[str], narrow: Iterable[str], kind: Kind) -> bool:
    """Every pattern in ``narrow`` is covered by some pattern in ``wide``."""
    wide_t = tuple(wide)
    return all(any(covers(w, n, kind) for w in wide_t) for n in narrow)
