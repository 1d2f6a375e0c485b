"""MemoryFallback: the switch a room flips while the state database cannot answer."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from lockgate.errors import StoreUnavailable
from lockgate.store.fallback import MemoryFallback

LOG = logging.getLogger("lockgate.test.fallback")


def _db(dialect: str, unreached: float = 0.0) -> Any:
    return SimpleNamespace(
        dialect=dialect, label="db", unreached_for=lambda: unreached,
        settings=SimpleNamespace(catch_up_interval=1.0),
    )  # fmt: skip


def _fallback(db: Any, cleared: list[int]) -> MemoryFallback:
    return MemoryFallback(
        db, threading.Lock(), LOG, fell_back="counted in memory", recovered="shared again",
        on_recovery=lambda: cleared.append(1),
    )  # fmt: skip


def test_down_and_back_logged_once_each_way(caplog: pytest.LogCaptureFixture) -> None:
    cleared: list[int] = []
    fallback = _fallback(_db("postgresql"), cleared)
    fallback.recovered()  # never down: nothing said, nothing cleared
    with caplog.at_level(logging.INFO, logger=LOG.name):
        fallback.fell_back(StoreUnavailable("gone"))
        fallback.fell_back(StoreUnavailable("gone"))
        assert fallback.degraded
        fallback.recovered()
        fallback.recovered()
    assert [r.getMessage() for r in caplog.records] == ["counted in memory", "shared again"]
    assert cleared == [1] and not fallback.degraded


def test_a_shared_database_known_down_is_not_asked() -> None:
    with pytest.raises(StoreUnavailable, match="not reached for 4 s"):
        _fallback(_db("postgresql", unreached=4.0), []).refuse_if_known_down()
    _fallback(_db("postgresql", unreached=2.0), []).refuse_if_known_down()  # within 3 intervals
    _fallback(_db("sqlite", unreached=99.0), []).refuse_if_known_down()  # a file: always asked
