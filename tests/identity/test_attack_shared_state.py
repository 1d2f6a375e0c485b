"""Attacks on the identity room's shared state (real PostgreSQL): the replay ledger of client
assertions hit by two replicas at the same instant or across clock skew, revocations racing
reloads, a block on one replica against a mint on another, and the ``signing_keys`` table
written by someone who holds database credentials but not the master key.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from lockgate.config import PostgresStateSettings
from lockgate.errors import AuthenticationError, ConfigError
from lockgate.identity import KeyStore, RevocationStore, TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.identity.once import OnceLedger
from lockgate.identity.staleness import STALE_REASON, StalenessBound
from lockgate.store import PostgresDatabase

from .conftest import ISSUER

AUD = "orders-api"
IDENT = TaskIdentity("prod", "finance_daily", "load_orders", "run1", 1)
OpenHandle = Callable[[str], PostgresDatabase]


@pytest.fixture
def handles(pg_state: Callable[..., PostgresStateSettings]) -> Iterator[OpenHandle]:
    """``handles(replica_id)``: another replica's view of one shared database."""
    settings = pg_state(catch_up_interval=0.2)
    opened: list[PostgresDatabase] = []

    def open_handle(replica_id: str) -> PostgresDatabase:
        db = PostgresDatabase(settings, replica_id=replica_id)
        opened.append(db)
        return db

    yield open_handle
    for db in opened:
        db.close()


def _sql(db: PostgresDatabase, sql: str, params: tuple[object, ...] = ()) -> None:
    with db.transaction() as cur:
        cur.execute(sql, params)


# -- the replay ledger --------------------------------------------------------------------


def test_one_assertion_at_many_replicas_at_once_is_accepted_once(handles: OpenHandle) -> None:
    """What holds: eight replicas claim the same jti at the same instant, forty times over:
    exactly one wins each time (one INSERT ... ON CONFLICT on a primary key)."""
    ledgers = [OnceLedger(handles(f"r{i}")) for i in range(8)]
    barrier = threading.Barrier(len(ledgers))
    now = time.time()

    for _ in range(40):
        jti = uuid.uuid4().hex

        def claim(ledger: OnceLedger, jti: str = jti) -> bool:
            barrier.wait()
            return ledger.claim("prod", jti, now + 300, now)

        with ThreadPoolExecutor(len(ledgers)) as pool:
            wins = list(pool.map(claim, ledgers))
        assert wins.count(True) == 1, wins


def test_a_replica_with_a_fast_clock_does_not_reopen_a_replay(handles: OpenHandle) -> None:
    """Replica A's clock is 3 s ahead of B's (NTP not yet settled after a boot). A jti used
    at B, still inside its lifetime by B's clock, must not be purged by A's next claim (rows
    outlive their expiry by a margin), so replayed to B it is refused."""
    a, b = OnceLedger(handles("a")), OnceLedger(handles("b"))
    expires = 10_000.0  # the assertion's exp plus leeway
    assert b.claim("prod", "captured", expires, now=expires - 10)
    assert a.claim("prod", "unrelated", expires + 600, now=expires + 1)  # A: 3 s ahead
    assert not b.claim("prod", "captured", expires, now=expires - 2), "replayed at B"


# -- revocations ----------------------------------------------------------------------------


def test_revocations_written_during_reloads_are_never_lost(handles: OpenHandle) -> None:
    """What holds: replica B revokes 200 jtis while replica A reloads as fast as it can;
    once A's change version has caught up, one ordinary refresh leaves A holding every one
    (the version is read before the rows, so a write landing mid-reload is read again)."""
    db_a, db_b = handles("a"), handles("b")
    db_a.start_watching()
    a, b = RevocationStore(db_a), RevocationStore(db_b)
    jtis = [uuid.uuid4().hex for _ in range(200)]
    done = threading.Event()

    def revoke_all() -> None:
        for jti in jtis:
            b.revoke_jti(jti, time.time() + 600, "attack")
        done.set()

    writer = threading.Thread(target=revoke_all)
    writer.start()
    while not done.is_set():
        a.refresh()
    writer.join()
    deadline = time.monotonic() + 3
    while db_a.version("revocations") < db_b.version("revocations"):
        assert time.monotonic() < deadline, "A never saw B's last write"
        time.sleep(0.01)
    a.refresh()
    missing = [j for j in jtis if j not in a._jtis]
    assert not missing, f"{len(missing)} revocations lost"


def test_a_revocation_after_a_failover_that_lost_commits_is_loaded(handles: OpenHandle) -> None:
    """PostgreSQL fails over to a standby that had not received the last three commits (an
    asynchronous replica, or a restore to a point in time): ``lockgate_changes`` is three
    versions behind what every running replica holds in memory. The next revocation bumps
    the version to a value a replica has already seen, so it is not reloaded (until the
    once-a-minute purge reload: revocations are bounded by that, keys are not, below)."""
    db_a, db_b = handles("a"), handles("b")
    db_a.start_watching()
    a, b = RevocationStore(db_a), RevocationStore(db_b)
    for _ in range(5):
        b.revoke_jti(uuid.uuid4().hex, time.time() + 600)
    deadline = time.monotonic() + 2
    while db_a.version("revocations") < 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    a.refresh()
    _sql(db_b, "UPDATE lockgate_changes SET version = version - 3 WHERE topic = 'revocations'")

    b.revoke_jti("after-failover", time.time() + 600, "incident")
    deadline = time.monotonic() + 2.0
    while "after-failover" not in a._jtis and time.monotonic() < deadline:
        a.refresh()
        time.sleep(0.05)
    assert "after-failover" in a._jtis, f"A holds version {db_a.version('revocations')}"


def test_an_emergency_key_retirement_after_a_failover_reaches_every_replica(
    handles: OpenHandle,
) -> None:
    """As above, for signing keys: a leaked key retired at once (``retire_after=0``) on B
    after the failover is still trusted by A -- with no bound (keys reload only when their
    version moves)."""
    master = os.urandom(32)
    db_a, db_b = handles("a"), handles("b")
    db_a.start_watching()
    keys_b = KeyStore(db_b, master_key=master)
    keys_a = KeyStore(db_a, master_key=master)
    leaked, _ = TokenIssuer(keys_b, ISSUER).mint(IDENT, AUD, 600)
    for _ in range(4):
        with db_b.transaction() as cur:
            cur.touch("keys")
    deadline = time.monotonic() + 2
    while db_a.version("keys") < db_b.version("keys"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    keys_a.reload()
    _sql(db_b, "UPDATE lockgate_changes SET version = version - 3 WHERE topic = 'keys'")

    keys_b.rotate(retire_after=0)
    verifier_a = TokenVerifier(keys_a, None, ISSUER)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        keys_a.reload()
        try:
            verifier_a.verify(leaked, AUD)
        except AuthenticationError:
            return
        time.sleep(0.05)
    pytest.fail("A still verifies tokens of the key B retired in an emergency")


def test_revocations_that_cannot_be_reloaded_count_as_stale(
    pg_state: Callable[..., PostgresStateSettings],
) -> None:
    """A session holds a lock on ``revoked_jti`` (a migration stuck behind a long
    transaction, a DBA's ALTER TABLE, anyone with the table's privileges). Replica A hears
    of B's revocation through the change feed, but every reload of the rows times out; the
    feed keeps answering, so ``stale_for`` stays near zero and A serves the revoked token
    for as long as the lock is held."""
    settings = pg_state(catch_up_interval=0.2, max_staleness=1.0, statement_timeout=0.5)
    db_a = PostgresDatabase(settings, replica_id="a")
    db_b = PostgresDatabase(settings, replica_id="b")
    try:
        db_a.start_watching()
        a, b = RevocationStore(db_a), RevocationStore(db_b)
        b.revoke_jti("revoked-elsewhere", time.time() + 600, "incident")
        assert settings.password_file is not None
        locker = psycopg.connect(settings.dsn, password=settings.password_file.read_text().strip())
        try:
            locker.execute("LOCK TABLE revoked_jti IN ACCESS EXCLUSIVE MODE")
            deadline = time.monotonic() + 3 * settings.max_staleness
            while time.monotonic() < deadline:
                a.refresh()  # the gateway's 0.2 s tick
                time.sleep(0.2)
            refused = "revoked-elsewhere" in a._jtis
            assert refused or db_a.stale_for() > settings.max_staleness, (
                f"not loaded, yet stale_for() = {db_a.stale_for():.2f} s"
            )
        finally:
            locker.close()
    finally:
        db_a.close()
        db_b.close()


def test_a_block_on_one_replica_refuses_a_token_minted_on_another_just_after(
    handles: OpenHandle,
) -> None:
    """What holds: a DAG blocked on A while B, not yet aware, mints a token for it in the
    next second (its iat after the block, so no "issued before" rule can catch it): once
    B and C follow the change, the block itself refuses the token everywhere."""
    db_a, db_b, db_c = handles("a"), handles("b"), handles("c")
    for db in (db_b, db_c):
        db.start_watching()
    a, b, c = RevocationStore(db_a), RevocationStore(db_b), RevocationStore(db_c)
    keys = KeyStore(db_b, master_key=bytes(32))
    issuer = TokenIssuer(keys, ISSUER)
    a.block("prod", "finance_daily", by="security", reason="incident")
    time.sleep(1.1)
    token, claims = issuer.mint(IDENT, AUD, 600)  # B had not refreshed
    assert claims.iat > time.time() - 2
    for store in (b, c):
        deadline = time.monotonic() + 1.0
        while not store.is_revoked(claims):
            assert time.monotonic() < deadline, "block not enforced within a second"
            store.refresh()
            time.sleep(0.02)
        verifier = TokenVerifier(keys, store, ISSUER)
        with pytest.raises(AuthenticationError) as caught:
            verifier.verify(token, AUD)
        assert caught.value.reason == "revoked"


def test_revocation_reasons_that_look_like_sql_are_data(handles: OpenHandle) -> None:
    """What holds: a jti or reason carrying SQL or placeholders is stored and matched as is."""
    a = RevocationStore(handles("a"))
    b = RevocationStore(handles("b"))
    weird = "x' OR '1'='1; -- %s ?"
    a.revoke_jti(weird, time.time() + 600, reason="%(x)s ? '")
    b.refresh(force=True)
    assert weird in b._jtis and "x" not in b._jtis
    assert [r.reason for r in b.list()] == ["%(x)s ? '"]


# -- signing keys in the database -------------------------------------------------------


def test_a_row_forged_without_the_master_key_is_never_published(handles: OpenHandle) -> None:
    """What holds: someone with write access to ``signing_keys`` but no master key inserts a
    row (a valid-looking kid, an early activation, random ciphertext) and bumps the
    version: no replica publishes it or signs with it; the keys in memory keep serving."""
    master = os.urandom(32)
    db = handles("a")
    db.start_watching()
    store = KeyStore(db, master_key=master)
    current = store.current().kid
    store.reload()  # settled: what follows is the forger's change alone
    forged_kid = "A" * 43
    before = db.version("keys")
    with handles("forger").transaction() as cur:
        cur.execute(
            "INSERT INTO signing_keys (kid, created, activate_at, retire_at, nonce, ciphertext) "
            "VALUES (?, ?, ?, NULL, ?, ?)",
            (forged_kid, 0.0, 0.0, os.urandom(12), os.urandom(48)),
        )
        cur.touch("keys")  # bump the version and notify, as a writer of the tables can
    deadline = time.monotonic() + 2
    while db.version("keys") == before:
        assert time.monotonic() < deadline, "the forged change never reached the replica"
        time.sleep(0.02)
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        KeyStore(handles("b"), master_key=master)  # a replica starting refuses, loudly
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        store.reload()
    assert store.public_key(forged_kid) is None
    assert store.current().kid == current


def test_a_ciphertext_moved_onto_another_kid_is_refused(handles: OpenHandle) -> None:
    """What holds: the private half of key 1 copied onto key 2's row fails (AAD = kid)."""
    master = os.urandom(32)
    db = handles("a")
    store = KeyStore(db, master_key=master, activation_delay=0)
    first = store.current().kid
    time.sleep(0.01)
    second = store.rotate(retire_after=600).kid
    _sql(
        db,
        "UPDATE signing_keys SET (nonce, ciphertext) = "
        "(SELECT nonce, ciphertext FROM signing_keys WHERE kid = ?) WHERE kid = ?",
        (first, second),
    )
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        KeyStore(handles("b"), master_key=master)


def test_a_leaked_key_retired_at_once_stays_retired(handles: OpenHandle) -> None:
    """A signing key leaks; the operator rotates with ``retire_after=0`` (the emergency
    switch), which deletes its row. Whoever leaked it and can write the database (a row
    saved beforehand: nothing in it is secret without the master key) puts the row back;
    every replica that loads the table -- any restart -- verifies the leaked key's tokens."""
    master = os.urandom(32)
    db = handles("a")
    store = KeyStore(db, master_key=master)
    leaked = store.current().kid
    with db.read() as cur:
        saved = cur.execute(
            "SELECT kid, created, activate_at, retire_at, nonce, ciphertext FROM signing_keys "
            "WHERE kid = ?",
            (leaked,),
        ).fetchone()
    assert saved is not None
    forged, _ = TokenIssuer(store, ISSUER).mint(IDENT, AUD, 600)  # what the thief can sign
    store.rotate(retire_after=0)
    _sql(
        db,
        "INSERT INTO signing_keys (kid, created, activate_at, retire_at, nonce, ciphertext) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        tuple(saved),
    )
    restarted = KeyStore(handles("b"), master_key=master)
    verifier = TokenVerifier(restarted, None, ISSUER)
    with pytest.raises(AuthenticationError):
        verifier.verify(forged, AUD)


def test_a_retired_key_put_back_with_its_tombstone_gone_is_refused(handles: OpenHandle) -> None:
    """What holds: as above, and the thief also deletes the tombstone: the row put back has
    no ``retire_at`` (authenticated) while a newer key exists, which no rotation leaves."""
    master = os.urandom(32)
    db = handles("a")
    store = KeyStore(db, master_key=master)
    with db.read() as cur:
        saved = cur.execute(
            "SELECT kid, created, activate_at, retire_at, nonce, ciphertext FROM signing_keys"
        ).fetchone()
    assert saved is not None
    forged, _ = TokenIssuer(store, ISSUER).mint(IDENT, AUD, 600)
    store.rotate(retire_after=0)
    _sql(db, "DELETE FROM retired_signing_keys")
    _sql(
        db,
        "INSERT INTO signing_keys (kid, created, activate_at, retire_at, nonce, ciphertext) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        tuple(saved),
    )
    restarted = KeyStore(handles("b"), master_key=master)
    assert restarted.public_key(saved[0]) is None
    with pytest.raises(AuthenticationError):
        TokenVerifier(restarted, None, ISSUER).verify(forged, AUD)


def test_a_retirement_undone_or_pushed_back_is_refused(handles: OpenHandle) -> None:
    """What holds: the times of a row are authenticated with its private half: a retiring
    key's ``retire_at`` cleared or moved later fails to decrypt, loudly."""
    master = os.urandom(32)
    db = handles("a")
    store = KeyStore(db, master_key=master, activation_delay=0)
    old = store.current().kid
    time.sleep(0.01)
    store.rotate(retire_after=600)
    for retire_at in (None, time.time() + 10 * 86400):
        _sql(db, "UPDATE signing_keys SET retire_at = ? WHERE kid = ?", (retire_at, old))
        with pytest.raises(ConfigError, match="cannot be decrypted"):
            KeyStore(handles("b"), master_key=master)


# -- staleness on the verification path ------------------------------------------------------


class _Reach:
    """A database stand-in whose distance from PostgreSQL the test sets."""

    dialect = "postgresql"
    label = "postgresql://test"

    def __init__(self) -> None:
        self.age = 0.0

    def stale_for(self) -> float:
        return self.age


def test_a_cached_token_is_refused_once_state_went_stale(tmp_path: Path) -> None:
    """What holds: a token verified (and cached) while fresh is refused with
    ``shared_state_stale`` past the bound -- on the audience path every engine takes (HTTP
    per request, CQL and PostgreSQL per statement of an open session) and on the
    any-audience path of the Cosmos task key -- and served again once the database is back."""
    keys = KeyStore(tmp_path)
    reach = _Reach()
    bound = StalenessBound(reach, max_staleness=30.0)  # type: ignore[arg-type]
    verifier = TokenVerifier(keys, None, ISSUER, staleness=bound)
    token, _ = TokenIssuer(keys, ISSUER).mint(IDENT, AUD, 600)
    assert verifier.verify(token, AUD).jti  # cached from now on
    reach.age = 30.5
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(token, AUD)  # every engine's path
    assert caught.value.reason == STALE_REASON
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify_any_audience(token)  # the Cosmos task key's path
    assert caught.value.reason == STALE_REASON
    reach.age = 0.1
    assert verifier.verify(token, AUD).jti


def test_a_dag_revocation_outlives_every_token_it_revokes(handles: OpenHandle) -> None:
    """``tokens.max_ttl`` has no upper bound; with two days, a token minted just before
    ``token revoke --dag`` is valid for two days, so the revocation row (kept as long as
    the State keeps it for this configuration) must outlive it: were it to expire after a
    day, the next purge (any replica's) would delete it and the token verify again."""
    from lockgate.config import LockgateConfig
    from lockgate.state import revocation_retention

    config = LockgateConfig.model_validate({"tokens": {"default_ttl": 900, "max_ttl": 172800}})
    t0 = 1_800_000_000.0
    clock = [t0]
    store = RevocationStore(
        handles("a"), retention=revocation_retention(config.tokens), clock=lambda: clock[0]
    )
    assert config.tokens.max_ttl == 172800  # accepted
    keys = KeyStore(handles("k"), master_key=bytes(32))
    _, claims = TokenIssuer(keys, ISSUER, clock=lambda: clock[0]).mint(
        IDENT, AUD, config.tokens.max_ttl
    )
    store.revoke_dag("prod", "finance_daily", reason="incident")
    assert store.is_revoked(claims)
    clock[0] = t0 + 36 * 3600  # the token has twelve hours left
    store.refresh(force=True)  # purges expired rows first
    assert store.is_revoked(claims), "the revoked token verifies again"
    clock[0] = claims.exp + config.tokens.leeway  # its last instant of validity
    store.refresh(force=True)
    assert store.is_revoked(claims), "the revoked token verifies again at its very end"


def test_only_eddsa_verifies_whatever_the_header_says(handles: OpenHandle) -> None:
    """What holds: a token that names a published kid but another algorithm (HS256 keyed
    with the public key, "none") is refused before any key is used: the algorithm is pinned,
    not read from the token or the database."""
    import base64
    import hashlib
    import hmac
    import json

    from cryptography.hazmat.primitives import serialization

    keys = KeyStore(handles("a"), master_key=bytes(32))
    token, _ = TokenIssuer(keys, ISSUER).mint(IDENT, AUD, 600)
    header_b64, payload_b64, _sig = token.split(".")
    kid = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))["kid"]
    public = keys.current().public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    verifier = TokenVerifier(keys, None, ISSUER)
    for alg in ("HS256", "none", "EdDSA "):
        head = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
        signing_input = f"{head}.{payload_b64}".encode()
        sig = b64(hmac.new(public, signing_input, hashlib.sha256).digest())
        with pytest.raises(AuthenticationError) as caught:
            verifier.verify(f"{head}.{payload_b64}.{sig}", AUD)
        assert caught.value.reason in ("unsupported_alg", "malformed"), alg
