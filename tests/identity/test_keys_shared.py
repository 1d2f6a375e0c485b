"""Signing keys in a database table (the shared-state backend), on SQLite and on a real
PostgreSQL: one first key however many replicas start at once, private halves encrypted
under the master key, publish first and sign later, and a rotation under load on one
replica with zero failed verifications on the others."""

from __future__ import annotations

import os
import threading
import time

import pytest

from lockgate.config import SigningSettings
from lockgate.errors import AuthenticationError, ConfigError, CredentialError
from lockgate.identity import KeyStore, TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.store import Database
from tests.store import conftest as store_fixtures
from tests.store.conftest import OpenDatabase

from .conftest import ISSUER, Clock

open_db = store_fixtures.open_db  # every test taking it runs on SQLite and on PostgreSQL
AUD = "orders-api"


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(32)


def _count_keys(db: Database) -> int:
    with db.read() as cur:
        row = cur.execute("SELECT count(*) FROM signing_keys").fetchone()
    return int(row[0]) if row else 0


def _wait_until_published(store: KeyStore, kid: str) -> float:
    """Seconds until ``store`` publishes ``kid``, its lookups and ticks alone doing the work."""
    start = time.monotonic()
    while store.public_key(kid) is None:  # shared keys: a lookup starts the reload
        store.maybe_reload(0)  # the server's tick (what reloads files and lone databases)
        assert time.monotonic() - start < 2.0, "the new key was never published"
        time.sleep(0.005)
    return time.monotonic() - start


def test_concurrent_first_start_creates_exactly_one_key(
    open_db: OpenDatabase, master_key: bytes
) -> None:
    handles = [open_db() for _ in range(3)]
    start = threading.Barrier(3)
    stores: list[KeyStore] = []
    errors: list[BaseException] = []

    def replica(db: Database) -> None:
        start.wait()
        try:
            stores.append(KeyStore(db, master_key=master_key))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(db,)) for db in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({s.current().kid for s in stores}) == 1
    assert _count_keys(handles[0]) == 1


def test_private_keys_are_stored_encrypted_under_the_master_key(
    open_db: OpenDatabase, master_key: bytes
) -> None:
    from cryptography.hazmat.primitives import serialization

    db = open_db()
    key = KeyStore(db, master_key=master_key).current()
    raw = key.private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    with db.read() as cur:
        stored = b"".join(
            bytes(r[0]) for r in cur.execute("SELECT ciphertext FROM signing_keys").fetchall()
        )
    assert stored and raw not in stored
    assert KeyStore(open_db(), master_key=master_key).current().kid == key.kid
    wrong = os.urandom(32)
    # shared state refuses the replica at its fingerprint; a lone database at decryption
    with pytest.raises((CredentialError, ConfigError), match="master key"):
        KeyStore(open_db(), master_key=wrong)


def test_rotation_publishes_at_once_and_signs_after_the_delay(
    open_db: OpenDatabase, master_key: bytes
) -> None:
    clock = Clock()
    a = KeyStore(open_db(), master_key=master_key, clock=clock, activation_delay=2)
    watching = open_db()
    watching.start_watching()
    b = KeyStore(watching, master_key=master_key, clock=clock, activation_delay=2)
    old = a.current().kid
    clock.t += 1
    new = a.rotate(retire_after=600).kid
    _wait_until_published(b, new)
    for store in (a, b):
        assert {k["kid"] for k in store.jwks()["keys"]} == {old, new}
        assert store.public_key(new) is not None
        assert store.current().kid == old  # not signing yet
    clock.t += 2
    assert a.current().kid == b.current().kid == new
    assert a.next_retirement() == clock.t + 600
    clock.t += 600
    assert b.public_key(old) is None and b.current().kid == new
    assert b.reload() is False  # nothing moved since


def test_retire_after_zero_switches_at_once(open_db: OpenDatabase, master_key: bytes) -> None:
    clock = Clock()
    a = KeyStore(open_db(), master_key=master_key, clock=clock, activation_delay=2)
    old = a.current().kid
    clock.t += 1
    new = a.rotate(retire_after=0).kid
    assert a.current().kid == new and a.public_key(old) is None
    assert a.storage_problem() is None


def test_maybe_reload_reads_nothing_while_nothing_moved(
    open_db: OpenDatabase, master_key: bytes
) -> None:
    db = open_db()
    store = KeyStore(db, master_key=master_key)
    store.reload()  # its own first key counts as a move once
    reads = 0
    real_read = db.read

    def counting_read():  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return real_read()

    db.read = counting_read  # type: ignore[method-assign]
    for _ in range(100):
        assert store.maybe_reload(0) is False
        store.public_key(store.current().kid)
    assert reads == 0


def test_rotation_reaches_a_watching_replica_within_a_second(
    open_db: OpenDatabase, master_key: bytes
) -> None:
    a = KeyStore(open_db(), master_key=master_key)
    watching = open_db()
    watching.start_watching()
    b = KeyStore(watching, master_key=master_key)
    new = a.rotate(retire_after=600).kid
    assert _wait_until_published(b, new) < 1.0


@pytest.mark.parametrize("alg", ["EdDSA", "RS256", "ES256"])
def test_rotation_under_load_fails_no_verification(
    open_db: OpenDatabase, master_key: bytes, alg: str
) -> None:
    handles = [open_db() for _ in range(3)]
    for db in handles:
        db.start_watching()
    replicas = [
        KeyStore(db, master_key=master_key, activation_delay=1.5, algorithms=("EdDSA", alg))
        for db in handles
    ]
    identity = TaskIdentity("prod", "finance_daily", "load_orders", "run1", 1)
    signing = SigningSettings(audiences={AUD: alg})  # tokens for AUD signed with ``alg``
    issuers = [TokenIssuer(store, ISSUER, signing=signing) for store in replicas]
    verifiers = [TokenVerifier(store, None, ISSUER, reload_interval=0.2) for store in replicas]
    stop = threading.Event()
    failures: list[str] = []
    verified = [0]

    def tick(store: KeyStore) -> None:  # the server's periodic maybe_reload
        while not stop.is_set():
            store.maybe_reload(0)
            time.sleep(0.2)

    def load(i: int) -> None:
        while not stop.is_set():
            token, _ = issuers[i].mint(identity, AUD, 60)
            for j, verifier in enumerate(verifiers):
                if j == i:
                    continue
                try:
                    verifier.verify(token, AUD)
                    verified[0] += 1
                except AuthenticationError as exc:
                    failures.append(exc.reason)

    threads = [threading.Thread(target=tick, args=(s,)) for s in replicas]
    threads += [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        new = replicas[0].rotate(retire_after=600, algorithms=[alg]).kid
        deadline = time.monotonic() + 5
        while not all(s.current(alg).kid == new for s in replicas):
            assert time.monotonic() < deadline, "the new key never became current everywhere"
            time.sleep(0.05)
        time.sleep(0.3)  # tokens of the new key verified everywhere
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert verified[0] > 100
