"""The shared refusal rule of both audit writers."""

from __future__ import annotations

import time

import pytest

from lockgate.audit.health import check_health
from lockgate.errors import AuditUnavailable


def _check(**changes: object) -> None:
    args: dict[str, object] = {
        "error": None,
        "closing": False,
        "stalled_since": None,
        "queued": 0,
        "write_timeout": 1.0,
        "max_queue": 100,
    }
    args.update(changes)
    check_health(**args)  # type: ignore[arg-type]


def test_idle_and_moving_backlog_are_healthy() -> None:
    _check()
    # 99 records waiting, but the writer committed 0.1 s ago: a backlog that moves.
    _check(stalled_since=time.monotonic() - 0.1, queued=99)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"error": "disk full"}, "cannot write: disk full"),
        ({"closing": True}, "closed"),
        ({"stalled_since": time.monotonic() - 5, "queued": 1}, "pending for more than 1s"),
        ({"queued": 100}, "queue is full"),
    ],
)
def test_each_refusal_names_its_reason(changes: dict[str, object], words: str) -> None:
    with pytest.raises(AuditUnavailable, match=words):
        _check(**changes)
