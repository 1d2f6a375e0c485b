"""CredentialStore: encryption at rest, AAD binding, versions, overlap, cross-process view."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from lockgate.credentials import CredentialStore
from lockgate.errors import CredentialError

SECRET = "pa55-Very-Distinctive-Secret-0xC0FFEE"


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, key: bytes, clock: Clock) -> CredentialStore:
    return CredentialStore(tmp_path / "credentials.db", key, clock=clock)


def test_round_trip_and_versions(store: CredentialStore, clock: Clock) -> None:
    assert store.current("api") is None
    assert store.set("api", SECRET) == 1
    cur = store.current("api")
    assert cur is not None
    assert (cur.name, cur.version, cur.value, cur.created_at) == ("api", 1, SECRET, clock.t)
    assert SECRET not in repr(cur)
    clock.t += 10
    assert store.rotate("api", "second") == 2
    assert store.current("api").value == "second"  # type: ignore[union-attr]
    assert store.names() == ["api"]
    infos = store.versions("api")
    assert [(i.version, i.current, i.has_value) for i in infos] == [
        (1, False, True),
        (2, True, True),
    ]
    assert infos[0].rotated_at is None and infos[1].rotated_at == clock.t


def test_plaintext_never_on_disk(tmp_path: Path, store: CredentialStore) -> None:
    store.set("api", SECRET)
    store.rotate("api", SECRET + "-v2")
    files = [p for p in tmp_path.iterdir() if p.name.startswith("credentials.db")]
    assert files
    for f in files:
        raw = f.read_bytes()
        assert SECRET.encode() not in raw
        assert SECRET.encode("utf-16-le") not in raw
    assert ((tmp_path / "credentials.db").stat().st_mode & 0o077) == 0


def _raw(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "credentials.db", isolation_level=None)


def test_ciphertext_swapped_between_rows_is_refused(tmp_path: Path, store: CredentialStore) -> None:
    store.set("alpha", "alpha-secret")
    store.set("bravo", "bravo-secret")
    conn = _raw(tmp_path)
    conn.execute(
        "UPDATE credential_versions SET (nonce, ciphertext) = "
        "(SELECT nonce, ciphertext FROM credential_versions WHERE name = 'alpha') "
        "WHERE name = 'bravo'"
    )
    with pytest.raises(CredentialError, match="'bravo' version 1 cannot be decrypted") as info:
        store.current("bravo")
    assert "alpha-secret" not in str(info.value)
    assert store.current("alpha").value == "alpha-secret"  # type: ignore[union-attr]


def test_old_version_replayed_onto_current_is_refused(
    tmp_path: Path, store: CredentialStore
) -> None:
    store.set("api", "old-leaked")
    store.rotate("api", "new")
    conn = _raw(tmp_path)
    conn.execute(
        "UPDATE credential_versions SET (nonce, ciphertext) = "
        "(SELECT nonce, ciphertext FROM credential_versions WHERE name='api' AND version=1) "
        "WHERE name = 'api' AND version = 2"
    )
    with pytest.raises(CredentialError, match="version 2"):
        store.current("api")


def test_flipped_bit_is_refused(tmp_path: Path, store: CredentialStore) -> None:
    store.set("api", SECRET)
    conn = _raw(tmp_path)
    (ct,) = conn.execute("SELECT ciphertext FROM credential_versions").fetchone()
    conn.execute("UPDATE credential_versions SET ciphertext = ?", (bytes([ct[0] ^ 1]) + ct[1:],))
    with pytest.raises(CredentialError, match="altered"):
        store.current("api")


def test_wrong_master_key_is_refused(tmp_path: Path, store: CredentialStore) -> None:
    store.set("api", SECRET)
    other = CredentialStore(tmp_path / "credentials.db", os.urandom(32))
    with pytest.raises(CredentialError, match="another master key") as info:
        other.current("api")
    assert SECRET not in str(info.value)
    with pytest.raises(CredentialError, match="32 bytes"):
        CredentialStore(tmp_path / "x.db", b"short")


def test_overlap_window(store: CredentialStore, clock: Clock) -> None:
    store.set("api", "v1")
    assert store.previous("api", overlap=600) is None  # nothing before v1
    clock.t += 3600
    store.rotate("api", "v2")
    clock.t += 59
    prev = store.previous("api", overlap=60)
    assert prev is not None and (prev.version, prev.value) == (1, "v1")
    clock.t += 1
    assert store.previous("api", overlap=60) is None  # window over
    assert store.previous("api", overlap=0) is None


def test_only_current_and_previous_keep_a_value(tmp_path: Path, store: CredentialStore) -> None:
    for i in range(4):
        store.set("api", f"value-{i}")
    assert [i.has_value for i in store.versions("api")] == [False, False, True, True]
    (n,) = (
        _raw(tmp_path)
        .execute("SELECT count(*) FROM credential_versions WHERE ciphertext IS NOT NULL")
        .fetchone()
    )
    assert n == 2


def test_rotate_requires_existing(store: CredentialStore) -> None:
    with pytest.raises(CredentialError, match="does not exist"):
        store.rotate("nope", "x")
    with pytest.raises(CredentialError, match="non-empty"):
        store.set("api", "")
    with pytest.raises(CredentialError, match="invalid credential name"):
        store.set("../etc", "x")


def test_delete_never_reuses_versions(store: CredentialStore) -> None:
    store.set("api", "a")
    store.set("api", "b")
    assert store.delete("api") is True
    assert store.current("api") is None and store.names() == []
    assert store.delete("api") is False
    assert store.set("api", "c") == 3  # caches keyed by (name, version) stay correct


def test_two_instances_see_each_others_rotations(tmp_path: Path, key: bytes) -> None:
    server = CredentialStore(tmp_path / "credentials.db", key)
    cli = CredentialStore(tmp_path / "credentials.db", key)
    assert server.changed() is False
    cli.set("api", "one")
    assert server.changed() is True
    assert server.changed() is False  # consumed
    assert server.current("api").value == "one"  # type: ignore[union-attr]
    server.rotate("api", "two")
    assert server.changed() is True  # its own writes count too
    assert cli.changed() is True
    assert cli.current("api").value == "two"  # type: ignore[union-attr]
    assert cli.changed() is False
    server.close()
    cli.close()
