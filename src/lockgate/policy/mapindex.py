"""The map-index condition: which instances of a mapped Airflow task a rule is about.

Every map index of a mapped task acts as one principal, ``airflow:<deployment>/<dag>/<task>``
(audit, globs and existing policies rely on that string staying put). The index travels
beside it, in the token's ``map_index`` claim (-1 when the task is not mapped), and a rule
can narrow itself to some instances with two conditions::

    conditions:
      map_index: [0, 1, "10-19"]   # numbers and inclusive "a-b" ranges; one alone may stand bare
      mapped: true                 # true: any mapped instance; false: only an unmapped task

On an allow, the condition must hold for the allow to decide; on a deny it says *when* the
deny applies. An unknown map index (a request built without one) satisfies no allow's
condition and always lets a deny apply: missing inputs fail closed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

# The token service accepts map indexes up to this bound; a rule naming more names nothing.
MAX_MAP_INDEX = 10_000_000
NOT_MAPPED = -1

MapRanges = tuple[tuple[int, int], ...]

# Ranges spanning at most this many indexes are also kept as a set (one lookup per request).
_SET_SPAN = 1024

_RANGE_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
_SHAPE = 'expected map indexes: a number, a range like "0-9", or a list of them'


def _one_range(item: object) -> tuple[int, int]:
    if isinstance(item, bool):
        raise ValueError(f"{_SHAPE} (got {item!r})")
    if isinstance(item, int):
        low = high = item
    elif isinstance(item, str):
        m = _RANGE_RE.match(item)
        if not m:
            raise ValueError(f"{_SHAPE} (got {item!r})")
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) is not None else low
    else:
        raise ValueError(f"{_SHAPE} (got {item!r})")
    if low < 0:
        raise ValueError(
            f"map indexes start at 0 (got {item!r}); for the task that is not mapped "
            "use mapped: false"
        )
    if low > high:
        raise ValueError(f"range {item!r} ends before it starts")
    if low > MAX_MAP_INDEX:
        raise ValueError(f"map index {item!r} is above the largest one a token carries")
    return low, high


def parse_map_indexes(value: object) -> MapRanges | None:
    """``3``, ``"0-9"``, ``[0, 1, "10-19"]`` -> ``((3, 3),)`` ...; None stays None."""
    if value is None:
        return None
    items: Sequence[object] = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise ValueError("expected at least one map index (omit map_index for every index)")
    return tuple(_one_range(item) for item in items)


def ranges_text(ranges: MapRanges) -> str:
    """``((0, 1), (3, 3))`` -> ``"0-1, 3"`` (as explanations show them)."""
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def _each(ranges: MapRanges) -> Iterator[int]:
    for low, high in ranges:
        yield from range(low, high + 1)


def _index_text(map_index: int | None) -> str:
    if map_index is None:
        return "map_index unknown"
    return "task not mapped" if map_index < 0 else f"map_index {map_index}"


@dataclass(frozen=True, slots=True)
class MapCondition:
    """A rule's ``map_index`` and ``mapped`` conditions, compiled."""

    ranges: MapRanges | None
    mapped: bool | None
    members: frozenset[int] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, ranges: MapRanges | None, mapped: bool | None) -> MapCondition | None:
        """None when the rule has neither condition (it then ignores the map index)."""
        if ranges is None and mapped is None:
            return None
        members = None
        if ranges is not None and sum(high - low + 1 for low, high in ranges) <= _SET_SPAN:
            # mapped: false beside indexes matches nothing (the schema refuses it anyway)
            members = frozenset() if mapped is False else frozenset(_each(ranges))
        return cls(ranges, mapped, members)

    def holds(self, map_index: int | None) -> bool:
        if map_index is None:
            return False
        if self.members is not None:
            return map_index in self.members
        if self.mapped is not None and self.mapped != (map_index >= 0):
            return False
        if self.ranges is not None:
            return any(low <= map_index <= high for low, high in self.ranges)
        return True

    @property
    def text(self) -> str:
        """The condition as written: ``map_index 0-9`` / ``mapped true``."""
        if self.ranges is not None:
            return f"map_index {ranges_text(self.ranges)}"
        return f"mapped {'true' if self.mapped else 'false'}"

    def failure(self, map_index: int | None) -> str | None:
        """``map_index 0-9 does not hold (map_index 12)``, or None when it holds."""
        if self.holds(map_index):
            return None
        return f"{self.text} does not hold ({_index_text(map_index)})"

    def why_held(self, map_index: int | None) -> str:
        """What an explanation adds when the condition decided: ``map_index 3 in 0-9``."""
        if map_index is None or map_index < 0:
            return _index_text(map_index)
        if self.ranges is not None:
            return f"map_index {map_index} in {ranges_text(self.ranges)}"
        return f"map_index {map_index}, mapped"
