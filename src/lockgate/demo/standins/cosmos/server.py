"""The HTTP side of the fake Cosmos DB account (aiohttp).

Strategy: check auth first and exactly (nothing is answered to an unsigned or badly signed
request, not even ``GET /``), then throttle on demand, then route on the URL-decoded path
segments to the in-memory :class:`~lockgate.demo.standins.cosmos.store.Store`. The
signature check is a separate, deliberately small implementation written from the REST
docs, not Lockgate's signing module, so a bug in one is caught by the other.

Microsoft Entra ID tokens (``type=aad``) are checked either by an injected verifier or, with
an :class:`AadTrust`, as the service does ("Use data plane role-based access control",
"Disable local auth"): RS256 signature with the tenant's key set, ``iss``, ``aud`` =
``https://<account>.documents.azure.com`` (or ``https://cosmos.azure.com``), ``exp``/``nbf``;
then data-plane RBAC: the token's ``oid`` must hold a role assignment whose role allows the
request's data action at a scope covering it (built-in Data Reader: metadata, reads, queries,
change feed; Data Contributor: also every item write). Database and container writes are
management operations no data role grants. Otherwise 403, substatus 5301, the service's
message. ``disable_local_auth`` refuses master-key requests (401), as the service does.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ssl as ssl_lib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web

from lockgate.demo.standins._serving import serve
from lockgate.demo.standins.entra.resource_trust import EntraTrust, InvalidEntraToken

from .operations import Executed, operation_of
from .routes import EXECUTED, handle
from .store import CosmosError, Store

if TYPE_CHECKING:
    from lockgate.demo.standins.entra import FakeEntra

__all__ = [
    "DATA_CONTRIBUTOR",
    "DATA_READER",
    "AadTrust",
    "CosmosFake",
    "RequestRecord",
    "running_cosmos",
    "start_cosmos",
]

MAX_SKEW_SECONDS = 15 * 60
AadVerifier = Callable[[str], bool]

# Built-in data-plane role definitions (ids and data actions as the docs list them).
_ACCOUNT = "Microsoft.DocumentDB/databaseAccounts"
_CONTAINERS = f"{_ACCOUNT}/sqlDatabases/containers"
DATA_READER = "00000000-0000-0000-0000-000000000001"
DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"
ROLE_ACTIONS = {
    DATA_READER: (f"{_ACCOUNT}/readMetadata", f"{_CONTAINERS}/executeQuery",
                  f"{_CONTAINERS}/readChangeFeed", f"{_CONTAINERS}/items/read"),
    DATA_CONTRIBUTOR: (f"{_ACCOUNT}/readMetadata", f"{_CONTAINERS}/*", f"{_CONTAINERS}/items/*"),
}  # fmt: skip
_ROLE_NAMES = {"reader": DATA_READER, "contributor": DATA_CONTRIBUTOR}
_ROLE_PREFIXES = ("cosmos db built-in ", "data ")
# The data action each item operation needs.
_ITEM_ACTIONS = {
    "read": "items/read", "read_feed": "readChangeFeed", "query": "executeQuery",
    "query_plan": "executeQuery", "create": "items/create", "upsert": "items/upsert",
    "replace": "items/replace", "patch": "items/replace", "delete": "items/delete",
    "batch": "items/upsert",
}  # fmt: skip
_MANAGEMENT = {
    "create_database": f"{_ACCOUNT}/sqlDatabases/write",
    "delete_database": f"{_ACCOUNT}/sqlDatabases/delete",
    "create_container": f"{_CONTAINERS}/write",
    "replace_container": f"{_CONTAINERS}/write",
    "delete_container": f"{_CONTAINERS}/delete",
}


# How the account trusts Entra ID tokens (the tenant's key set URL and issuer).
AadTrust = EntraTrust


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    auth_type: str  # master | aad | resource | none | bad
    status: int
    headers: dict[str, str]
    raw_path: str = ""  # as sent (percent-encoded), without the query string
    body: bytes = b""
    operation: str | None = None  # what the account executed for it (None: nothing)
    principal: str | None = None  # the Entra object id of an AAD request checked by AadTrust


def new_key() -> str:
    """A fresh 64-byte account key, base64 like the portal shows it."""
    return base64.b64encode(uuid.uuid4().bytes * 4).decode()


class CosmosFake:
    """One fake account. Mutable at runtime from the test: keys, throttling, public_url."""

    def __init__(
        self,
        master_keys: list[str],
        aad_verifier: AadVerifier | None,
        aad: AadTrust | None = None,
        *,
        disable_local_auth: bool = False,
    ) -> None:
        self.keys: list[str] = list(master_keys)
        self.aad_verifier = aad_verifier
        self.aad = aad
        self.disable_local_auth = disable_local_auth
        # principal (Entra object id) -> [(role definition id, scope)]
        self.role_assignments: dict[str, list[tuple[str, str]]] = {}
        self.store = Store()
        self.requests: list[RequestRecord] = []
        self.executed: list[Executed] = []  # what the account ran, with what it answered
        # Answer cross-partition queries 400/1004 so the SDK fetches a query plan first, as
        # the service does for ORDER BY, TOP, aggregates and the like.
        self.plan_cross_partition = False
        self.url = ""
        self.port = 0
        self._public_url: str | None = None
        self._throttle_left = 0
        self._throttle_until = 0.0
        self._retry_after_ms = 0
        self._drop_left = 0
        self.answer_delay = 0.0  # seconds to sit on a data request's answer, once run
        self._runner: web.AppRunner | None = None
        self.account_id = "fakeaccount"

    # knobs -----------------------------------------------------------------------------------
    @property
    def public_url(self) -> str:
        """The endpoint advertised in writable/readable locations (default: our own URL)."""
        return self._public_url or self.url

    @public_url.setter
    def public_url(self, value: str | None) -> None:
        self._public_url = value

    def throttle(self, n: int, retry_after_ms: int = 10) -> None:
        """Answer the next ``n`` data requests with 429."""
        self._throttle_left, self._retry_after_ms = n, retry_after_ms

    def throttle_for(self, seconds: float, retry_after_ms: int = 10) -> None:
        """Answer every data request with 429 for ``seconds``."""
        self._throttle_until, self._retry_after_ms = time.monotonic() + seconds, retry_after_ms

    def drop_answers(self, n: int) -> None:
        """Run the next ``n`` data requests, then cut their connection before answering
        (the answer lost on the way back: the client cannot know the account ran it)."""
        self._drop_left = n

    def regenerate(self, which: str) -> str:
        """Replace the primary (index 0) or secondary (index 1) key; return the new one."""
        index = {"primary": 0, "secondary": 1}[which]
        key = new_key()
        self.keys[index] = key
        return key

    @property
    def aad_audiences(self) -> tuple[str, ...]:
        return (f"https://{self.account_id}.documents.azure.com", "https://cosmos.azure.com")

    def assign_role(self, principal_id: str, role: str = "reader", scope: str = "/") -> None:
        """A data-plane role assignment for ``principal_id`` at ``scope`` (``/``, ``/dbs/d``,
        ``/dbs/d/colls/c``): ``role`` is a built-in role by name ("Cosmos DB Built-in Data
        Reader", "Data Contributor", "reader", ...) or definition id."""
        name = role.strip().lower()
        for prefix in _ROLE_PREFIXES:  # "Cosmos DB Built-in Data Reader", "Data Reader"
            name = name.removeprefix(prefix)
        definition = _ROLE_NAMES.get(name, role)
        if definition not in ROLE_ACTIONS:
            raise ValueError(f"no such built-in data role: {role}")
        scope = "/" + scope.strip("/")
        self.role_assignments.setdefault(principal_id, []).append((definition, scope))

    def trust_entra(self, entra: FakeEntra, *, disable_local_auth: bool | None = None) -> AadTrust:
        """Check Entra ID tokens as issued by the test ``entra`` (data-plane RBAC applies)."""
        self.aad = AadTrust.of(entra)
        if disable_local_auth is not None:
            self.disable_local_auth = disable_local_auth
        return self.aad

    def unassign_roles(self, principal_id: str) -> None:
        self.role_assignments.pop(principal_id, None)

    def count(
        self, method: str | None = None, path_prefix: str = "", status: int | None = None
    ) -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method)
            and r.path.startswith(path_prefix)
            and (status is None or r.status == status)
        )

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # request handling ------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        auth_type, principal = "none", None
        try:
            auth_type = self._authenticate(request)
            if auth_type == "aad" and self.aad is not None:
                principal = await self._check_aad(request, self.aad)
                self._authorize(request, principal)
            if self._throttled(request):
                response = _throttle_response(self._retry_after_ms)
            else:
                body = await request.read()
                response = handle(self, request, _segments(request.raw_path), body)
        except CosmosError as err:
            response = error_response(err)
        except Exception as err:  # a bug in the fake: answer like the service would
            response = error_response(CosmosError(500, "InternalServerError", type(err).__name__))
        ran = request.get(EXECUTED)
        if ran is not None:
            ran.status = response.status
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"}
        body = await request.read() if request.can_read_body or request.body_exists else b""
        raw_path = request.raw_path.split("?", 1)[0]
        record = RequestRecord(
            request.method,
            request.path,
            auth_type,
            response.status,
            headers,
            raw_path,
            body,
            ran.op if ran is not None else None,
            principal,
        )
        self.requests.append(record)
        if self.answer_delay and request.path.strip("/"):
            await asyncio.sleep(self.answer_delay)
        if self._drop_left > 0 and request.path.strip("/") and request.transport is not None:
            self._drop_left -= 1
            request.transport.abort()
        response.headers.setdefault("x-ms-activity-id", str(uuid.uuid4()))
        response.headers.setdefault("x-ms-gatewayversion", "version=2.14.0")
        return response

    def _throttled(self, request: web.Request) -> bool:
        if request.path.strip("/") == "":  # account reads are metadata; never throttled here
            return False
        if self._throttle_left > 0:
            self._throttle_left -= 1
            return True
        return time.monotonic() < self._throttle_until

    def _authenticate(self, request: web.Request) -> str:
        raw = request.headers.get("authorization")
        if not raw:
            raise _unauthorized("Required Header authorization is missing.")
        fields = dict(part.partition("=")[::2] for part in unquote(raw).split("&"))
        kind, sig = fields.get("type", ""), fields.get("sig", "")
        if fields.get("ver") != "1.0" or not sig:
            raise _unauthorized("The input authorization token can't serve the request.")
        if kind == "aad":
            if self.aad is not None:
                return "aad"  # checked by _check_aad (the key set is fetched, so async)
            if self.aad_verifier is None or not self.aad_verifier(sig):
                raise _unauthorized("Local Authorization is disabled or AAD token is invalid.")
            return "aad"
        if kind != "master":
            raise _unauthorized("The input authorization token can't serve the request.")
        if self.disable_local_auth:
            raise _unauthorized(
                "Local Authorization is disabled. Use an AAD token to authorize all requests."
            )
        x_date = request.headers.get("x-ms-date", "")
        if not x_date:
            raise _unauthorized("The request must carry an x-ms-date header.")
        try:
            sent = parsedate_to_datetime(x_date).timestamp()
        except (TypeError, ValueError):
            raise _unauthorized("The x-ms-date header is not a valid date.") from None
        if abs(time.time() - sent) > MAX_SKEW_SECONDS:
            raise _unauthorized(
                "The authorization token is not valid at the current time. Please create another "
                "token and retry (token start time: see x-ms-date)."
            )
        rtype, link = _type_and_link(_segments(request.raw_path))
        text = f"{request.method.lower()}\n{rtype.lower()}\n{link}\n{x_date.lower()}\n\n"
        matched = False
        for key in list(self.keys):
            try:
                secret = base64.b64decode(key)
            except binascii.Error:
                continue
            digest = hmac.new(secret, text.encode(), hashlib.sha256).digest()
            matched |= hmac.compare_digest(base64.b64encode(digest), sig.encode())
        if not matched:
            raise _unauthorized(
                "The input authorization token can't serve the request. The wrong key is being "
                "used or the expected payload is not built as per the protocol."
            )
        return "master"

    async def _check_aad(self, request: web.Request, trust: AadTrust) -> str:
        """The token's object id (oid) once it verifies as Entra ID issued it for us."""
        raw = unquote(request.headers.get("authorization", ""))
        token = dict(part.partition("=")[::2] for part in raw.split("&")).get("sig", "")
        try:
            claims = await trust.check(token, trust.audiences or self.aad_audiences)
        except InvalidEntraToken as why:
            raise _unauthorized(f"The AAD token is not valid: {why}.") from None
        oid = claims.get("oid")
        if not isinstance(oid, str) or not oid:
            raise _unauthorized("The AAD token carries no principal (oid).")
        return oid

    def _authorize(self, request: web.Request, principal: str) -> None:
        """Data-plane RBAC: 403/5301 unless a role assignment allows the data action."""
        seg = _segments(request.raw_path)
        op = operation_of(request.method, seg, request.headers)
        if op is None:
            return  # no such operation: the router answers 404/405 and runs nothing
        action, resource = _data_action(op.op, seg), "/" + "/".join(seg)
        for definition, scope in self.role_assignments.get(principal, []):
            # The account's own metadata is readable from any scope the principal holds.
            covers = not seg or resource == scope or resource.startswith(scope.rstrip("/") + "/")
            if covers and any(_allows(allowed, action) for allowed in ROLE_ACTIONS[definition]):
                return
        raise CosmosError(
            403, "Forbidden",
            f"Request blocked by Auth {self.account_id} : Request is blocked because principal "
            f"[{principal}] does not have required RBAC permissions to perform action "
            f"[{action}] on resource [{resource}]. Learn more: https://aka.ms/cosmos-native-rbac.",
            substatus=5301,
        )  # fmt: skip


def _data_action(op: str, seg: list[str]) -> str:
    if op in _MANAGEMENT:
        return _MANAGEMENT[op]
    if len(seg) < 5 or seg[4] == "pkranges":
        return f"{_ACCOUNT}/readMetadata"  # the account, databases, containers, ranges
    return f"{_CONTAINERS}/{_ITEM_ACTIONS.get(op, 'items/' + op)}"


def _allows(allowed: str, action: str) -> bool:
    return action == allowed or (allowed.endswith("/*") and action.startswith(allowed[:-1]))


def _segments(raw_path: str) -> list[str]:
    path = raw_path.split("?", 1)[0].strip("/")
    return [unquote(s) for s in path.split("/")] if path else []


def _type_and_link(segments: list[str]) -> tuple[str, str]:
    """Per the docs: odd segment count = feed (type last, link = parent), even = item."""
    if not segments:
        return "", ""
    if segments[-2:] == ["operations", "partitionkeydelete"]:
        return "colls", "/".join(segments[:-2])
    if len(segments) % 2:
        return segments[-1], "/".join(segments[:-1])
    return segments[-2], "/".join(segments)


def _unauthorized(message: str) -> CosmosError:
    return CosmosError(401, "Unauthorized", message)


def error_response(err: CosmosError) -> web.Response:
    headers = {"x-ms-request-charge": "0"}
    if err.substatus is not None:
        headers["x-ms-substatus"] = str(err.substatus)
    body = {"code": err.code, "message": err.message}
    return web.json_response(body, status=err.status, headers=headers)


def _throttle_response(retry_after_ms: int) -> web.Response:
    return web.json_response(
        {"code": "429", "message": "Request rate is large. More Request Units may be needed."},
        status=429,
        headers={
            "x-ms-retry-after-ms": str(retry_after_ms),
            "x-ms-substatus": "3200",
            "x-ms-request-charge": "0.38",
        },
    )


async def start_cosmos(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    master_keys: list[str] | None = None,
    aad_verifier: AadVerifier | None = None,
    ssl: ssl_lib.SSLContext | None = None,
    aad: AadTrust | None = None,
    disable_local_auth: bool = False,
    account: str = "fakeaccount",
) -> CosmosFake:
    """Start a fake account on ``host:port`` (0 = a free port) in the running loop.

    ``aad`` checks Entra ID tokens as the service does (with data-plane RBAC: see
    :meth:`CosmosFake.assign_role`); ``account`` names it in the tokens' audience."""
    fake = CosmosFake(
        master_keys or [new_key(), new_key()], aad_verifier, aad,
        disable_local_auth=disable_local_auth,
    )  # fmt: skip
    fake.account_id = account
    app = web.Application(client_max_size=2 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", fake._handle)
    served = await serve(app, port, ssl, host)
    fake._runner = served.runner
    fake.port = served.port
    fake.url = f"{served.url}/"
    return fake


@contextmanager
def running_cosmos(**kwargs: Any) -> Iterator[CosmosFake]:
    """Run a fake account on its own loop in a thread, for tests using the synchronous SDK."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            box["fake"] = loop.run_until_complete(start_cosmos(**kwargs))
        except BaseException as err:  # surface start failures in the test thread
            box["error"] = err
        started.set()
        if "fake" in box:
            loop.run_forever()

    thread = threading.Thread(target=run, name="cosmos-fake", daemon=True)
    thread.start()
    started.wait(10)
    if "error" in box:
        raise box["error"]
    fake: CosmosFake = box["fake"]
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
