"""Find stored secrets where the secretless form must have none: an Airflow worker's
environment and files, and the gateway's data directory. ``lockgate demo --secretless`` runs
it after its DAGs (its verdict closes the transcript); the end-to-end tests run it too, and
plant secrets to see it find them.

What counts as a secret here (issue 12: "a scan finds none"):

- a known secret value the caller hands in (account keys, client secrets, the deployment's
  client secret, upstream access tokens the stand-ins issued), raw or base64-encoded;
- anything shaped like one whatever its value: a Cosmos DB account key or connection string,
  a ``client_secret`` setting (a client secret file or variable counts: it names a stored
  secret), a Databricks personal access token (``dapi...``);
- a private key in PEM form, unless it is one of ``own_keys`` (Lockgate's own signing and
  TLS keys, which must exist in the gateway);
- a JWT that is an upstream access token: issued by Entra ID (``sts.windows.net``,
  ``login.microsoftonline.com``) or by a Databricks workspace.

A workload-identity token (the projected service-account token the worker proves itself
with) is none of these: short-lived, re-read at every mint, issued by the cluster.

The scan reads bytes, so SQLite databases, logs and pickles are searched as they are; values
a store keeps encrypted are not visible this way, which is why the credential store is also
checked to hold no row at all (:func:`credential_rows`).
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

# Shapes of secrets, whatever their value.
COSMOS_ACCOUNT_KEY = re.compile(rb"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{86}==")
COSMOS_CONNECTION_STRING = re.compile(rb"AccountKey=[^;\s\"']+", re.IGNORECASE)
CLIENT_SECRET_SETTING = re.compile(
    rb"client_secret(?:_file|_env)?[\"']?\s*[:=]\s*[\"']?(?!null|None|[\"',}\s])[^\"',}\s]+",
    re.IGNORECASE,
)
DATABRICKS_PAT = re.compile(rb"dapi[0-9a-f]{32}")
PRIVATE_KEY_PEM = re.compile(
    rb"-----BEGIN ((?:[A-Z]+ )*PRIVATE KEY)-----[A-Za-z0-9+/=\s:,-]*?-----END \1-----"
)
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
# Issuers of upstream access tokens (a worker or the gateway's disk must hold none).
UPSTREAM_TOKEN_ISSUERS = re.compile(
    r"^https://(sts\.windows\.net|login\.microsoftonline\.com)/|\.azuredatabricks\.net|/oidc$"
)
# Files larger than this are read only up to it (a SQLite WAL, a big log): secrets are small
# and written early; the scan stays fast.
MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    where: str  # "env:NAME" or a file path
    what: str  # what was found, never the value itself

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class SecretScan:
    """One scan's rules: the secret values known to exist somewhere and the keys allowed."""

    known: Mapping[str, str] = field(default_factory=dict)  # label -> secret value
    own_keys: Collection[bytes] = ()  # SubjectPublicKeyInfo DER of keys allowed on disk
    extra_issuers: Collection[str] = ()  # more upstream token issuers (a stand-in's URL)

    def scan_bytes(self, where: str, blob: bytes) -> list[Finding]:
        found = [Finding(where, f"known secret {label}") for label in self._known_in(blob)]
        for pattern, what in (
            (COSMOS_ACCOUNT_KEY, "a Cosmos DB account key"),
            (COSMOS_CONNECTION_STRING, "a Cosmos DB connection string with its key"),
            (CLIENT_SECRET_SETTING, "a client secret setting"),
            (DATABRICKS_PAT, "a Databricks personal access token"),
        ):
            if pattern.search(blob):
                found.append(Finding(where, what))
        for match in PRIVATE_KEY_PEM.finditer(blob):
            if public_key_id(match.group(0)) not in self.own_keys:
                found.append(Finding(where, f"a {match.group(1).decode()} that is not Lockgate's"))
        for match in JWT.finditer(blob):
            issuer = self._upstream_issuer(match.group(0))
            if issuer is not None:
                found.append(Finding(where, f"an access token issued by {issuer}"))
        return found

    def scan_env(self, env: Mapping[str, str], where: str = "env") -> list[Finding]:
        found = []
        for name, value in env.items():
            found += self.scan_bytes(f"{where}:{name}", f"{name}={value}".encode())
        return found

    def scan_tree(self, root: Path, *, skip: Collection[Path] = ()) -> list[Finding]:
        """Every regular file under ``root`` (symlinks not followed), except under ``skip``."""
        found = []
        for path in sorted(files_under(root)):
            if any(path.is_relative_to(s) for s in skip):
                continue
            with path.open("rb") as fh:
                found += self.scan_bytes(str(path), fh.read(MAX_FILE_BYTES))
        return found

    def _known_in(self, blob: bytes) -> list[str]:
        hits = []
        for label, value in self.known.items():
            raw = value.encode()
            if not raw:
                continue
            forms = (raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"="))
            if any(form in blob for form in forms):
                hits.append(label)
        return hits

    def _upstream_issuer(self, token: bytes) -> str | None:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        issuer = str(claims.get("iss", ""))
        if UPSTREAM_TOKEN_ISSUERS.search(issuer) or issuer in self.extra_issuers:
            return issuer
        return None


def files_under(root: Path) -> Iterable[Path]:
    if root.is_file():
        yield root
        return
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def public_key_id(pem: bytes) -> bytes | None:
    """SubjectPublicKeyInfo DER of the private key in ``pem`` (None: unreadable/encrypted,
    so never one of Lockgate's own)."""
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return None
    return spki(key.public_key())


def spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_ids_of_files(paths: Iterable[Path]) -> set[bytes]:
    """The public-key ids of every private key PEM in ``paths`` (TLS keys, CA keys)."""
    ids = set()
    for path in paths:
        for match in PRIVATE_KEY_PEM.finditer(path.read_bytes()):
            key_id = public_key_id(match.group(0))
            if key_id is not None:
                ids.add(key_id)
    return ids


def key_ids_of_jwks(jwks: Mapping[str, object]) -> set[bytes]:
    """The public-key ids of a JWKS (Lockgate's published signing keys, every algorithm)."""
    keys = jwks.get("keys", [])
    if not isinstance(keys, list):
        raise ValueError("a JWKS whose 'keys' is not a list")
    return {spki(jwt.PyJWK(jwk).key) for jwk in keys}


def credential_rows(database: Path) -> list[str]:
    """Names of the credentials the gateway's SQLite store holds (a secretless gateway: none)."""
    if not database.exists():
        return []
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        if "credential_versions" not in tables:
            return []
        rows = con.execute("select distinct name from credential_versions order by name")
        return [str(r[0]) for r in rows]
    finally:
        con.close()


def dumped_env(path: Path) -> dict[str, str]:
    """The environment a task wrote with ``json.dump(dict(os.environ), ...)``."""
    env = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(env, dict):
        raise ValueError(f"{path} holds no environment (a JSON object)")
    return {str(k): str(v) for k, v in env.items()}
