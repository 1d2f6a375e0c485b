"""The gateway's classification against the test node's own reading of the same text.

The node (``lockgate.demo.standins.cqlserver``) lexes and parses with code written separately from
Cassandra's grammar. For each edge of the lexer an attacker would try (ANTLR's choices on
``-nab``, ``1.e5``, ``0x`` and ``1e+``; NUL, BOM, no-break and line-separator characters;
surrogate pairs in quoted names; ``$$`` strings holding quotes; CR-ended comments; texts past
the 4 KiB classification cache) the gateway must either refuse the text (admin on ``*``),
or judge exactly what the node would run; the node refusing a text the gateway allows is
harmless (nothing runs). Conditional writes are a read too, on both sides.
"""

# ruff: noqa: S608  (building CQL text from parts is this test's whole point)
from __future__ import annotations

import pytest

from lockgate.demo.standins.cqlserver import cql
from lockgate.demo.standins.cqlserver.execlog import describe_all
from lockgate.demo.standins.cqlserver.grammar import parse
from lockgate.gateway.cql.classify import classify
from lockgate.gateway.cql.statements import CACHE_TEXT_MAX

SECRET = "DELETE FROM ks.secret WHERE id = 1"
TEXTS = [
    "SELECT * FROM ks.orders WHERE id = -nab",
    "SELECT * FROM ks.orders WHERE id = 1.e5",
    "SELECT * FROM ks.orders WHERE id = 0x",
    "SELECT * FROM ks.orders WHERE id = 1e+",
    f"SELECT * FROM ks.orders WHERE id = 1\x00; {SECRET}",
    "\ufeffSELECT * FROM ks.orders",
    'SELECT * FROM ks."or\U0001f600ders"',
    f"SELECT * FROM ks.orders WHERE id = 1 -- \u2028{SECRET}\n",
    f"SELECT * FROM ks.orders WHERE id = 1 -- \u0085{SECRET}\n",
    f"SELECT * FROM ks.orders -- x\x0b{SECRET}\n",
    "SELECT * FROM\u00a0ks.secret",
    "SELECT * FROM ks.orders WHERE v = $$ $ $$",
    "SELECT * FROM ks.orders WHERE v = '$$' AND w = '$$'",
    f"SELECT * FROM ks.orders WHERE v = $$'$$ ; {SECRET}; $$'$$",
    f"SELECT * FROM ks.orders\r-- x\r{SECRET}",
    "SELECT * FROM ks.orders WHERE id = 1 /* */ ; ;",
    'SELECT * FROM "ks"."orders"',
    "SELECT * FROM KS.Orders",
    "SELECT * FROM ks.orders WHERE id = 1" + " " * CACHE_TEXT_MAX,
    f"SELECT * FROM ks.orders WHERE v = '{'x' * CACHE_TEXT_MAX}' -- \r{SECRET}",
    "INSERT INTO ks.items (id, v) VALUES (1, 'a') IF NOT EXISTS",
    "UPDATE items SET v = 'a' WHERE id = 1 IF EXISTS",
    "DELETE FROM ks.items WHERE id = 1 IF EXISTS;",
    "BEGIN BATCH INSERT INTO items (id, v) VALUES (1, 'a') IF NOT EXISTS APPLY BATCH",
    'USE "Other"',
    "SELECT * FROM system.local WHERE key = 'local'",
]
REFUSED = [("admin", "*")]


def node_targets(text: str, keyspace: str) -> list[tuple[str, str]] | None:
    """What the node would run for ``text``; None when it refuses the text."""
    try:
        stmt, _ = parse(text)
    except cql.CqlError:
        return None
    children = stmt.statements if isinstance(stmt, cql.Batch) else [stmt]
    return [(action, obj) for child in children for _, action, obj in describe_all(child, keyspace)]


def agrees(gateway: list[tuple[str, str]], node: list[tuple[str, str]] | None) -> bool:
    """Safe: the gateway refuses, the node refuses (nothing runs), or both judge alike."""
    return node is None or gateway in (REFUSED, node)


@pytest.mark.parametrize("text", TEXTS, ids=[repr(t)[:50] for t in TEXTS])
def test_gateway_refuses_or_judges_what_the_node_runs(text: str) -> None:
    gateway = [(t.action, t.object) for t in classify(text, "ks")]
    node = node_targets(text, "ks")
    assert agrees(gateway, node), (gateway, node)


def test_the_comparison_can_fail() -> None:
    # What a gateway ending comments at LF only would have judged, against what the node runs.
    text = f"-- x\r{SECRET} /*\nSELECT * FROM ks.orders -- */"
    assert not agrees([("read", "ks.orders")], node_targets(text, "ks"))
    # and a conditional write judged as a write alone
    lwt = "UPDATE ks.items SET v = 'a' WHERE id = 1 IF EXISTS"
    assert not agrees([("write", "ks.items")], node_targets(lwt, "ks"))
