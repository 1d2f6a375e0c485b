from __future__ import annotations

from pathlib import Path

from lockgate.identity import RevocationStore, TokenIssuer

from .conftest import Clock
from .conftest import mint_claims as mint


def test_jti(revocations: RevocationStore, issuer: TokenIssuer, clock: Clock) -> None:
    a, b = mint(issuer), mint(issuer)
    revocations.revoke_jti(a.jti, a.exp, "leaked")
    assert revocations.is_revoked(a)
    assert not revocations.is_revoked(b)


def test_dag_revokes_only_tokens_issued_before(
    revocations: RevocationStore, issuer: TokenIssuer, clock: Clock
) -> None:
    before = mint(issuer)
    other_dag = mint(issuer, dag_id="hr_daily")
    other_dep = mint(issuer, deployment="staging")
    revocations.revoke_dag("prod", "finance_daily")
    assert revocations.is_revoked(before)
    assert not revocations.is_revoked(other_dag)
    assert not revocations.is_revoked(other_dep)
    clock.t += 2
    assert not revocations.is_revoked(mint(issuer))  # issued after the revocation


def test_dag_for_any_deployment(revocations: RevocationStore, issuer: TokenIssuer) -> None:
    revocations.revoke_dag(None, "finance_daily")
    assert revocations.is_revoked(mint(issuer, deployment="staging"))


def test_run(revocations: RevocationStore, issuer: TokenIssuer) -> None:
    revocations.revoke_dag("prod", "finance_daily", "run1")
    assert revocations.is_revoked(mint(issuer))
    assert not revocations.is_revoked(mint(issuer, run_id="run2"))


def test_task_try(revocations: RevocationStore, issuer: TokenIssuer, clock: Clock) -> None:
    revocations.revoke_task_try("prod", "finance_daily", "load_orders", "run1", 1, -1)
    clock.t += 100  # any time later: the try is over
    assert revocations.is_revoked(mint(issuer))
    assert not revocations.is_revoked(mint(issuer, try_number=2))
    assert not revocations.is_revoked(mint(issuer, map_index=0))
    assert not revocations.is_revoked(mint(issuer, task_id="other"))


def test_second_instance_sees_revocations_after_refresh(
    gateway_and_cli: tuple[RevocationStore, RevocationStore], issuer: TokenIssuer
) -> None:
    server, cli = gateway_and_cli
    a, b, c = mint(issuer), mint(issuer, dag_id="orders_x"), mint(issuer, try_number=7)
    assert server.refresh() is False  # nothing new
    cli.revoke_jti(a.jti, a.exp, "cli")
    cli.revoke_dag("prod", "orders_x", None, "cli")
    cli.revoke_task_try("prod", "finance_daily", "load_orders", "run1", 7, -1)
    assert not server.is_revoked(a)  # answered from memory until refreshed
    assert server.refresh() is True
    assert server.is_revoked(a) and server.is_revoked(b) and server.is_revoked(c)
    assert {r.kind for r in server.list()} == {"jti", "dag", "task_try"}


def test_rows_are_purged_after_expiry(tmp_path: Path, issuer: TokenIssuer, clock: Clock) -> None:
    store = RevocationStore(tmp_path / "r.db", retention=100, clock=clock)
    try:
        a = mint(issuer)
        store.revoke_jti(a.jti, clock.t + 50, "x")
        store.revoke_dag("prod", "finance_daily")
        assert len(store.list()) == 2
        clock.t += 200
        assert store.refresh() is True
        assert store.list() == []
    finally:
        store.close()


def test_jti_revoked_by_a_deployment_reaches_only_its_tokens(
    revocations: RevocationStore, issuer: TokenIssuer
) -> None:
    prod = mint(issuer)
    revocations.revoke_jti(prod.jti, prod.exp, "not yours", deployment="staging")
    assert not revocations.is_revoked(prod)
    revocations.refresh(force=True)  # the same answer once rebuilt from the file
    assert not revocations.is_revoked(prod)
    revocations.revoke_jti(prod.jti, prod.exp, "mine", deployment="prod")
    assert revocations.is_revoked(prod)
    assert {r.target["deployment"] for r in revocations.list()} == {"staging", "prod"}


def test_unscoped_jti_rows_of_an_older_store_still_revoke(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    import sqlite3

    a = mint(issuer)
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute(
        "CREATE TABLE revoked_jti (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL, "
        "reason TEXT NOT NULL, revoked_at REAL NOT NULL)"
    )
    db.execute("INSERT INTO revoked_jti VALUES (?, ?, 'old', 0)", (a.jti, a.exp))
    db.commit()
    db.close()
    store = RevocationStore(tmp_path / "old.db", clock=lambda: a.iat)
    try:
        assert store.is_revoked(a)
        assert store.list()[0].target == {"jti": a.jti, "deployment": None}
    finally:
        store.close()
