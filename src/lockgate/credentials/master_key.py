"""The master key that encrypts upstream credentials at rest.

Where it comes from, first match wins:

1. ``LOCKGATE_MASTER_KEY``: base64 of 32 random bytes (from a secret manager, a Kubernetes
   secret ...). Nothing is written to disk.
2. ``master_key_file`` (top-level setting): a file holding the same base64 text, e.g. a
   mounted secret. Never created; it must exist. Symlinks that stay inside its directory
   (a Kubernetes Secret volume's ``..data/``) are followed; the mode rule below holds (use
   ``defaultMode: 0400`` and no group-readable ``fsGroup`` bits on that volume).
3. ``<data_dir>/master.key``: base64 text, created on first start with mode 0600 inside a
   0700 directory. Only with SQLite state: with shared state (PostgreSQL) every replica must
   be given the same key, so a per-replica file is never created.

A key file readable by group or others is refused, like ssh refuses an unprotected private
key: fix the mode, then rotate the credentials if in doubt.

Shared state: the first replica stores the key's *fingerprint* (HMAC-SHA256 of a fixed label
under the key; nothing of the key can be learned from it) in ``lockgate_meta``;
:func:`verify_master_key` makes a replica given another key refuse to start, instead of
failing every credential read later.

Losing the key means losing every stored credential (they must be set again); back it up
with the same care as the credentials themselves. Messages never contain key material.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lockgate import _log
from lockgate.errors import CredentialError
from lockgate.store import Database

ENV_VAR = "LOCKGATE_MASTER_KEY"
KEY_FILE = "master.key"
KEY_BYTES = 32
FINGERPRINT_KEY = "master_key_fingerprint"  # the row in lockgate_meta
_FINGERPRINT_LABEL = b"lockgate master key fingerprint v1"

log = _log.get("credentials")


def load_or_create_master_key(
    data_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    key_file: Path | None = None,
    shared: bool = False,
) -> bytes:
    """Return the 32-byte master key from the environment, ``key_file`` or
    ``data_dir/master.key``.

    Creates ``data_dir/master.key`` (0600, directory 0700) on first start unless ``shared``
    (state on PostgreSQL), which needs the key given. Raises CredentialError when the key is
    missing (shared), malformed, or its file is group/world readable.
    """
    env = os.environ if env is None else env
    raw = env.get(ENV_VAR)
    if raw:
        return decode_key(raw, f"${ENV_VAR}")
    if key_file is not None:
        return _read(_mounted(Path(key_file)))
    if shared:
        raise CredentialError(
            "shared state (state: postgresql) needs the master key given, the same on every "
            f"replica: set {ENV_VAR} or master_key_file (base64 of 32 random bytes, e.g. "
            "`openssl rand -base64 32`); copy it from the replica that set the credentials"
        )
    data_dir = Path(data_dir)
    if not data_dir.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    if not path.exists():
        _create(path)
    return _read(path)


def decode_key(text: str, source: str) -> bytes:
    """Decode base64 (standard or URL-safe) of exactly 32 bytes; the message never shows it."""
    data = text.strip().encode("ascii", "replace")
    for candidate in (_b64(data), _b64(data, urlsafe=True)):
        if candidate is not None and len(candidate) == KEY_BYTES:
            return candidate
    raise CredentialError(
        f"{source}: master key must be base64 of exactly {KEY_BYTES} random bytes "
        "(e.g. `openssl rand -base64 32`)"
    )


def _b64(data: bytes, urlsafe: bool = False) -> bytes | None:
    try:
        if urlsafe:
            return base64.b64decode(data, altchars=b"-_", validate=True)
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _create(path: Path) -> None:
    key = os.urandom(KEY_BYTES)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(key) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and never overwrites: a racing process may have won
        except FileExistsError:
            return
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    log.warning(
        "created a new master key; back it up, stored credentials cannot be read without it",
        extra={"fields": {"path": str(path)}},
    )


def _mounted(path: Path) -> Path:
    """``path`` with symlinks resolved while they stay in its own directory: a Kubernetes
    Secret volume links ``master.key -> ..data/master.key`` (for atomic updates). A link
    leading anywhere else is left alone, and refused when opened."""
    try:
        target = path.resolve(strict=True)
        home = path.parent.resolve(strict=True)
    except (OSError, RuntimeError):
        return path  # opening it names the problem
    return target if target.is_relative_to(home) else path


def _read(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise CredentialError(f"{path}: cannot open master key: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError(f"{path}: master key is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise CredentialError(
                f"{path}: master key file is accessible by group or others (mode {mode:04o}); "
                f"refusing to use it. Run: chmod 600 {path}"
            )
        data = fh.read(4096)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CredentialError(f"{path}: master key must be base64 text") from None
    return decode_key(text, str(path))


def fingerprint(master_key: bytes) -> str:
    """HMAC-SHA256 of a fixed label under the key (hex): names the key, reveals nothing."""
    return hmac.new(master_key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def derived_aead(master_key: bytes, label: bytes) -> AESGCM:
    """AES-256-GCM under a key derived from the master key for one use (HKDF-SHA256 with
    ``label`` as its info): what one use encrypts, another's key cannot open."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(master_key)
    return AESGCM(key)


def verify_master_key(db: Database, master_key: bytes) -> None:
    """Record the key's fingerprint in ``db`` on first use, else check it matches.

    Raises CredentialError (before anything is served) when this process holds another key
    than the one the shared database was set up with."""
    mine = fingerprint(master_key)
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO lockgate_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (FINGERPRINT_KEY, mine),
        )
        row = cur.execute(
            "SELECT value FROM lockgate_meta WHERE key = ?", (FINGERPRINT_KEY,)
        ).fetchone()
    stored = str(row[0]) if row else mine
    if not hmac.compare_digest(stored, mine):
        raise CredentialError(
            f"{db.label}: this replica's master key (fingerprint {mine[:16]}) is not the one "
            f"the shared state was set up with (fingerprint {stored[:16]}): give every replica "
            f"the same {ENV_VAR} or master_key_file"
        )
