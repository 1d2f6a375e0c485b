"""The kill switch in the revocation store: blocks, deployment-wide revocation, fast refresh."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lockgate.identity import RevocationStore, TokenIssuer
from lockgate.identity.revocation import REFRESH_INTERVAL

from .conftest import T0, Clock
from .conftest import mint_claims as mint


def test_block_refuses_every_token_of_the_dag_until_unblocked(
    revocations: RevocationStore, issuer: TokenIssuer, clock: Clock
) -> None:
    before = mint(issuer)
    blk = revocations.block("prod", "finance_daily", "operator alice", "incident 42")
    assert revocations.blocked("prod", "finance_daily") == blk
    assert revocations.blocked("prod", "hr_daily") is None
    assert revocations.blocked("staging", "finance_daily") is None
    clock.t += 30
    during = mint(issuer)  # however it was minted, while blocked it is refused
    assert revocations.is_revoked(before) and revocations.is_revoked(during)
    assert not revocations.is_revoked(mint(issuer, dag_id="hr_daily"))

    assert revocations.unblock("prod", "finance_daily") is True
    assert revocations.unblock("prod", "finance_daily") is False  # nothing left to lift
    assert revocations.blocked("prod", "finance_daily") is None
    clock.t += 2
    assert revocations.is_revoked(before)  # revoked by the block, stays revoked
    assert not revocations.is_revoked(mint(issuer))  # new tokens work again


def test_block_message_names_who_when_and_why(revocations: RevocationStore) -> None:
    blk = revocations.block(None, "finance_daily", "operator alice", "incident 42")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0))
    assert blk.message("finance_daily") == (
        f"DAG finance_daily is blocked by operator alice since {when}: incident 42"
    )
    whole = revocations.block("prod", None, "deployment prod")
    assert whole.message("hr_daily") == (
        f"DAG hr_daily of deployment prod is blocked (the whole deployment is) "
        f"by deployment prod since {when}"
    )
    assert whole.message().startswith("every DAG of deployment prod is blocked")


def test_deployment_block_covers_every_dag_of_that_deployment_only(
    revocations: RevocationStore, issuer: TokenIssuer
) -> None:
    revocations.block("prod", None, "operator bob")
    assert revocations.blocked("prod", "anything") is not None
    assert revocations.blocked("staging", "anything") is None
    assert revocations.is_revoked(mint(issuer, dag_id="hr_daily"))
    assert not revocations.is_revoked(mint(issuer, deployment="staging"))
    with pytest.raises(ValueError):
        revocations.block(None, None, "operator bob")


def test_deployment_wide_revocation(
    revocations: RevocationStore, issuer: TokenIssuer, clock: Clock
) -> None:
    a, b = mint(issuer), mint(issuer, dag_id="hr_daily")
    revocations.revoke_dag("prod", "*")
    assert revocations.is_revoked(a) and revocations.is_revoked(b)
    assert not revocations.is_revoked(mint(issuer, deployment="staging"))
    clock.t += 2
    assert not revocations.is_revoked(mint(issuer))  # issued after it


def test_blocks_persist_and_reach_other_processes(
    gateway_and_cli: tuple[RevocationStore, RevocationStore], issuer: TokenIssuer, clock: Clock
) -> None:
    gateway, cli = gateway_and_cli
    token = mint(issuer)
    cli.block(None, "finance_daily", "operator carol", "leak")
    assert gateway.blocked("prod", "finance_daily") is None  # memory until refreshed
    assert gateway.refresh() is True
    assert gateway.blocked("prod", "finance_daily") is not None
    assert gateway.is_revoked(token)
    (row,) = [r for r in gateway.list() if r.kind == "block"]
    assert row.target == {"deployment": None, "dag_id": "finance_daily"}
    assert (row.by, row.since, row.reason, row.expires_at) == ("operator carol", T0, "leak", None)
    gateway.close()
    clock.t += 7 * 86400  # a week later, after a restart: blocks do not expire
    restarted = RevocationStore(gateway.path, clock=clock)
    try:
        assert restarted.blocked("prod", "finance_daily") is not None
        assert cli.unblock(None, "finance_daily")
        restarted.refresh()
        assert restarted.blocked("prod", "finance_daily") is None
    finally:
        restarted.close()


def test_refresh_is_cheap_enough_to_run_every_interval(tmp_path: Path) -> None:
    store = RevocationStore(tmp_path / "r.db")
    try:
        store.refresh()
        n = 2000
        start = time.perf_counter()
        for _ in range(n):
            store.refresh()
        per_call = (time.perf_counter() - start) / n
    finally:
        store.close()
    # One PRAGMA when nothing changed: far below 1% of a core at REFRESH_INTERVAL.
    assert per_call < REFRESH_INTERVAL / 100, per_call
    assert REFRESH_INTERVAL <= 0.25
