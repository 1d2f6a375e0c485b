"""Withdrawing a signing algorithm the configuration no longer needs (``KeyStore.retire``,
``lockgate keys retire``): its keys leave the JWKS when their time comes (at once for a
leaked key), are no longer rotated, are deleted from storage once retired, and nothing
brings them back; EdDSA and configured algorithms are refused. On files, on SQLite and on
a real PostgreSQL (``open_store``, shared with :mod:`tests.identity.test_keys_algorithms`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from lockgate.errors import ConfigError
from lockgate.identity import KeyStore
from lockgate.store import Database

from .conftest import Clock
from .test_keys_algorithms import ALL, OpenStore, claims, open_store

__all__ = ["open_store"]  # the fixture, shared

#: The configuration once no federated credential or audience needs RS256 any more.
WITHOUT_RS256 = ("EdDSA", "ES256")


def _database(store: KeyStore) -> Database | None:
    backend = store._backend
    return getattr(backend, "db", None)


def _stored_kids(store: KeyStore) -> set[str]:
    """The kids storage still holds a private half for (files, or rows of the table)."""
    db = _database(store)
    if db is None:
        assert store.dir is not None
        return {path.stem for path in store.dir.glob("*.pem")}
    with db.read() as cur:
        return {str(kid) for (kid,) in cur.execute("SELECT kid FROM signing_keys").fetchall()}


def _retire_at(store: KeyStore, kid: str) -> float | None:
    key = store.key(kid)
    assert key is not None, "the key is not published"
    return key.retire_at


def _jwks_algs(store: KeyStore) -> set[str]:
    return {key["alg"] for key in store.jwks()["keys"]}


def _dropped_rs256(open_store: OpenStore, clock: Clock) -> tuple[KeyStore, list[str]]:
    """Keys of every algorithm, RS256 rotated once (two keys, one in its overlap), then
    opened again with a configuration that no longer names RS256."""
    first = open_store(algorithms=ALL, clock=clock, publish_ahead=0, activation_delay=0)
    old = first.current("RS256").kid
    clock.t += 1
    new = first.rotate(retire_after=3600, algorithms=["RS256"]).kid
    clock.t += 1
    keys = open_store(algorithms=WITHOUT_RS256, clock=clock, publish_ahead=0, activation_delay=0)
    assert keys.in_use() == ALL  # stored keys alone keep RS256 in use until it is retired
    return keys, [old, new]


def test_a_withdrawn_algorithm_is_published_until_its_keys_retire_then_gone(
    open_store: OpenStore,
) -> None:
    clock = Clock()
    keys, (old, new) = _dropped_rs256(open_store, clock)
    old_retire_at = _retire_at(keys, old)
    retiring = {k.kid: k.retire_at for k in keys.retire("RS256", 7200)}
    # The overlap of the earlier rotation is shorter: a retirement only ever comes forward.
    assert retiring == {old: old_retire_at, new: clock.t + 7200}
    assert keys.in_use() == WITHOUT_RS256
    assert _jwks_algs(keys) == set(ALL)  # tokens it signed may still be out there
    clock.t += 7199
    assert keys.key(new) is not None
    clock.t += 1
    assert keys.key(new) is None and keys.key(old) is None
    assert _jwks_algs(keys) == set(WITHOUT_RS256)
    with pytest.raises(ValueError, match="RS256"):
        keys.sign(claims(), "RS256")  # no key of it is published: none may sign
    # Another replica (or a restart) with the same configuration agrees and makes no new key.
    other = open_store(algorithms=WITHOUT_RS256, clock=clock)
    assert other.in_use() == WITHOUT_RS256 and _jwks_algs(other) == set(WITHOUT_RS256)
    # The next write deletes the retired keys' private halves.
    keys.rotate(retire_after=60, algorithms=["EdDSA"])
    assert not {old, new} & _stored_kids(keys)


def test_a_withdrawn_algorithm_is_no_longer_rotated(open_store: OpenStore) -> None:
    clock = Clock()
    keys, rs256 = _dropped_rs256(open_store, clock)
    keys.retire("RS256", 600)
    rotated = keys.rotate_each(retire_after=60)  # lockgate keys rotate: every algorithm in use
    assert [k.alg for k in rotated] == list(WITHOUT_RS256)
    with pytest.raises(ConfigError, match="RS256"):
        keys.rotate(retire_after=60, algorithms=["RS256"])
    assert [k.kid for k in keys.published() if k.alg == "RS256"] == rs256  # no third key
    other = open_store(algorithms=WITHOUT_RS256, clock=clock)
    assert [k.alg for k in other.rotate_each(retire_after=60)] == list(WITHOUT_RS256)


def test_retiring_at_once_removes_a_leaked_key_everywhere(open_store: OpenStore) -> None:
    clock = Clock()
    keys, rs256 = _dropped_rs256(open_store, clock)
    watching = open_store(algorithms=WITHOUT_RS256, clock=clock)
    db = _database(watching)
    if db is not None:
        db.start_watching()  # a serving replica follows the change feed (PostgreSQL)
    assert {k.retire_at for k in keys.retire("RS256", 0)} == {clock.t}
    assert all(keys.key(kid) is None for kid in rs256)
    assert _jwks_algs(keys) == set(WITHOUT_RS256)
    assert not set(rs256) & _stored_kids(keys)  # private halves gone at once
    deadline = time.monotonic() + 2.0  # PostgreSQL: the change feed tells the replica
    while any(watching.key(kid) is not None for kid in rs256):  # a lookup starts the reload
        watching.maybe_reload(0)  # the server's tick (files)
        assert time.monotonic() < deadline, "a replica kept publishing the retired key"
        time.sleep(0.005)
    assert "RS256" not in {k.alg for k in open_store(algorithms=WITHOUT_RS256).published()}


def _follow(store: KeyStore, done: Callable[[], bool]) -> None:
    """Wait until ``store``, by its own lookups and ticks, has loaded what makes ``done``."""
    deadline = time.monotonic() + 2.0
    while not done():
        store.key("x" * 43)  # shared keys: a lookup starts the reload
        store.maybe_reload(0)  # the server's tick
        assert time.monotonic() < deadline, "the replica never loaded the change"
        time.sleep(0.005)


def test_a_row_put_back_cannot_undo_a_retirement_a_replica_saw(open_store: OpenStore) -> None:
    clock = Clock()
    keys, (_, new) = _dropped_rs256(open_store, clock)
    db = _database(keys)
    if db is None:
        pytest.skip("files: whoever can write them can read the private keys anyway")
    with db.read() as cur:
        saved = cur.execute(
            "SELECT nonce, ciphertext FROM signing_keys WHERE kid = ? AND retire_at IS NULL",
            (new,),
        ).fetchone()
    assert saved is not None
    watching = open_store(algorithms=WITHOUT_RS256, clock=clock)
    watching_db = _database(watching)
    assert watching_db is not None
    watching_db.start_watching()
    at = {k.kid: k.retire_at for k in keys.retire("RS256", 600)}[new]
    _follow(watching, lambda: watching.in_use() == WITHOUT_RS256)
    changes = watching.changes
    with db.transaction() as cur:  # the database's writer puts the pre-retirement row back
        cur.execute(
            "UPDATE signing_keys SET retire_at = NULL, nonce = ?, ciphertext = ? WHERE kid = ?",
            (bytes(saved[0]), bytes(saved[1]), new),
        )
        cur.touch("keys")
    _follow(watching, lambda: watching.changes != changes)
    assert _retire_at(watching, new) == at
    assert watching.in_use() == WITHOUT_RS256
    # The row put back is genuine: a process that never saw the retirement takes it.
    assert _retire_at(open_store(algorithms=WITHOUT_RS256, clock=clock), new) is None


def test_an_earlier_retirement_is_never_pushed_back(open_store: OpenStore) -> None:
    clock = Clock()
    keys, (_, new) = _dropped_rs256(open_store, clock)
    keys.retire("RS256", 600)
    again = {k.kid: k.retire_at for k in keys.retire("RS256", 3600)}
    assert again[new] == clock.t + 600
    assert {k.kid: k.retire_at for k in keys.retire("RS256", 0)}[new] == clock.t  # forward


def test_a_retirement_survives_a_rotation_from_a_store_that_had_not_seen_it(
    open_store: OpenStore,
) -> None:
    """Retiring writes under the rotation lock; a rotation from another process, whose
    memory predates the retirement, re-reads the stored keys and keeps it."""
    clock = Clock()
    keys, rs256 = _dropped_rs256(open_store, clock)
    stale = open_store(algorithms=WITHOUT_RS256, clock=clock, activation_delay=0)
    retire_at = {k.kid: k.retire_at for k in keys.retire("RS256", 600)}
    stale.rotate(retire_after=60, algorithms=["EdDSA"])
    fresh = open_store(algorithms=WITHOUT_RS256, clock=clock)
    assert {k.kid: k.retire_at for k in fresh.published() if k.alg == "RS256"} == retire_at
    assert fresh.in_use() == WITHOUT_RS256
    clock.t += 600
    assert all(fresh.key(kid) is None for kid in rs256)


def test_an_algorithm_configured_again_gets_a_fresh_key(open_store: OpenStore) -> None:
    clock = Clock()
    keys, rs256 = _dropped_rs256(open_store, clock)
    keys.retire("RS256", 600)
    again = open_store(algorithms=ALL, clock=clock)  # a federated credential needs it again
    current = again.current("RS256")
    assert current.kid not in rs256 and current.retire_at is None
    assert again.in_use() == ALL
    assert open_store(algorithms=ALL, clock=clock).current("RS256").kid == current.kid  # one


def test_eddsa_and_configured_algorithms_are_refused(open_store: OpenStore) -> None:
    clock = Clock()
    keys = open_store(algorithms=ALL, clock=clock)
    before = {k.kid: k.retire_at for k in keys.published()}
    with pytest.raises(ConfigError, match="Lockgate's own tokens"):
        keys.retire("EdDSA", 0)
    with pytest.raises(ConfigError, match="still needed"):
        keys.retire("RS256", 0)
    with pytest.raises(ValueError):
        keys.retire("HS256", 0)
    with pytest.raises(ValueError):
        open_store(algorithms=("EdDSA",), clock=clock).retire("ES256", -1)
    other = open_store(algorithms=ALL, clock=clock)
    assert {k.kid: k.retire_at for k in other.published()} == before  # nothing was written


def test_an_algorithm_never_stored_is_refused(open_store: OpenStore) -> None:
    keys = open_store(algorithms=("EdDSA",))
    with pytest.raises(ConfigError, match="no ES256 signing key"):
        keys.retire("ES256", 0)
    assert keys.in_use() == ("EdDSA",)
