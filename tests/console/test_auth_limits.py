"""Failed sign-ins within a bound per client address: each audited up to the limit, then
429 with Retry-After, the first of each kind still audited, and one count per window."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lockgate.console import auth_limits
from lockgate.console.auth_limits import MANY, FailureAudit, Flood, SignInFailures
from tests.console.test_auth import Console, make_console

__all__ = ["make_console"]  # the fixture, shared with the sign-in tests


def test_the_first_failures_of_a_window_are_audited_then_only_new_kinds() -> None:
    failures = SignInFailures(limit=3, window=60)
    assert [failures.note("a", "link_unknown", 100 + i).audit for i in range(3)] == [True] * 3
    over = failures.note("a", "link_unknown", 110)
    assert not over.audit and over.retry_after == 50
    new_kind = failures.note("a", "state_not_bound", 111)  # never hidden behind the old one
    assert new_kind.audit and new_kind.retry_after == 49
    assert failures.note("b", "link_unknown", 112).retry_after is None  # another address
    assert failures.ended(159.9) == []
    assert failures.ended(160) == [Flood("a", 100, 5, 1, 60)]
    assert failures.ended(161) == []  # reported once
    assert failures.note("a", "link_unknown", 161).retry_after is None  # a new window


def test_a_window_over_is_reported_even_when_the_next_failure_comes_first() -> None:
    failures = SignInFailures(limit=1, window=10)
    failures.note("a", "x", 0)
    failures.note("a", "x", 1)
    assert failures.note("a", "x", 12).audit  # a new window began
    assert failures.ended(12) == [Flood("a", 0, 2, 1, 10)]


def test_many_addresses_share_one_count_past_the_table() -> None:
    failures = SignInFailures(limit=1, window=60, max_clients=2)
    failures.note("a", "x", 0)
    failures.note("b", "x", 0)
    assert failures.note("c", "x", 1).audit  # the first of the shared count
    assert not failures.note("d", "x", 2).audit
    assert failures.ended(61) == [Flood(MANY, 1, 2, 1, 60)]
    assert failures.note("e", "x", 62).audit and failures.ended(200) == []


async def test_the_count_is_audited_when_the_window_ends_without_another_failure() -> None:
    reported: list[Flood] = []

    async def report(flood: Flood) -> None:
        reported.append(flood)

    audit = FailureAudit(report, SignInFailures(limit=1, window=0.2))
    assert (await audit.failed("a", "x")).audit
    for _ in range(3):
        assert not (await audit.failed("a", "x")).audit
    await asyncio.sleep(0.4)
    assert [(f.client, f.failures, f.unaudited) for f in reported] == [("a", 4, 3)]
    await audit.close()
    assert len(reported) == 1


async def test_close_audits_a_window_still_open() -> None:
    reported: list[Flood] = []

    async def report(flood: Flood) -> None:
        reported.append(flood)

    audit = FailureAudit(report, SignInFailures(limit=0, window=3600))
    await audit.failed("a", "x")
    await audit.failed("a", "x")
    await audit.close()
    assert [(f.failures, f.unaudited) for f in reported] == [(2, 1)]


async def test_a_flood_of_bad_links_is_answered_429_and_audited_once_with_its_count(
    make_console: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_limits, "LIMIT", 3)
    c: Console = await make_console(oidc=True)
    for i in range(3):
        answer = await c.use_link(f"/console/login/link?token=made-up-{i}")
        assert answer.status == 410
    assert [r.reason for r in c.audit.records] == ["link_unknown"] * 3

    for i in range(5):
        answer = await c.use_link(f"/console/login/link?token=made-up-more-{i}")
        assert answer.status == 429
        assert 0 < int(answer.headers["Retry-After"]) <= 60
        assert "Too many failed sign-ins" in await answer.text()
    assert len(c.audit.records) == 3  # the same kind again: counted, not written

    forged = await c.client.get("/console/auth/callback?state=s&code=c")
    assert forged.status == 429  # a new kind: written on its own, still answered 429
    assert c.audit.records[-1].reason == "state_not_bound"

    path = c.link()  # a good link still signs in: only failures are bounded
    assert (await c.use_link(path)).status == 200
    assert c.audit.records[-1].event == "console_signed_in"

    await c.client.close()  # the app's end: the window's count is written
    flood = c.audit.records[-1]
    assert flood.event == "console_sign_in_failed" and flood.reason == "too_many_failures"
    assert flood.decision == "deny" and flood.detail is not None
    assert flood.detail["client"] == "127.0.0.1"
    assert (flood.detail["failures"], flood.detail["unaudited"]) == (9, 5)
