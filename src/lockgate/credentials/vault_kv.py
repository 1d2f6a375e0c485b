"""HashiCorp Vault / OpenBao KV version 2: log in, keep the token alive, read one field.

Login (``X-Vault-Namespace`` on every request when a namespace is configured):

- ``approle``: ``POST {address}/v1/auth/{mount}/login {"role_id", "secret_id"}``; the secret
  id is read from ``secret_id_file`` at each login (a rotated file is used at once), or is
  the value stored with ``lockgate creds set NAME``;
- ``jwt``: ``POST {address}/v1/auth/{mount}/login {"role", "jwt"}`` with a fresh JWT
  Lockgate signs as an OIDC issuer (``iss`` its issuer URL, ``sub`` the configured subject,
  ``aud`` the role's bound audience), checked by Vault against Lockgate's JWKS.

Both answer ``{"auth": {"client_token", "lease_duration", "renewable"}}``. The token is
renewed (``POST /v1/auth/token/renew-self``) once two thirds of its lease are gone, and on a
failed renewal (a max TTL reached) or a 403 on a read, a new login is made.

Read: ``GET {address}/v1/{mount}/data/{path}[?version=N]`` with ``X-Vault-Token`` ->
``{"data": {"data": {<field>: <value>, ...}, "metadata": {"version": N, ...}}}``.

Refusals name the HTTP status and Vault's ``errors`` when they are short plain words
(``permission denied``), never a body, the token, the secret id or the value.
"""

from __future__ import annotations

import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from lockgate._files import read_regular_file
from lockgate.config import LockgateConfig
from lockgate.config.credentials import VaultAppRole, VaultJwt, VaultKvCredential
from lockgate.credentials.federation import AssertionSigner
from lockgate.credentials.vaults import Fetched, SecretWithdrawn, json_answer, safe_code
from lockgate.errors import CredentialError

#: The first line of Vault's multierror text: ``1 error occurred:`` / ``2 errors occurred:``.
_MULTIERROR = re.compile(r"[0-9]+ errors? occurred:\n")
#: Renew (or log in again) once this share of the token's lease is gone.
RENEW_AT = 2 / 3

#: What a Vault token looks like (hvs./hvb./s./b. and OpenBao's): printable, no space.
_CLIENT_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")
#: Field names an error names at most (of a secret without the configured field).
FIELDS_NAMED = 10
#: Bytes of an AppRole ``secret_id_file`` read at most (a secret id is a 36-character UUID).
MAX_SECRET_ID_FILE = 4096
#: Seconds of a token's lease taken at most (a lease of 10**400 is not a float).
MAX_LEASE = 10 * 365 * 86400

#: The stored AppRole secret id (the broker's current version of the credential).
SecretIdSource = Callable[[], Awaitable[str]]


@dataclass(slots=True)
class _VaultToken:
    value: str = field(repr=False)
    issued_at: float
    lease: float  # seconds; 0: does not expire
    renewable: bool

    def expired(self, now: float) -> bool:
        return self.lease > 0 and now >= self.issued_at + self.lease

    def renew_due(self, now: float) -> bool:
        return self.lease > 0 and now >= self.issued_at + self.lease * RENEW_AT


class VaultKvReader:
    """Reads ``cred``'s field, logging in and renewing as needed (one per credential)."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        config: LockgateConfig,
        cred: VaultKvCredential,
        *,
        secret_id: SecretIdSource | None = None,
        signer: AssertionSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._config = config
        self.cred = cred
        self._secret_id = secret_id
        self._signer = signer
        self._clock = clock
        self._token: _VaultToken | None = None
        # What the last request carried that an answer must not be allowed to repeat.
        self._sent: tuple[str, ...] = ()
        self._ssl: ssl.SSLContext | None = None  # made at the first request (ca_file read)

    async def fetch(self) -> Fetched:
        """The configured field of the secret (its KV version as the vault version)."""
        for attempt in (1, 2):
            token = await self._live_token()
            status, body = await self._call("GET", self._data_url(), token=token.value)
            if status == 403 and attempt == 1:
                self._token = None  # revoked or expired early: log in again, once
                continue
            if status in (200, 404):
                self._check_not_deleted(body)
            if status != 200:
                raise self._refused("reading", self.cred.held_at, status, body)
            return self._read_answer(body)
        raise CredentialError(f"credential {self.cred.name!r}: Vault refused reading")

    # -- token -----------------------------------------------------------------------------
    async def _live_token(self) -> _VaultToken:
        now = self._clock()
        token = self._token
        if token is not None and not token.renew_due(now):
            return token
        if token is not None and token.renewable and not token.expired(now):
            status, body = await self._call(
                "POST", self._url("auth/token/renew-self"), token=token.value, json={}
            )
            renewed = self._auth_of(body) if status == 200 else None
            if renewed is not None and renewed.lease > (token.issued_at + token.lease - now) + 1:
                self._token = renewed
                return renewed
            # Not renewed, or capped by the token's max TTL: a new login gets a full lease.
        self._token = await self._login()
        return self._token

    async def _login(self) -> _VaultToken:
        auth = self.cred.auth
        payload: dict[str, str]
        if isinstance(auth, VaultAppRole):
            payload = {"role_id": auth.role_id, "secret_id": await self._approle_secret_id(auth)}
        else:
            payload = {"role": auth.role, "jwt": self._sign_jwt(auth)}
        status, body = await self._call("POST", self._url(f"auth/{auth.mount}/login"), json=payload)
        token = self._auth_of(body) if status == 200 else None
        if token is None:
            # A role id is a login name, but some keep it quiet: only a jwt role is named.
            role = f", role {auth.role}" if isinstance(auth, VaultJwt) else ""
            raise self._refused(
                "the", f"{auth.method} login (auth/{auth.mount}{role})", status, body
            )
        return token

    async def _approle_secret_id(self, auth: VaultAppRole) -> str:
        if auth.secret_id_file is not None:
            try:
                value = _read_secret_id_file(auth.secret_id_file)
            except (OSError, ValueError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise CredentialError(
                    f"credential {self.cred.name!r}: cannot read auth.secret_id_file "
                    f"{auth.secret_id_file}: {why}"
                ) from None
        else:
            value = await self._secret_id() if self._secret_id is not None else ""
        if not value:
            raise CredentialError(
                f"credential {self.cred.name!r}: no AppRole secret_id "
                + (
                    f"in {auth.secret_id_file}"
                    if auth.secret_id_file
                    else f"stored; set it with `lockgate creds set {self.cred.name}`"
                )
            )
        return value

    def _sign_jwt(self, auth: VaultJwt) -> str:
        if self._signer is None:
            raise CredentialError(
                f"credential {self.cred.name!r}: a jwt login needs the gateway's signing keys "
                "(this process has none to sign with)"
            )
        now = int(self._clock())
        claims = {
            "iss": self._config.issuer_url,
            "sub": self.cred.assertion_subject,
            "aud": auth.audience,
            "iat": now,
            "nbf": now,
            "exp": now + auth.assertion_ttl,
            "jti": secrets.token_urlsafe(18),
        }
        alg = self._config.federation_algorithm(self.cred)
        try:
            return self._signer(claims, alg)
        except ValueError:
            raise CredentialError(
                f"credential {self.cred.name!r}: no {alg} signing key to sign its Vault login "
                f"with (signing.algorithms must include {alg})"
            ) from None

    def _auth_of(self, body: dict[str, Any]) -> _VaultToken | None:
        auth = body.get("auth")
        if not isinstance(auth, dict) or not isinstance(auth.get("client_token"), str):
            return None
        if not _CLIENT_TOKEN.fullmatch(auth["client_token"]):
            return None  # not a token that can go out as a header (CR/LF, spaces, 10 KB)
        lease = auth.get("lease_duration", 0)
        if isinstance(lease, bool) or not isinstance(lease, int | float) or not lease > 0:
            lease = 0  # none said (or nonsense): kept until a read is refused, then a login
        lease = float(min(lease, MAX_LEASE))
        return _VaultToken(
            auth["client_token"], self._clock(), lease, bool(auth.get("renewable", False))
        )

    # -- requests --------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.cred.address}/v1/{path}"

    def _data_url(self) -> str:
        c = self.cred
        return self._url(f"{c.mount}/data/{quote(c.path, safe='/')}") + (
            f"?version={c.version}" if c.version else ""
        )

    async def _call(
        self, method: str, url: str, *, token: str | None = None, json: object = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json"}
        self._sent = _secrets_in(token, json, self.cred)
        if token is not None:
            headers["X-Vault-Token"] = token
        if self.cred.namespace:
            headers["X-Vault-Namespace"] = self.cred.namespace
        try:
            async with self._session().request(
                method,
                url,
                json=json,
                headers=headers,
                ssl=self._tls(),
                timeout=aiohttp.ClientTimeout(total=self.cred.timeout),
                allow_redirects=False,  # never replay a token or secret id elsewhere
            ) as resp:
                status, body = resp.status, await json_answer(resp, self.cred.name)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CredentialError(
                f"credential {self.cred.name!r}: Vault {self.cred.address} unreachable "
                f"({type(exc).__name__})"
            ) from None
        if isinstance(body.get("wrap_info"), dict):
            # Its token unwraps the answer once: never repeated, never used here.
            raise CredentialError(
                f"credential {self.cred.name!r}: Vault answered {method} {url.split('?')[0]} "
                "response-wrapped (a wrapping policy or control group on that path); "
                "Lockgate reads unwrapped answers only"
            )
        return status, body

    def _tls(self) -> ssl.SSLContext | bool:
        """The context checking the vault's https with ``ca_file``; True: the system's CAs.
        A missing or unreadable ca_file is this credential's error, not the request's."""
        ca_file = self.cred.ca_file
        if ca_file is None:
            return True
        if self._ssl is None:
            if ca_file.exists() and not ca_file.is_file():  # a FIFO would hold the event loop
                raise CredentialError(
                    f"credential {self.cred.name!r}: cannot use ca_file {ca_file}: not a "
                    "regular file"
                )
            try:
                self._ssl = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no CA in it"
                raise CredentialError(
                    f"credential {self.cred.name!r}: cannot use ca_file {ca_file}: {why}"
                ) from None
        return self._ssl

    def _check_not_deleted(self, body: dict[str, Any]) -> None:
        """KV v2 answers a deleted or destroyed version with its metadata and ``data``
        null (a 404): the version was taken back, its cached value is not used either."""
        outer = body.get("data")
        if not isinstance(outer, dict) or outer.get("data") is not None:
            return
        meta = outer.get("metadata")
        if not isinstance(meta, dict):
            return
        destroyed = meta.get("destroyed") is True
        if destroyed or meta.get("deletion_time"):
            version = _kv_version(meta.get("version"))
            raise SecretWithdrawn(
                f"credential {self.cred.name!r}: version {version or '?'} of "
                f"{self.cred.held_at} was {'destroyed' if destroyed else 'deleted'} in Vault; "
                "write a new version (or undelete it)"
            )

    def _read_answer(self, body: dict[str, Any]) -> Fetched:
        c = self.cred
        outer = body.get("data")
        data = outer.get("data") if isinstance(outer, dict) else None
        meta = outer.get("metadata") if isinstance(outer, dict) else None
        if not isinstance(data, dict):
            # KV v2 answers data: null for a deleted or destroyed version.
            raise CredentialError(
                f"credential {c.name!r}: {c.held_at} holds no data (deleted or destroyed "
                "version, or not a KV version 2 mount)"
            )
        value = data.get(c.field)
        if not isinstance(value, str):
            # Field names help, but a hostile answer may name one after the token, or
            # thousands of them: a few plain ones are named, the rest counted.
            plain = (safe_code(k, limit=40, sent=self._sent) for k in data)
            named = sorted(n for n in plain if n)[:FIELDS_NAMED]
            others = len(data) - len(named)
            fields = ", ".join(named + ([f"{others} more"] if others else [])) or "none"
            raise CredentialError(
                f"credential {c.name!r}: the secret has no string field {c.field!r} "
                f"(fields: {fields})"
            )
        version = _kv_version(meta.get("version") if isinstance(meta, dict) else None)
        if c.version and version != str(c.version):
            # A pinned version is the operator's choice: another one is never used in its place.
            raise CredentialError(
                f"credential {c.name!r}: Vault answered another version ({version or 'unnamed'})"
                f" than the pinned {c.version}"
            )
        return Fetched(value, version)

    def _refused(self, doing: str, what: str, status: int, body: dict[str, Any]) -> CredentialError:
        errors = body.get("errors")
        said = [
            safe_code(e, sent=self._sent)
            for e in (_unwrapped(errors) if isinstance(errors, list) else [])
        ]
        named = "".join(f", {e}" for e in said if e)
        if doing == "reading":
            hint = {
                403: f": the token's policy must allow read on {self.cred.mount}/data/"
                f"{self.cred.path}",
                404: ": no such secret or version",
            }.get(status, "")
        else:
            hint = ": check the role and its bindings" if status in (400, 403) else ""
        return CredentialError(
            f"credential {self.cred.name!r}: Vault refused {doing} {what} (HTTP {status}{named})"
            f"{hint}"
        )


def _read_secret_id_file(path: Path) -> str:
    """The secret id in ``path``: a regular file only (a FIFO put in its place would hold the
    event loop, and every request with it), of at most :data:`MAX_SECRET_ID_FILE` bytes."""
    raw = read_regular_file(path, MAX_SECRET_ID_FILE)
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def _secrets_in(token: str | None, payload: object, cred: VaultKvCredential) -> tuple[str, ...]:
    """The token, the login's values (secret id, role id, JWT) and the configured role id."""
    values = [token] if token else []
    if isinstance(payload, dict):  # not the jwt role's name: Vault's errors name it
        values += [v for k, v in payload.items() if k != "role" and isinstance(v, str)]
    if isinstance(cred.auth, VaultAppRole):
        values.append(cred.auth.role_id)
    return tuple(values)


def _unwrapped(errors: list[object]) -> list[object]:
    """Vault's errors with a multierror's text (``1 error occurred:\n\t* permission
    denied\n\n``) taken apart into its items."""
    out: list[object] = []
    for error in errors:
        if isinstance(error, str) and _MULTIERROR.match(error):
            out += [line.strip().removeprefix("* ") for line in error.splitlines()[1:]]
        else:
            out.append(error)
    return [e for e in out if e]


def _kv_version(version: object) -> str:
    """KV v2's version number as text; anything else a vault answers is not repeated."""
    if isinstance(version, int) and not isinstance(version, bool) and 0 <= version < 10**18:
        return str(version)
    if isinstance(version, str) and version.isdecimal() and len(version) <= 18:
        return str(int(version))
    return ""


__all__ = ["FIELDS_NAMED", "MAX_LEASE", "MAX_SECRET_ID_FILE", "RENEW_AT", "VaultKvReader"]
