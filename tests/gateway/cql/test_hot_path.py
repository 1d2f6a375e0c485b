"""The engine's hot-path shortcuts keep their meaning: the classify cache and coalesced writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockgate.gateway.cql import codec
from lockgate.gateway.cql.classify import classify
from lockgate.gateway.cql.statements import CACHE_TEXT_MAX, classify_statement

from .engine_stack import RawClient, Stack, stack_fixture


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


def test_classify_cache_matches_classify_and_is_keyed_by_keyspace() -> None:
    text = "INSERT INTO orders (id, item) VALUES (?, ?)"
    first = classify_statement(text, "ks")
    assert first == classify(text, "ks") and first[0].object == "ks.orders"
    first.clear()  # a caller mutating its list must not poison the cache
    assert classify_statement(text, "ks") == classify(text, "ks")
    assert classify_statement(text, "other")[0].object == "other.orders"
    long_text = "SELECT * FROM ks.orders WHERE item = '" + "x" * CACHE_TEXT_MAX + "'"  # noqa: S608
    assert classify_statement(long_text, None) == classify(long_text, None)


async def test_pipelined_requests_in_one_write_all_get_their_own_answer(stack: Stack) -> None:
    raw = await RawClient.open(stack.port)
    try:
        assert isinstance(await raw.login(stack.token("etl")), codec.AuthSuccess)
        frames = []
        for i in range(1, 201):
            query = (
                "DROP TABLE ks.orders"
                if i == 100
                else f"INSERT INTO ks.orders (id, item) VALUES ({i:d}, 'p')"  # noqa: S608
            )
            frames.append(raw.conn.send(codec.Query(stream=i, query=query)))
        raw.writer.write(b"".join(frames))  # one write: the gateway sees many frames per read
        answers: dict[int, codec.Event] = {}
        while len(answers) < 200:
            event = await raw.recv(10.0)
            assert event is not None, f"connection closed after {len(answers)} answers"
            answers[event.stream] = event
        assert isinstance(answers[100], codec.Error)
        assert answers[100].code == codec.ERR_UNAUTHORIZED
        others = [e for s, e in answers.items() if s != 100]
        assert all(isinstance(e, codec.Result) for e in others)
        raw.send(codec.Query(stream=300, query="SELECT count(*) FROM ks.orders"))
        count = await raw.recv(10.0)
        assert isinstance(count, codec.Rows) and count.stream == 300
    finally:
        raw.close()
    inserts = [t for _, t in stack.fake.user_statements() if t.startswith("INSERT")]
    assert len(inserts) == 199
    assert len(stack.audit("allowed")) >= 199
