"""A small synchronous client for the Lockgate token service, used inside Airflow tasks.

Standard library only (urllib), so the provider adds no dependency to Airflow workers.
Every control request carries the deployment's proof, one of two kinds:

- a workload-identity token (:mod:`lockgate.airflow.workload_identity`: a projected
  service-account token file, ``AZURE_FEDERATED_TOKEN_FILE``, a SPIFFE JWT-SVID), read
  fresh for each request and sent as an RFC 8693 token exchange (``grant_type`` token
  exchange, ``subject_token``, ``subject_token_type`` JWT, ``client_id`` the deployment):
  nothing stored on the worker. Such a token proves the deployment for as long as it
  lives (a projected token may live a year), so it travels over https only, or plain http
  to this very machine (loopback): never in clear text across a network;
- the deployment's client secret, read from a file or an environment variable, sent only
  in the request body.

Neither is ever logged. A token request may carry the task's W3C ``traceparent`` header
(:mod:`lockgate.airflow.trace_context`), so the gateway's spans join the task's trace.

An answer that says "later" (429 over a rate limit, or 503 with ``Retry-After``) is
retried after the time it names, as long as the whole call stays within ``retry_budget``
seconds; past that it is GatewayUnavailable.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockgate._urls import private_channel
from lockgate.airflow.workload_identity import (
    TokenSource,
    WorkloadIdentityUnavailable,
    token_source,
)

# A task try as the token service names it: dag_id, task_id, run_id (strings), try_number
# and map_index (integers; -1 for a task that is not mapped).
Coordinates = dict[str, str | int]
#: Seconds one call may spend waiting on "retry later" answers before giving up.
DEFAULT_RETRY_BUDGET = 30.0
_MAX_RETRY_AFTER = 60.0  # a longer wait than this is not worth holding a task slot for
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a URN


class GatewayDenied(Exception):
    """The token service refused (policy, delegation or attestation)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        reason = body.get("reason") or body.get("error_description") or body.get("error")
        super().__init__(f"Lockgate refused (HTTP {status}): {reason}")


class GatewayUnavailable(Exception):
    """The token service could not be reached or answered an unexpected error."""


class _RetryLater(Exception):
    """The token service asked to be asked again in ``seconds``."""

    def __init__(self, status: int, seconds: float) -> None:
        super().__init__(status, seconds)
        self.status = status
        self.seconds = seconds


@dataclass(frozen=True)
class MintedToken:
    token: str
    expires_at: float
    jti: str
    principal: str
    issued_at: float = field(default_factory=time.time)
    traceparent: str | None = None  # the trace context sent with the request, if any

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.issued_at


@dataclass(frozen=True)
class DbRole:
    """A per-task database role (``POST /v1/db-role``): log in to the cluster directly."""

    username: str
    password: str = field(repr=False)
    expires_at: float
    jti: str
    principal: str


class TokenServiceClient:
    def __init__(
        self,
        url: str,
        deployment: str,
        *,
        client_secret: str | None = None,
        client_secret_file: str | None = None,
        client_secret_env: str | None = None,
        identity_token_file: str | None = None,
        identity_token_env: str | None = None,
        spiffe_socket: str | None = None,
        spiffe_audience: str | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
    ) -> None:
        """One proof: a client secret (``client_secret[_file|_env]``) or one
        workload-identity source (``identity_token_file``, ``identity_token_env``,
        ``spiffe_socket`` + ``spiffe_audience``); ValueError for more than one."""
        self.url = url.rstrip("/")
        self.deployment = deployment
        self._secret = client_secret
        self._secret_file = client_secret_file
        self._secret_env = client_secret_env
        self.identity: TokenSource | None = token_source(
            identity_token_file=identity_token_file,
            identity_token_env=identity_token_env,
            spiffe_socket=spiffe_socket,
            spiffe_audience=spiffe_audience,
        )
        if self.identity is not None and (client_secret or client_secret_file or client_secret_env):
            raise ValueError(
                "give one proof: a client secret or a workload identity source, not both"
            )
        self.timeout = timeout
        self.retry_budget = retry_budget
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def _client_secret(self) -> str:
        if self._secret:
            return self._secret
        if self._secret_env and os.environ.get(self._secret_env):
            return os.environ[self._secret_env].strip()
        if self._secret_file:
            return Path(self._secret_file).read_text(encoding="utf-8").strip()
        raise GatewayUnavailable(
            "Lockgate secrets backend has no proof: set identity_token_file, "
            "identity_token_env or spiffe_socket (workload identity), or client_secret_file "
            "or client_secret_env, in [workers] secrets_backend_kwargs"
        )

    def _post(
        self, path: str, fields: Mapping[str, object], *, traceparent: str | None = None
    ) -> dict[str, Any]:
        data = urllib.parse.urlencode({k: str(v) for k, v in fields.items() if v is not None})
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if traceparent:
            headers["traceparent"] = traceparent
        req = urllib.request.Request(  # noqa: S310 - URL comes from operator config
            self.url + path, data=data.encode(), headers=headers, method="POST"
        )
        return self._send(req)

    def _send(self, req: urllib.request.Request) -> dict[str, Any]:
        """One call, retried while the gateway says "later" and the budget allows."""
        deadline = time.monotonic() + self.retry_budget
        while True:
            try:
                return self._send_once(req)
            except _RetryLater as later:
                if time.monotonic() + later.seconds > deadline:
                    raise GatewayUnavailable(
                        f"Lockgate token service busy (HTTP {later.status}); "
                        f"retry after {later.seconds:g} s"
                    ) from None
                time.sleep(later.seconds)

    def _send_once(self, req: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:  # noqa: S310
                return _json_object(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                body = _json_object(exc.read())
            except ValueError:
                body = {"error": f"HTTP {exc.code}"}
            if exc.code in (400, 401, 403, 404):
                raise GatewayDenied(exc.code, body) from None
            if exc.code == 429 or (exc.code == 503 and exc.headers.get("Retry-After")):
                raise _RetryLater(exc.code, _retry_after(exc.headers.get("Retry-After"))) from None
            raise GatewayUnavailable(f"Lockgate token service answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise GatewayUnavailable(
                f"Lockgate token service unreachable at {self.url}: {exc}"
            ) from None

    def _auth(self) -> dict[str, str]:
        """The proof fields of a control request (a token exchange with a workload
        identity, else the client secret)."""
        if self.identity is None:
            return {"client_id": self.deployment, "client_secret": self._client_secret()}
        if not private_channel(self.url):
            raise GatewayUnavailable(
                "Lockgate secrets backend sends no workload identity token over plain http to "
                f"{self.url}: use the gateway's https url (and ca_file)"
            )
        try:
            subject_token = self.identity.token()
        except WorkloadIdentityUnavailable as exc:
            raise GatewayUnavailable(f"Lockgate secrets backend has no proof: {exc}") from None
        return {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": JWT_TOKEN_TYPE,
            "client_id": self.deployment,
        }

    def catalog(self) -> dict[str, dict[str, Any]]:
        """conn_id → connection template, for the conn_ids this deployment may ask for."""
        body = self._post("/v1/catalog", self._auth())
        return {entry["conn_id"]: entry for entry in body.get("connections", [])}

    def mint(
        self,
        *,
        conn_id: str,
        coords: Coordinates,
        requested_ttl: int | None,
        traceparent: str | None = None,
    ) -> MintedToken:
        """A token for task try ``coords``; ``traceparent`` (the task's W3C trace context)
        is sent as that header, and the token carries it."""
        fields: dict[str, object] = {
            "grant_type": "client_credentials",  # a token exchange's proof says otherwise
            **self._auth(),
            "conn_id": conn_id,
            **coords,
        }
        if requested_ttl:
            fields["requested_ttl"] = requested_ttl
        body = self._post("/v1/token", fields, traceparent=traceparent)
        return _minted(body, traceparent=traceparent)

    def poll_token(self, *, conn_id: str, scope: dict[str, str]) -> MintedToken:
        """A read-only token for polling from the triggerer (no task context)."""
        return _minted(self._post("/v1/poll-token", {**self._auth(), "conn_id": conn_id, **scope}))

    def cosmos_key(self, token: str) -> str:
        """The Cosmos DB key the gateway derives for ``token`` (the task signs with it)."""
        return str(self._post("/v1/cosmos-key", {**self._auth(), "token": token})["key"])

    def db_role(self, *, conn_id: str, coords: Coordinates, requested_ttl: int | None) -> DbRole:
        """A dynamic database role for this task try (the password is never logged)."""
        fields: dict[str, object] = {**self._auth(), "conn_id": conn_id, **coords}
        if requested_ttl:
            fields["requested_ttl"] = requested_ttl
        body = self._post("/v1/db-role", fields)
        return DbRole(
            username=body["username"],
            password=body["password"],
            expires_at=float(body["expires_at"]),
            jti=body.get("jti", ""),
            principal=body.get("principal", ""),
        )

    def revoke_task_try(self, coords: Coordinates) -> None:
        self._post("/v1/revoke", {**self._auth(), **coords})


def _minted(body: dict[str, Any], *, traceparent: str | None = None) -> MintedToken:
    return MintedToken(
        token=body["access_token"],
        expires_at=time.time() + int(body["expires_in"]),
        jti=body.get("jti", ""),
        principal=body.get("principal", ""),
        traceparent=traceparent,
    )


def _retry_after(value: str | None) -> float:
    """``Retry-After`` in seconds (an HTTP date or nonsense: 1 s), within 1 s .. 60 s."""
    try:
        seconds = float(value or "")
    except ValueError:
        return 1.0
    if seconds != seconds:  # NaN
        return 1.0
    return min(max(seconds, 1.0), _MAX_RETRY_AFTER)


def _json_object(raw: bytes) -> dict[str, Any]:
    """The gateway's JSON answer (empty: ``{}``); ValueError when it is not a JSON object."""
    body = json.loads(raw or b"{}")
    if not isinstance(body, dict):
        raise ValueError("the answer is not a JSON object")
    return body
