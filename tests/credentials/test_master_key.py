"""Master key: env wins, file created 0600 in a 0700 dir, unsafe or malformed keys refused."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from lockgate.credentials import ENV_VAR, load_or_create_master_key
from lockgate.errors import CredentialError


def test_created_on_first_start_with_private_modes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = load_or_create_master_key(data, env={})
    assert len(key) == 32
    assert (data.stat().st_mode & 0o777) == 0o700
    assert ((data / "master.key").stat().st_mode & 0o777) == 0o600
    assert load_or_create_master_key(data, env={}) == key  # stable across restarts
    assert [p.name for p in data.iterdir()] == ["master.key"]  # no temp file left behind


def test_group_or_world_readable_file_is_refused(tmp_path: Path) -> None:
    load_or_create_master_key(tmp_path, env={})
    path = tmp_path / "master.key"
    os.chmod(path, 0o644)
    with pytest.raises(CredentialError, match=r"mode 0644.*chmod 600"):
        load_or_create_master_key(tmp_path, env={})
    os.chmod(path, 0o640)
    with pytest.raises(CredentialError, match="group or others"):
        load_or_create_master_key(tmp_path, env={})


def test_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    load_or_create_master_key(real, env={})
    data = tmp_path / "data"
    data.mkdir()
    (data / "master.key").symlink_to(real / "master.key")
    with pytest.raises(CredentialError, match="cannot open"):
        load_or_create_master_key(data, env={})


def test_env_wins_and_writes_nothing(tmp_path: Path) -> None:
    key = os.urandom(32)
    got = load_or_create_master_key(tmp_path / "d", env={ENV_VAR: base64.b64encode(key).decode()})
    assert got == key
    assert not (tmp_path / "d").exists()
    urlsafe = base64.urlsafe_b64encode(key).decode()
    assert load_or_create_master_key(tmp_path, env={ENV_VAR: urlsafe}) == key


@pytest.mark.parametrize("bad", ["c2hvcnQ=", "not base64 at all!!", base64.b64encode(b"x" * 31)])
def test_malformed_env_key_is_refused_without_echoing_it(tmp_path: Path, bad: object) -> None:
    text = bad.decode() if isinstance(bad, bytes) else str(bad)
    with pytest.raises(CredentialError, match="32 random bytes") as info:
        load_or_create_master_key(tmp_path, env={ENV_VAR: text})
    assert text not in str(info.value)


def test_malformed_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"too-short\n")
    os.close(fd)
    with pytest.raises(CredentialError, match=str(path)):
        load_or_create_master_key(tmp_path, env={})
