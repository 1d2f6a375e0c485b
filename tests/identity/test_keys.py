from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lockgate.errors import ConfigError
from lockgate.identity import KeyStore, thumbprint

from .conftest import Clock


def kids(store: KeyStore) -> set[str]:
    return {k["kid"] for k in store.jwks()["keys"]}


def test_first_use_creates_private_files(tmp_path: Path, keys: KeyStore) -> None:
    kdir = tmp_path / "keys"
    assert stat.S_IMODE(kdir.stat().st_mode) == 0o700
    files = [p for p in kdir.iterdir()]
    assert files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    assert (kdir / f"{keys.current().kid}.pem").exists()


def test_kid_is_rfc7638_thumbprint_and_jwks_is_public_only(keys: KeyStore) -> None:
    key = keys.current()
    assert key.kid == thumbprint(key.public)
    (jwk,) = keys.jwks()["keys"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert jwk == {**jwk, "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig"}
    assert keys.public_key(key.kid) is not None


def test_rfc7638_thumbprint_vector() -> None:
    # RFC 8037 appendix A.3: thumbprint of the example Ed25519 key.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from lockgate.identity.tokens import b64url_decode

    pub = Ed25519PublicKey.from_public_bytes(
        b64url_decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
    )
    assert thumbprint(pub) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rotation_keeps_old_kid_until_retired(keys: KeyStore, clock: Clock) -> None:
    old = keys.current().kid
    new = keys.rotate(retire_after=900).kid
    assert new != old
    assert keys.current().kid == new
    assert kids(keys) == {old, new}
    clock.t += 899
    assert keys.public_key(old) is not None
    clock.t += 2
    assert kids(keys) == {new}
    assert keys.public_key(old) is None


def test_retired_keys_are_pruned_on_next_rotation(
    tmp_path: Path, keys: KeyStore, clock: Clock
) -> None:
    old = keys.current().kid
    keys.rotate(retire_after=10)
    clock.t += 11
    keys.rotate(retire_after=10)
    assert not (tmp_path / "keys" / f"{old}.pem").exists()
    assert old not in json.loads((tmp_path / "keys" / "index.json").read_text())["current"]


def test_reload_sees_rotation_by_another_instance(tmp_path: Path, clock: Clock) -> None:
    server = KeyStore(tmp_path, clock=clock)
    cli = KeyStore(tmp_path, clock=clock)
    assert server.current().kid == cli.current().kid
    new = cli.rotate(retire_after=60).kid
    assert server.public_key(new) is None
    assert server.reload() is True
    assert server.current().kid == new
    assert server.public_key(new) is not None
    assert server.reload() is False  # unchanged since


def test_maybe_reload_is_rate_limited(tmp_path: Path, clock: Clock) -> None:
    server = KeyStore(tmp_path, clock=clock)
    cli = KeyStore(tmp_path, clock=clock)
    assert server.maybe_reload(min_interval=3600) is False  # nothing changed yet
    cli.rotate(retire_after=60)
    assert server.maybe_reload(min_interval=3600) is False  # too soon after the last look
    assert server.maybe_reload(min_interval=0) is True


def test_key_file_not_matching_its_kid_is_refused(tmp_path: Path, keys: KeyStore) -> None:
    other = KeyStore(tmp_path / "other")
    pem = (tmp_path / "other" / "keys" / f"{other.current().kid}.pem").read_bytes()
    (tmp_path / "keys" / f"{keys.current().kid}.pem").write_bytes(pem)
    with pytest.raises(ConfigError, match="does not match"):
        KeyStore(tmp_path)


def test_rotate_rejects_negative_overlap(keys: KeyStore) -> None:
    with pytest.raises(ValueError):
        keys.rotate(retire_after=-1)
