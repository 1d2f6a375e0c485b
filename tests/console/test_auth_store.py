"""The console's sign-in state (:mod:`lockgate.console.sessions`): digests only, single use,
expiry and idle timeout, purging."""

from __future__ import annotations

import pytest

from lockgate.console import sessions
from lockgate.console.sessions import PENDING_TTL, ConsoleStore, Pending, digest
from lockgate.console.web import ConsoleUser

ANN = ConsoleUser(subject="oid-ann", name="ann", role="operator", via="oidc")


_SELECT = {
    table: f"SELECT * FROM {table}"  # noqa: S608 (fixed names)
    for table in ("console_sessions", "console_pending", "console_links")
}


def _rows(store: ConsoleStore, table: str) -> list[tuple[object, ...]]:
    with store.db.read() as cur:
        cur.execute(_SELECT[table])
        return cur.fetchall()


def test_a_session_lives_while_used_and_ends_idle_or_at_its_ttl() -> None:
    store = ConsoleStore(None, idle_timeout=100)
    sid = store.start(ANN, ttl=1000, now=0)
    assert all(sid not in map(str, row) for row in _rows(store, "console_sessions"))
    assert _rows(store, "console_sessions")[0][0] == digest(sid)
    for t in (50, 120, 190, 260):  # each request within the idle timeout keeps it alive
        session = store.lookup(sid, idle_timeout=100, now=t)
        assert session is not None and session.user == ANN and session.csrf
    assert store.lookup(sid, idle_timeout=100, now=1000) is None  # the ttl ends it
    assert _rows(store, "console_sessions") == []  # and it is gone
    sid = store.start(ANN, ttl=1000, now=2000)
    assert store.lookup(sid, idle_timeout=100, now=2100) is None  # idle
    assert store.lookup("not-a-session", idle_timeout=100, now=2100) is None


def test_each_session_has_its_own_csrf_token_and_sign_out_ends_it() -> None:
    store = ConsoleStore(None)
    one, two = store.start(ANN, ttl=100), store.start(ANN, ttl=100)
    a, b = store.lookup(one, idle_timeout=50), store.lookup(two, idle_timeout=50)
    assert a is not None and b is not None and a.csrf != b.csrf
    assert store.end(one) and not store.end(one)
    assert store.lookup(one, idle_timeout=50) is None
    assert store.lookup(two, idle_timeout=50) is not None


def test_a_pending_sign_in_is_taken_once_within_its_time() -> None:
    store = ConsoleStore(None)
    pending = Pending(nonce="n", verifier="v", next_path="/console/audit")
    store.remember("state-1", pending, now=0)
    store.remember("state-2", pending, now=0)
    assert all("state-1" not in map(str, row) for row in _rows(store, "console_pending"))
    assert store.take("state-1", now=1) == pending
    assert store.take("state-1", now=2) is None
    assert store.take("state-2", now=PENDING_TTL + 1) is None


def test_a_link_is_used_once_before_it_expires() -> None:
    store = ConsoleStore(None)
    token = store.add_link(ttl=60, now=0)
    assert store.link_state(token, now=1) == "usable"
    assert store.use_link(token, now=1) and not store.use_link(token, now=2)
    assert store.link_state(token, now=2) == "used"
    late = store.add_link(ttl=60, now=0)
    assert not store.use_link(late, now=61)
    assert store.link_state(late, now=61) == "expired"
    assert store.link_state("made-up") == "unknown"


def test_expired_and_idle_rows_are_purged() -> None:
    store = ConsoleStore(None, idle_timeout=100)
    store.start(ANN, ttl=50, now=0)
    store.start(ANN, ttl=10_000, now=0)
    store.remember("s", Pending("n", "v", "/console/"), now=0)
    store.add_link(ttl=10, now=0)
    store.add_link(ttl=10, now=10_000)  # a write after a minute purges
    assert len(_rows(store, "console_sessions")) == 0  # one expired, one idle
    assert _rows(store, "console_pending") == []
    assert len(_rows(store, "console_links")) == 2  # kept a day past expiry: "expired"
    store.add_link(ttl=10, now=100_000)
    assert len(_rows(store, "console_links")) == 1  # a day on, only the newest is left


def test_pending_sign_ins_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone may start a sign-in: the table of pending ones must not grow without bound,
    and a full table drops its oldest rather than refusing the next sign-in."""
    monkeypatch.setattr(sessions, "MAX_PENDING", 3)
    store = ConsoleStore(None)
    pending = Pending("n", "v", "/console/")
    for i in range(3):
        store.remember(f"s{i}", pending, now=i)
    store.remember("s3", pending, now=3)
    assert len(_rows(store, "console_pending")) == 3
    assert store.take("s0", now=4) is None  # the oldest made room
    assert store.take("s3", now=4) == pending
    store.remember("s4", pending, now=PENDING_TTL + 100)  # the old ones expired
    assert len(_rows(store, "console_pending")) == 1
