"""CredentialStore and CredentialBroker on both backends (SQLite file, shared PostgreSQL):
another handle on the same database is another process or replica. Rotation by one is used
by the others within 1 s, under load, with no failed read; only ciphertext is stored; the
master key of every replica must be the one the shared state was set up with."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from pathlib import Path

import pytest

from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialBroker, CredentialStore, load_or_create_master_key
from lockgate.credentials.master_key import FINGERPRINT_KEY, fingerprint
from lockgate.errors import CredentialError
from lockgate.store import Database
from tests.store import conftest as store_fixtures
from tests.store.conftest import OpenDatabase

open_db = store_fixtures.open_db  # every test taking it runs on SQLite and on PostgreSQL

SECRET = "pa55-Shared-Distinctive-Secret-0xBEEF"


def _wait_for(condition: object, timeout: float = 2.0) -> float:
    """Seconds until ``condition()`` held; fails past ``timeout``."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


def test_round_trip_versions_and_overlap(open_db: OpenDatabase, key: bytes) -> None:
    store = CredentialStore(open_db(), key)
    assert store.current("api") is None
    assert store.set("api", SECRET) == 1
    assert store.rotate("api", "second") == 2
    assert store.set("api", "third") == 3
    cur = store.current("api")
    prev = store.previous("api", overlap=60)
    assert cur is not None and (cur.version, cur.value) == (3, "third")
    assert prev is not None and (prev.version, prev.value) == (2, "second")
    assert [(i.version, i.current, i.has_value) for i in store.versions("api")] == [
        (1, False, False),
        (2, False, True),
        (3, True, True),
    ]
    assert store.delete("api") is True and store.names() == []
    assert store.set("api", "again") == 4  # version numbers are never reused


def test_only_ciphertext_is_stored(open_db: OpenDatabase, key: bytes) -> None:
    db = open_db()
    CredentialStore(db, key).set("api", SECRET)
    with db.read() as cur:
        rows = cur.execute("SELECT name, key_id, nonce, ciphertext FROM credential_versions")
        stored = b"".join(
            bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
            for row in rows.fetchall()
            for v in row
        )
    assert SECRET.encode() not in stored and key not in stored


def test_rotation_is_seen_by_another_replica_within_a_second(
    open_db: OpenDatabase, key: bytes
) -> None:
    writer_db, reader_db = open_db(), open_db()
    reader_db.start_watching()
    writer, reader = CredentialStore(writer_db, key), CredentialStore(reader_db, key)
    reader.reload()  # loaded empty: from here on, stale() means another replica wrote
    assert not reader.stale()
    writer.set("api", "v1")
    _wait_for(reader.stale)
    assert reader.reload() is True
    assert reader.current("api", fresh=False).value == "v1"  # type: ignore[union-attr]
    assert reader.reload() is False  # nothing moved: no read
    writer.rotate("api", "v2")
    took = _wait_for(reader.stale, timeout=1.0)
    reader.reload()
    assert reader.current("api", fresh=False).value == "v2"  # type: ignore[union-attr]
    assert reader.previous("api", 60, fresh=False).value == "v1"  # type: ignore[union-attr]
    assert took < 1.0


def test_concurrent_writers_never_share_a_version(open_db: OpenDatabase, key: bytes) -> None:
    stores = [CredentialStore(open_db(), key) for _ in range(3)]
    stores[0].set("api", "seed")
    got: list[int] = []

    def write(store: CredentialStore) -> None:
        for i in range(5):
            got.append(store.rotate("api", f"value-{i}"))

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(2, 17))


# -- the master key across replicas -------------------------------------------------------------
def _shared(open_db: OpenDatabase) -> Database:
    db = open_db()
    if db.dialect != "postgresql":
        pytest.skip("the fingerprint guards shared state only")
    return db


def test_fingerprint_recorded_once_and_never_the_key(open_db: OpenDatabase, key: bytes) -> None:
    db = _shared(open_db)
    CredentialStore(db, key)
    CredentialStore(open_db(), key)  # a second replica with the same key starts
    with db.read() as cur:
        rows = cur.execute(
            "SELECT value FROM lockgate_meta WHERE key = ?", (FINGERPRINT_KEY,)
        ).fetchall()
    assert rows == [(fingerprint(key),)]
    assert key.hex() not in rows[0][0]


def test_replica_with_another_master_key_refuses_to_start(
    open_db: OpenDatabase, key: bytes
) -> None:
    CredentialStore(_shared(open_db), key).set("api", SECRET)
    with pytest.raises(CredentialError) as info:
        CredentialStore(open_db(), os.urandom(32))
    message = str(info.value)
    assert "master key" in message and "LOCKGATE_MASTER_KEY or master_key_file" in message
    assert fingerprint(key)[:16] in message and SECRET not in message


def test_shared_state_needs_the_master_key_given(tmp_path: Path, key: bytes) -> None:
    with pytest.raises(CredentialError, match="LOCKGATE_MASTER_KEY or master_key_file"):
        load_or_create_master_key(tmp_path, env={}, shared=True)
    assert not (tmp_path / "master.key").exists()  # never a per-replica key
    key_file = tmp_path / "secrets" / "master-key"
    key_file.parent.mkdir()
    key_file.write_text(base64.b64encode(key).decode() + "\n")
    key_file.chmod(0o600)
    assert load_or_create_master_key(tmp_path, env={}, key_file=key_file, shared=True) == key
    key_file.chmod(0o640)
    with pytest.raises(CredentialError, match=r"mode 0640.*chmod 600"):
        load_or_create_master_key(tmp_path, env={}, key_file=key_file, shared=True)
    with pytest.raises(CredentialError, match="cannot open"):
        load_or_create_master_key(tmp_path, env={}, key_file=tmp_path / "absent")


# -- the broker follows another replica's rotation ------------------------------------------
def _config() -> LockgateConfig:
    return LockgateConfig.model_validate(
        {"credentials": [{"name": "orders-key", "type": "static", "overlap": 60}]}
    )


async def test_broker_uses_a_rotation_by_another_replica_without_a_failed_request(
    open_db: OpenDatabase, key: bytes
) -> None:
    writer = CredentialStore(open_db(), key)
    writer.set("orders-key", "v1")
    reader_db = open_db()
    reader_db.start_watching()
    broker = CredentialBroker(_config(), CredentialStore(reader_db, key))
    accepted = {"v1", "v2"}  # the upstream accepts both during the overlap
    seen: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            secret = await broker.upstream_secret("orders-key")
            assert secret is not None and secret.value in accepted
            seen.append((time.monotonic(), secret.value))
            await asyncio.sleep(0.002)

    clients = [asyncio.create_task(load()) for _ in range(4)]
    await asyncio.sleep(0.2)
    await asyncio.to_thread(writer.rotate, "orders-key", "v2")
    rotated = time.monotonic()
    await asyncio.sleep(1.2)
    stop.set()
    await asyncio.gather(*clients)  # an assertion inside a client fails the test here
    first_new = min(t for t, value in seen if value == "v2")
    assert first_new - rotated < 1.0
    assert all(value == "v2" for t, value in seen if t > first_new)  # never back to v1
    assert await broker.poll() is False  # caught up: the tick finds nothing to do
    await broker.close()


def test_key_file_in_a_secret_volume_layout_is_followed_inside_it_only(
    tmp_path: Path, key: bytes
) -> None:
    # Kubernetes: <mount>/master.key -> ..data/master.key, ..data -> ..2026_01_01/
    mount = tmp_path / "secret"
    (mount / "..2026_01_01").mkdir(parents=True)
    real = mount / "..2026_01_01" / "master.key"
    real.write_text(base64.b64encode(key).decode() + "\n")
    real.chmod(0o400)
    (mount / "..data").symlink_to("..2026_01_01")
    (mount / "master.key").symlink_to("..data/master.key")
    assert load_or_create_master_key(tmp_path, env={}, key_file=mount / "master.key") == key
    (tmp_path / "other").mkdir()
    outside = tmp_path / "other" / "master.key"
    outside.symlink_to(real)  # a link out of its own directory is not followed
    with pytest.raises(CredentialError, match="cannot open"):
        load_or_create_master_key(tmp_path, env={}, key_file=outside)


def test_vault_fetches_are_recorded_without_moving_the_change_version(
    open_db: OpenDatabase, key: bytes
) -> None:
    store = CredentialStore(open_db(), key)
    store.set("api", SECRET)
    store.reload()
    generation = store.generation
    store.record_fetch("kv", "https://v.vault.azure.net/secrets/kv", "abc", 10.0)
    store.record_fetch("kv", "https://v.vault.azure.net/secrets/kv", "def", 20.0)
    assert store.fetches() == {"kv": ("https://v.vault.azure.net/secrets/kv", "def", 20.0)}
    assert not store.stale() and store.generation == generation  # nothing cached depends on it
