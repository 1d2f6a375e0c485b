"""The fake Cosmos DB account's SQL subset: what it accepts, what it refuses."""

from __future__ import annotations

import pytest

from lockgate.demo.standins.cosmos.query import QueryError, parse_query, run_query

DOCS = [
    {"id": "1", "n": 1, "flag": True, "s": "it's", "deep": {"k": "v"}},
    {"id": "2", "n": 1.0, "flag": False, "s": "x"},
    {"id": "3", "n": 2},
]


@pytest.mark.parametrize(
    ("sql", "params", "ids"),
    [
        ("SELECT * FROM c", {}, ["1", "2", "3"]),
        ("select * from root r where r.n = 1", {}, ["1", "2"]),
        ("SELECT * FROM c WHERE c.n = @n AND c.flag = false", {"@n": 1}, ["2"]),
        ("SELECT * FROM c WHERE c.flag = true", {}, ["1"]),
        ("SELECT * FROM c WHERE c.n = true", {}, []),  # no type coercion
        ("SELECT * FROM c WHERE c.s = 'it\\'s'", {}, ["1"]),
        ('SELECT * FROM c WHERE c.deep.k = "v"', {}, ["1"]),
        ("SELECT * FROM c WHERE c.missing = null", {}, []),  # undefined is not null
        ("SELECT TOP 1 * FROM c WHERE c.n = 1", {}, ["1"]),
    ],
)
def test_supported(sql: str, params: dict[str, object], ids: list[str]) -> None:
    assert [d["id"] for d in run_query(parse_query(sql), params, DOCS)] == ids


def test_count() -> None:
    assert run_query(parse_query("SELECT VALUE COUNT(1) FROM c WHERE c.n = 1"), {}, DOCS) == [2]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT c.id FROM c",
        "SELECT * FROM c ORDER BY c.id",
        "SELECT * FROM c WHERE c.n > 1",
        "SELECT * FROM c WHERE c.n = 1 OR c.n = 2",
        "SELECT * FROM c WHERE d.n = 1",
        "SELECT TOP x * FROM c",
        "SELECT VALUE SUM(c.n) FROM c",
        "DELETE FROM c",
        "SELECT * FROM c; DROP",
    ],
)
def test_refused(sql: str) -> None:
    with pytest.raises(QueryError):
        parse_query(sql)


def test_missing_parameter() -> None:
    with pytest.raises(QueryError):
        run_query(parse_query("SELECT * FROM c WHERE c.n = @n"), {}, DOCS)
