"""Glob intersection (policy/overlap.py) against brute force on a small alphabet."""

from __future__ import annotations

import itertools
from fnmatch import fnmatchcase

from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.policy.globs import Kind, match_one
from lockgate.policy.overlap import intersects

ALPHABET = "ab/"
# every string up to this long over ALPHABET: a common string of two patterns drawn below
# (at most 5 symbols each) exists among them when one exists at all
STRINGS = ["".join(p) for n in range(7) for p in itertools.product(ALPHABET, repeat=n)]

# only a, b and / can be literal characters of these patterns, so ALPHABET suffices
PIECES = ["a", "b", "/", "*", "**", "?", "[ab]", "[!a]", "[a-b]", "[/]", "[!/]"]
patterns = st.lists(st.sampled_from(PIECES), max_size=4).map("".join)


def matches(pattern: str, value: str, kind: Kind) -> bool:
    return fnmatchcase(value, pattern) if kind == "name" else match_one(pattern, value, kind)


def brute(a: str, b: str, kind: Kind) -> bool:
    return any(matches(a, s, kind) and matches(b, s, kind) for s in STRINGS)


@settings(max_examples=400, deadline=None)
@given(patterns, patterns, st.sampled_from(["name", "object"]))
def test_intersects_agrees_with_brute_force(a: str, b: str, kind: Kind) -> None:
    assert intersects(a, b, kind) == brute(a, b, kind)


def test_examples() -> None:
    assert intersects("airflow:prod/etl_*/*", "airflow:prod/etl_orders/load", "name")
    assert not intersects("airflow:prod/etl_orders/*", "airflow:prod/etl_orders_v2/*", "name")
    assert intersects("airflow:*/x", "airflow:prod/etl/*", "name")
    assert intersects("/orders/**", "/orders/*/items", "object")
    assert not intersects("/orders/*", "/orders/a/b", "object")
    assert intersects("*", "/anything/at/all", "object")
    assert intersects("*", "[", "name")  # an unclosed [ is a literal
    assert not intersects("[", "a*", "name")
    assert intersects("[!]a]", "x", "name") and not intersects("[!]a]", "]", "name")
    # a DAG's tasks stay in one segment when read as an object glob
    assert not intersects("airflow:prod/etl/*", "airflow:prod/etl/a/b", "object", "name")
