"""Signing keys as files under ``data_dir/keys`` (SQLite state: one machine, any number
of processes). Layout (directory 0700, files 0600)::

    index.json          {"current": kid, "keys": [{"kid", "alg", "created", "retire_at"}]}
    <kid>.pem           PKCS#8 private key (Ed25519, RSA or P-256), one per kid
    .lock               flock target so two processes never rotate at once

``current`` is the newest EdDSA key (what older Lockgate versions read); an entry without
``alg`` is EdDSA, so a data directory written before other algorithms existed keeps working.
Files are named from the index, and the thumbprint and type of each loaded key are
recomputed and must equal its kid and alg, so a tampered index cannot make us publish one
key under another key's name or algorithm.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from lockgate.errors import ConfigError
from lockgate.identity.signing_key import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    KID_RE,
    SigningKey,
    generate_key,
    kept_algorithms,
    load_private,
    newest_per_algorithm,
    retiring_all_by,
    with_retire_at,
)

_INDEX = "index.json"


class KeyFiles:
    """Keys as files under ``data_dir/keys`` (the module docstring's layout)."""

    shared = False

    def __init__(self, directory: Path, *, rsa_key_size: int = 2048) -> None:
        self.dir = directory
        self.rsa_key_size = rsa_key_size
        self._mutex = threading.Lock()
        self._index_stamp: tuple[int, int] | None = None

    def open(self, now: float, algorithms: tuple[str, ...]) -> dict[str, SigningKey]:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # mkdir honours umask; be explicit
        with self._locked():
            keys = self._read_index({}) if (self.dir / _INDEX).exists() else {}
            # An algorithm withdrawn (every key retiring) and configured again starts afresh.
            have = kept_algorithms(keys)
            missing = [alg for alg in algorithms if alg not in have]
            if not missing:
                return keys
            for alg in missing:  # the first key of an algorithm just configured
                first = generate_key(alg, now, rsa_key_size=self.rsa_key_size)
                self._write_pem(first)
                keys[first.kid] = first
            self._write_index(keys)
            return keys

    def moved(self) -> bool:
        return self._stamp() != self._index_stamp

    def load(self, known: dict[str, SigningKey]) -> dict[str, SigningKey]:
        with self._locked():
            return self._read_index(known)

    def rotate(
        self,
        known: dict[str, SigningKey],
        now: float,
        retire_after: float,
        delays: Mapping[str, float],
    ) -> tuple[list[SigningKey], dict[str, SigningKey]]:
        def add_keys(keys: dict[str, SigningKey]) -> list[SigningKey]:
            added: list[SigningKey] = []
            for alg, delay in delays.items():
                new = generate_key(
                    alg, now, activate_at=now + delay if delay else None,
                    rsa_key_size=self.rsa_key_size,
                )  # fmt: skip
                self._write_pem(new)
                # Only this algorithm's keys give way: an RS256 rotation leaves EdDSA alone.
                keys.update(retiring_all_by(keys, alg, new.signs_from + retire_after))
                keys[new.kid] = new
                added.append(new)
            return added

        return self._change(known, now, add_keys)

    def retire(
        self, known: dict[str, SigningKey], now: float, alg: str, at: float
    ) -> tuple[list[SigningKey], dict[str, SigningKey]]:
        def schedule(keys: dict[str, SigningKey]) -> list[SigningKey]:
            retiring = retiring_all_by(keys, alg, at)
            keys.update(retiring)
            return list(retiring.values())

        return self._change(known, now, schedule)

    def _change(
        self,
        known: dict[str, SigningKey],
        now: float,
        edit: Callable[[dict[str, SigningKey]], list[SigningKey]],
    ) -> tuple[list[SigningKey], dict[str, SigningKey]]:
        """Apply ``edit`` to the stored keys under the lock, prune and write the index back;
        what ``edit`` returns, and the stored set."""
        with self._locked():
            keys = self._read_index(known)  # another process may have written since
            changed = edit(keys)
            self._prune(keys, now)
            self._write_index(keys)
            return changed, keys

    def problem(self, current: SigningKey) -> str | None:
        for path in (self.dir / _INDEX, self.dir / f"{current.kid}.pem"):
            if not path.is_file():
                return f"{path} is missing (a restart would mint with a new key)"
        return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock serialises processes; the mutex serialises threads of this process.
        with self._mutex:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.dir / _INDEX).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _read_index(self, known: dict[str, SigningKey]) -> dict[str, SigningKey]:
        path = self.dir / _INDEX
        try:
            stamp = self._stamp()
            index = json.loads(path.read_text(encoding="utf-8"))
            current = index["current"]
            entries = index["keys"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable key index ({type(exc).__name__})") from None
        keys: dict[str, SigningKey] = {}
        for entry in entries:
            kid = entry.get("kid") if isinstance(entry, dict) else None
            if not isinstance(kid, str) or not KID_RE.match(kid):
                raise ConfigError(f"{path}: invalid kid in key index")
            alg = entry.get("alg", DEFAULT_ALGORITHM)  # no alg: written when all were EdDSA
            if alg not in ALGORITHMS:
                raise ConfigError(f"{path}: unsupported algorithm in key index")
            old = known.get(kid)
            if old is None or old.alg != alg:
                activate = entry.get("activate_at")
                old = dataclasses.replace(
                    self._read_pem(kid, alg),
                    created=float(entry.get("created") or 0),
                    activate_at=None if activate is None else float(activate),
                )
            keys[kid] = with_retire_at(old, entry.get("retire_at"))
        if current not in keys:
            raise ConfigError(f"{path}: current kid is not in the key index")
        self._index_stamp = stamp
        return keys

    def _read_pem(self, kid: str, alg: str) -> SigningKey:
        path = self.dir / f"{kid}.pem"
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable signing key ({type(exc).__name__})") from None
        try:
            return load_private(private, kid, alg)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def _write_pem(self, key: SigningKey) -> None:
        pem = key.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._atomic_write(self.dir / f"{key.kid}.pem", pem)

    def _write_index(self, keys: dict[str, SigningKey]) -> None:
        newest = newest_per_algorithm(keys)
        current = newest.get(DEFAULT_ALGORITHM) or next(iter(newest.values()))
        entries: list[dict[str, object]] = []
        for k in keys.values():
            entry: dict[str, object] = {
                "kid": k.kid,
                "alg": k.alg,
                "created": k.created,
                "retire_at": k.retire_at,
            }
            if k.activate_at is not None:
                entry["activate_at"] = k.activate_at
            entries.append(entry)
        index = {"current": current, "keys": entries}
        self._atomic_write(self.dir / _INDEX, json.dumps(index, indent=2).encode())
        self._index_stamp = self._stamp()

    def _atomic_write(self, path: Path, data: bytes) -> None:
        # mkstemp creates the file 0600; rename makes readers see old or new, never half.
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _prune(self, keys: dict[str, SigningKey], now: float) -> None:
        """Forget keys whose retirement time has passed and delete their private halves
        (never the newest live key of an algorithm, nor the newest EdDSA key, which the index
        names ``current``: a key published ahead that an emergency rotation retired goes
        too, and so does every key of a withdrawn algorithm once retired)."""
        live = {kid: k for kid, k in keys.items() if k.retire_at is None or now < k.retire_at}
        newest = set(newest_per_algorithm(live).values())
        newest.add(newest_per_algorithm(keys).get(DEFAULT_ALGORITHM, ""))
        for kid, key in list(keys.items()):
            if kid not in newest and key.retire_at is not None and now >= key.retire_at:
                del keys[kid]
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / f"{kid}.pem").unlink()
