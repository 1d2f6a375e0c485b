"""Workload identity: what a worker proves itself with when it holds no secret.

A token source hands the secrets backend's client a fresh workload-identity token (a JWT
some issuer signed for this workload) for every control request; the token service
verifies it against the issuer's keys (RFC 8693 token exchange, see
:mod:`lockgate.identity.oidc`). Nothing here is a stored secret: the tokens are
short-lived, audience-bound and rotated by the platform.

Sources:

- :class:`TokenFile`: a file read again at every mint. A Kubernetes projected
  service-account token (the kubelet rewrites it before it expires), a SPIFFE helper's
  JWT-SVID file, any OIDC token file. Only a regular file is read (a FIFO or a device
  named by mistake must not hang the task or feed it endless bytes), through one open
  descriptor (the kubelet's symlink swap gives either the old or the new token, whole);
  a token caught half-written by a helper that rewrites its file in place, or a path
  caught mid-swap (resolved through the old payload directory as it was removed), is read
  again a few times before the file is called broken or missing.
- :class:`TokenFileFromEnv`: the file named by an environment variable, looked up at every
  mint: ``AZURE_FEDERATED_TOKEN_FILE`` (Azure workload identity's webhook sets it).
- :class:`SpiffeWorkloadApi`: a JWT-SVID for ``audience`` from the SPIFFE Workload API
  (a SPIRE agent's socket) through the ``spiffe`` package (extra ``lockgate[spiffe]``),
  fetched at every mint.

Errors (:class:`WorkloadIdentityUnavailable`) name the file, variable or socket, never
the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from pathlib import Path
from typing import Protocol

from lockgate._files import FileTooLarge, NotRegularFile, read_regular_file

#: ``spiffe_socket`` value meaning "the socket ``SPIFFE_ENDPOINT_SOCKET`` names".
SOCKET_FROM_ENV = "env"
SPIFFE_SOCKET_ENV = "SPIFFE_ENDPOINT_SOCKET"
_MAX_TOKEN_BYTES = 64 * 1024
# A file that does not hold a whole JWT is read again this often, this far apart: a
# writer that truncates and rewrites in place is done within milliseconds.
_READ_ATTEMPTS = 5
_REREAD_PAUSE = 0.05


class WorkloadIdentityUnavailable(Exception):
    """No workload-identity token could be had; the message says where it was looked for."""


class TokenSource(Protocol):
    """Where a worker's workload-identity token comes from."""

    def token(self) -> str:
        """A fresh token (a compact JWT), or :class:`WorkloadIdentityUnavailable`."""
        ...

    def describe(self) -> str:
        """Where the token comes from, for messages (never the token)."""
        ...


class TokenFile:
    """A token file read again at every mint (the platform rotates it under us)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"workload identity token file {self.path}"

    def token(self) -> str:
        for _attempt in range(_READ_ATTEMPTS - 1):
            raw = self._read(missing_ok=True)
            token = _whole_jwt(raw) if raw is not None else None
            if token is not None:
                return token
            time.sleep(_REREAD_PAUSE)  # perhaps caught mid-write or mid-swap: once more
        token = _whole_jwt(self._read(missing_ok=False) or b"")
        if token is None:
            raise WorkloadIdentityUnavailable(f"{self.describe()} is empty or does not hold a JWT")
        return token

    def _read(self, *, missing_ok: bool) -> bytes | None:
        """The file's bytes, from a regular file only and no more than a token needs; None
        when it is missing and ``missing_ok`` (the kubelet's swap removes the old payload
        directory: a path resolved through the old ``..data`` link finds nothing)."""
        try:
            return read_regular_file(self.path, _MAX_TOKEN_BYTES)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise WorkloadIdentityUnavailable(
                f"cannot read {self.describe()}: no such file"
            ) from None
        except NotRegularFile:
            raise WorkloadIdentityUnavailable(f"{self.describe()} is not a regular file") from None
        except FileTooLarge:
            raise WorkloadIdentityUnavailable(
                f"{self.describe()} is too large for a token"
            ) from None
        except OSError as exc:
            raise WorkloadIdentityUnavailable(
                f"cannot read {self.describe()}: {exc.strerror or type(exc).__name__}"
            ) from None


class TokenFileFromEnv:
    """The token file an environment variable names, looked up at every mint."""

    def __init__(self, variable: str) -> None:
        self.variable = variable

    def describe(self) -> str:
        return f"workload identity token file named by ${self.variable}"

    def token(self) -> str:
        path = os.environ.get(self.variable, "").strip()
        if not path:
            raise WorkloadIdentityUnavailable(
                f"${self.variable} is not set: no workload identity token file to read "
                "(is the workload identity webhook enabled for this pod?)"
            )
        return TokenFile(path).token()


class SpiffeWorkloadApi:
    """JWT-SVIDs for ``audience`` from the SPIFFE Workload API at ``socket`` (a path,
    ``unix://`` URI, or :data:`SOCKET_FROM_ENV` for ``$SPIFFE_ENDPOINT_SOCKET``)."""

    def __init__(self, socket: str, audience: str, *, timeout: float = 10.0) -> None:
        if not audience:
            raise ValueError("spiffe_audience is required: a JWT-SVID is minted for an audience")
        self.socket = socket
        self.audience = audience
        self.timeout = timeout

    def _address(self) -> str:
        socket = self.socket
        if socket == SOCKET_FROM_ENV:
            socket = os.environ.get(SPIFFE_SOCKET_ENV, "").strip()
            if not socket:
                raise WorkloadIdentityUnavailable(
                    f"${SPIFFE_SOCKET_ENV} is not set: no SPIFFE Workload API socket to ask"
                )
        return socket if "://" in socket else "unix://" + socket

    def describe(self) -> str:
        where = f"${SPIFFE_SOCKET_ENV}" if self.socket == SOCKET_FROM_ENV else self.socket
        return f"SPIFFE Workload API at {where}"

    def token(self) -> str:
        try:
            from spiffe import WorkloadApiClient
        except ImportError:
            raise WorkloadIdentityUnavailable(
                "spiffe_socket needs the spiffe package: pip install 'lockgate[spiffe]'"
            ) from None
        address = self._address()
        try:
            # One short-lived channel per mint: mints are rare, and a fresh SVID each time.
            with WorkloadApiClient(address, default_timeout=self.timeout) as client:
                svid = client.fetch_jwt_svid(audience={self.audience})
        except Exception as exc:  # the package raises its own tree and grpc's
            raise WorkloadIdentityUnavailable(
                f"no JWT-SVID from the {self.describe()} ({address}): {type(exc).__name__}"
            ) from None
        return str(svid.token)


def _whole_jwt(raw: bytes) -> str | None:
    """The compact JWT ``raw`` holds (surrounding white space dropped), or None when it is
    empty, not ASCII, or its header or payload is not a whole JSON object (a cut file)."""
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    parts = token.split(".")
    if len(parts) != 3 or not parts[2]:
        return None
    try:
        for part in parts[:2]:
            if not isinstance(
                json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))), dict
            ):
                return None
    except (binascii.Error, ValueError, RecursionError):
        return None
    return token


def token_source(
    *,
    identity_token_file: str | None = None,
    identity_token_env: str | None = None,
    spiffe_socket: str | None = None,
    spiffe_audience: str | None = None,
) -> TokenSource | None:
    """The one token source these secrets-backend kwargs name (None: none named);
    ValueError when more than one is named, or a SPIFFE socket without an audience."""
    named = [
        kwarg
        for kwarg, value in (
            ("identity_token_file", identity_token_file),
            ("identity_token_env", identity_token_env),
            ("spiffe_socket", spiffe_socket),
        )
        if value
    ]
    if len(named) > 1:
        raise ValueError(f"give one workload identity source, not {' and '.join(named)}")
    if spiffe_audience and not spiffe_socket:
        raise ValueError("spiffe_audience is set but spiffe_socket is not")
    if identity_token_file:
        return TokenFile(identity_token_file)
    if identity_token_env:
        return TokenFileFromEnv(identity_token_env)
    if spiffe_socket:
        return SpiffeWorkloadApi(spiffe_socket, spiffe_audience or "")
    return None
