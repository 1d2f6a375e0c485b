"""The refusal budget and description sanitising, on a settable clock (no sockets)."""

from __future__ import annotations

from lockgate.gateway.refusals import RefusalBudget, Suppressed, describe, peer_key


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def budget(**kw: int | float) -> tuple[RefusalBudget, Clock, list[Suppressed]]:
    clock = Clock()
    reports: list[Suppressed] = []
    b = RefusalBudget(clock=clock, report=reports.append, **kw)  # type: ignore[arg-type]
    return b, clock, reports


def test_burst_then_counted_then_one_summary_per_window() -> None:
    b, clock, reports = budget(burst=3, window=10.0)
    verdicts = [b.admit("10.0.0.1", "bad_chunk" if i % 2 else "malformed_head") for i in range(8)]
    assert verdicts == [True, True, True, False, False, False, False, False]
    assert b.admit("10.0.0.2", "malformed_head")  # another peer has its own budget
    assert reports == []
    clock.t += 10.0
    assert b.admit("10.0.0.1", "malformed_head")  # a new window, and the old one reported
    assert reports == [Suppressed("10.0.0.1", 5, {"bad_chunk": 3, "malformed_head": 2}, 10.0)]


def test_a_window_without_suppressions_reports_nothing() -> None:
    b, clock, reports = budget(burst=3, window=1.0)
    b.admit("10.0.0.1", "x")
    clock.t += 5
    b.flush()
    b.close()
    assert reports == []


def test_peers_beyond_the_cap_share_one_budget() -> None:
    b, _clock, reports = budget(burst=2, window=60.0, max_peers=3)
    for i in range(3):
        assert b.admit(f"10.0.0.{i}", "x")
    # 10.0.1.x are new peers while the table is full: they share the "*" entry
    assert [b.admit(f"10.0.1.{i}", "y") for i in range(4)] == [True, True, False, False]
    b.close()
    assert reports == [Suppressed("*", 2, {"y": 2}, 60.0)]


def test_describe_is_printable_ascii_and_bounded() -> None:
    raw = b"GET /a\x00b\x1b[31m\xff\\ HTTP/1.1"
    assert describe(raw) == "GET /a\\x00b\\x1b[31m\\xff\\\\ HTTP/1.1"
    assert describe("caf\u00e9") == "caf\\xc3\\xa9"  # str input: its UTF-8 bytes, escaped
    long = describe(b"\x00" * 1000, limit=50)
    assert long.endswith("...") and len(long) <= 53
    assert all(0x20 <= ord(c) < 0x7F for c in long)
    assert describe(b"x" * 50, limit=50) == "x" * 50


def test_peer_key_drops_the_port() -> None:
    assert peer_key(("127.0.0.1", 5555)) == "127.0.0.1"
    assert peer_key(("::1", 5555, 0, 0)) == "::1"
    assert peer_key(None) == "unknown"
