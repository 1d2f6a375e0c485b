"""``profile: cosmos``: Azure Cosmos DB for NoSQL (REST) with the stock SDK and hook.

The stock ``AzureCosmosDBHook`` does ``CosmosClient(conn.login, {"masterKey": conn.password})``
and signs every request with that key; the signature names no key. So a task gets:

* ``login`` = ``https://<gateway>/<resource>/_t/<Lockgate token>/`` (the SDK keeps a path
  prefix on every request), ``password`` = ``derive_task_key(secret, jti)`` (never the key).

For each request the profile (which serves the exchange itself, :meth:`CosmosProfile.serve`):

1. takes the token from the path and verifies it (audience = this resource);
2. verifies the master-key signature with the task key derived from the token's ``jti``
   (``x-ms-date`` within ``max_skew``): holding the token (it may show up in URL logs) is
   not enough, the key is needed too, and a key dies with its token;
3. classifies (verb, path, query/upsert/batch headers) into (action, object), failing
   closed (:mod:`.cosmos_classify`):
   objects are ``<db>/<container>``, ``<db>`` or ``*`` (the account); see :func:`classify`;
4. asks policy; a denial is a Cosmos-shaped 403 whose message carries the reason;
5. re-signs upstream with the real account key (current version; an upstream 401 is tried
   once more with the previous version inside the credential's overlap) or sends the Entra
   ID token (``type=aad``), with a fresh ``x-ms-date``;
6. relays the answer. ``GET /`` (account discovery) has its ``databaseAccountEndpoint``
   values rewritten to the gateway URL with the same token prefix, or the SDK would go
   straight to the account. 429s are relayed with their ``x-ms-retry-after-ms`` and never
   retried here: the SDK's own throttling budget is the one that counts.

Rules: deny by default (anything :func:`classify` does not know is refused); ``_rid``-based
links are refused (policy names objects by name); no token, key or signature is logged.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from lockgate import _log, metrics
from lockgate.credentials import cosmos as sig
from lockgate.errors import AuthenticationError, CredentialError, UpstreamUnavailable
from lockgate.gateway.http import responses
from lockgate.gateway.http.forwarded import OVERRIDES, is_forwarding
from lockgate.gateway.http.profiles import Decide, ProfileRequest, UpstreamHeaders, Verdict
from lockgate.gateway.http.profiles.cosmos_classify import ACCOUNT, Operation, Refused, classify
from lockgate.gateway.http.profiles.cosmos_classify import json_or_none as _json

log = _log.get("gateway.http.cosmos")

TOKEN_SEGMENT = "_t"  # noqa: S105 - a path segment name, not a secret
_JWT = re.compile(r"[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}")
_DROP_REQUEST = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "content-length", "host", "expect", "authorization",
     "x-ms-date", "date", *(name.decode() for name in OVERRIDES)}
)  # fmt: skip
_DROP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
     b"transfer-encoding", b"upgrade", b"content-length"}
)  # fmt: skip


# -- the profile -------------------------------------------------------------------------
class CosmosProfile:
    """Serves a ``profile: cosmos`` resource (the proxy hands it the whole exchange)."""

    def __init__(self, resource: Any, target: Any, task_secret: bytes) -> None:
        self.resource = resource
        self.name: str = resource.name
        self.settings = resource.cosmos
        self.max_body: int = self.settings.max_body_bytes
        self._secret = task_secret
        self._base = resource.upstream.rstrip("/")
        self._ssl = target.ssl
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def for_resource(cls, resource: Any, target: Any, data_dir: Path | None) -> CosmosProfile:
        from lockgate.credentials import load_or_create_master_key
        from lockgate.credentials.master_key import ENV_VAR, decode_key

        if data_dir is not None:
            master = load_or_create_master_key(data_dir)
        elif os.environ.get(ENV_VAR):
            master = decode_key(os.environ[ENV_VAR], f"${ENV_VAR}")
        else:
            raise ValueError(f"resource {resource.name}: profile cosmos needs a data_dir")
        return cls(resource, target, sig.task_key_secret(master, resource.name))

    def task_key(self, jti: str) -> str:
        return sig.derive_task_key(self._secret, jti)

    # -- Profile protocol (the engine calls serve instead of these) ------------------------
    def local_answer(self, method: str, path: str) -> bytes | None:
        return None

    def wants_body(self, method: str, path: str) -> bool:
        return True

    async def authorize(
        self, req: ProfileRequest, decide: Decide, headers: UpstreamHeaders
    ) -> Verdict:
        action, obj = req.default
        return Verdict(False, action, obj, "served by CosmosProfile.serve")

    def on_response(
        self, verdict: Verdict, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> dict[str, Any]:
        return dict(verdict.detail)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the exchange ----------------------------------------------------------------------
    async def serve(self, proxy: Any, conn: Any, head: Any, body: Any, p: Any) -> bool:
        """Authenticate, classify, decide, forward, relay and audit one request."""
        from lockgate.gateway.http.proxy import buffered_body, read_whole

        rs, t0, method, head_only = p.rs, p.t0, p.method, p.head_only
        keep = bool(head.keep_alive and body.complete)
        parts = p.target.path.split("/", 3)  # "", "_t", token, rest
        if len(parts) < 3 or parts[1] != TOKEN_SEGMENT or not _JWT.fullmatch(parts[2]):
            return self._auth_failed(proxy, conn, rs, p, AuthenticationError("missing"), keep)
        token = parts[2]
        path = "/" + (parts[3] if len(parts) > 3 else "")
        headers = _header_map(head)
        claims = None
        try:
            claims = proxy._verifier.verify(token, rs.name)
            auth = sig.parse_auth_header(headers.get("authorization", ""))
            sig.verify_master_signature(
                self.task_key(claims.jti), auth, method, path, headers.get("x-ms-date"),
                time.time(), self.settings.max_skew,
            )  # fmt: skip
        except AuthenticationError as exc:
            if exc.claims is None:  # the token verified, the request signature did not
                exc.claims = claims
            return self._auth_failed(proxy, conn, rs, p, exc, keep)
        if not body.complete:
            whole = await read_whole(body, self.max_body)
            if whole is None:
                conn.write(_cosmos(413, "RequestEntityTooLarge", "request body too large",
                                   close=True))  # fmt: skip
                return False
            body = buffered_body(conn, whole)
        elif body.total > self.max_body:
            conn.write(_cosmos(413, "RequestEntityTooLarge", "request body too large"))
            return keep
        data = body.data() if body.total else b""
        keep = bool(head.keep_alive)
        try:
            if p.target.query:  # no SDK sends one; how the account would read it is unknown
                raise Refused(400, "BadRequest", "a query string is not served on Cosmos DB")
            op = classify(method, path, headers, data)
        except Refused as exc:
            rs.count("unknown", "deny")
            proxy.emit("denied", claims, rs.name, None, path, t0, status=exc.status,
                       decision="deny", rule="cosmos-classify", reason=exc.reason)  # fmt: skip
            conn.write(_cosmos(exc.status, exc.code, exc.reason, head_only=head_only))
            return keep
        detail: dict[str, Any] = {"operation": op.name, **_db_container(op.obj)}
        if op.name == "read_account":  # discovery: every client needs it, it names no data
            rule, reason = "cosmos-account-discovery", "account discovery"
        else:
            decision = proxy._decide(claims, rs, op.action, op.obj)
            if not decision.allowed:
                rs.count(op.action, "deny")
                proxy.emit("denied", claims, rs.name, op.action, op.obj, t0, status=403,
                           decision="deny", rule=decision.rule, reason=decision.reason,
                           detail=detail)  # fmt: skip
                message = (
                    f"Lockgate denied {op.action} on {op.obj} ({op.name}) for {claims.sub}: "
                    f"{decision.explain()}"
                )
                conn.write(_cosmos(403, "Forbidden", message, head_only=head_only,
                                   lockgate={"principal": claims.sub, "action": op.action,
                                             "resource": rs.name, "object": op.obj,
                                             "rule": decision.rule}))  # fmt: skip
                return keep
            rule, reason = decision.rule, decision.reason
        if not proxy._audit_ok(conn, body, head_only):
            return keep
        rs.count(op.action, "allow")
        ref = proxy.write_ahead(conn, body, head_only, claims, rs, op.action, op.obj, rule,
                                reason, dict(detail))  # fmt: skip
        if ref is None:
            return keep
        detail["ref"] = ref
        wait = proxy._audit.durable()  # None unless audit durability is fsync
        if wait is not None and not await proxy.until_durable(
            conn, body, head_only, wait, claims, rs.name, op.action, op.obj, ref
        ):
            return False
        base = _public_base(conn, head, p.target.path, parts[2])
        try:
            out = await self._forward(proxy, rs, method, path, p.target.query, headers, data,
                                      base)  # fmt: skip
        except asyncio.CancelledError:  # the client left: the account may have run it
            proxy.emit("upstream_error", claims, rs.name, op.action, op.obj, t0, status=499,
                       decision="allow", rule=rule, reason="client_closed",
                       bytes_in=len(data), detail=detail)  # fmt: skip
            raise
        status, resp_headers, resp_body, retries, error = out
        if retries:
            detail["retries"] = retries
        if status == 429:
            metrics.UPSTREAM_THROTTLES.labels(rs.name).inc()
            detail["retry_after_ms"] = _header(resp_headers, b"x-ms-retry-after-ms")
        charge = _header(resp_headers, b"x-ms-request-charge")
        if charge:
            detail["request_charge"] = charge
        conn.write(_relay(status, resp_headers, resp_body, head_only, keep))
        proxy.emit("upstream_error" if error else "allowed", claims, rs.name, op.action, op.obj,
                   t0, status=status, decision="error" if error else "allow", rule=rule,
                   reason=error or reason, bytes_in=len(data), bytes_out=len(resp_body),
                   detail=detail)  # fmt: skip
        return keep

    def _auth_failed(
        self, proxy: Any, conn: Any, rs: Any, p: Any, exc: AuthenticationError, keep: bool
    ) -> bool:
        # audited as every engine's 401: decision deny, the token's DAG when it verified
        reason = proxy.auth_refused(conn, exc, rs.name, "/_t/<token>", p.t0) or "invalid"
        message = (
            "Lockgate: the endpoint must carry a task token (/_t/<token>/)"
            if reason == "missing"
            else f"Lockgate refused the request: {reason}"
        )
        conn.write(_cosmos(401, "Unauthorized", message, head_only=p.head_only, close=not keep))
        return keep

    async def _forward(
        self,
        proxy: Any,
        rs: Any,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        data: bytes,
        base: str,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, int, str | None]:
        """(status, headers, body, retries, gateway error slug). No retry on 429/5xx."""
        secrets = proxy._secrets
        cred = rs.credential
        discovery = path == "/" and method == "GET"
        fwd = {
            k: v
            for k, v in headers.items()
            if k not in _DROP_REQUEST and not is_forwarding(k.encode("latin-1"))
        }  # client-sent Forwarded / X-Forwarded-* / X-Real-IP never reach the account
        if discovery:
            fwd["accept-encoding"] = "identity"  # the body is rewritten below
        url = URL(self._base + path + (f"?{query}" if query else ""), encoded=True)
        rtype, link = sig.resource_of(path)
        secret = None
        sends = [0]  # upstream requests made, whoever made them (rotation, aiohttp's resend)
        rotated = False

        def retries() -> int:
            return max(sends[0] - 1, 0)

        try:
            if cred is not None:
                secret = await secrets.get(cred)
                if secret is None:
                    raise UpstreamUnavailable("credential unavailable")
            while True:
                fwd["x-ms-date"] = sig.rfc1123_now()
                if secret is not None:
                    fwd["authorization"] = self._authorization(secret.value, method, rtype,
                                                               link, fwd["x-ms-date"])  # fmt: skip
                started = time.monotonic()
                status, resp_headers, body = await self._send(method, url, fwd, data, sends)
                rs.latency.observe(time.monotonic() - started)
                if status == 401 and secret is not None and not rotated:
                    other = await self._other_version(secrets, cred, secret)
                    rotated = True
                    if other is not None:
                        metrics.UPSTREAM_RETRIES.labels(rs.name, "rotation").inc()
                        secret = other
                        continue
                break
        except (UpstreamUnavailable, Exception) as exc:
            if isinstance(exc, TimeoutError):
                slug, status = "upstream_timeout", 504
            elif isinstance(exc, UpstreamUnavailable | AuthenticationError | CredentialError):
                slug, status = "credential_unavailable", 503
            elif isinstance(exc, aiohttp.ClientError | OSError):
                slug, status = "upstream_unreachable", 502
            else:
                log.exception("cosmos exchange failed")
                slug, status = "gateway_error", 502
            metrics.UPSTREAM_ERRORS.labels(rs.name, slug).inc()
            payload = json.dumps({"code": "BadGateway", "message": f"Lockgate: {slug}"}).encode()
            return status, [(b"Content-Type", b"application/json")], payload, retries(), slug
        if discovery and status == 200:
            body, resp_headers = _rewrite_discovery(body, resp_headers, base)
        return status, resp_headers, body, retries(), None

    @staticmethod
    async def _other_version(secrets: Any, cred: str, failed: Any) -> Any:
        """After an upstream 401: a rotation the secret cache has not seen yet (the newer
        version), else the previous version inside the overlap; None when neither differs.

        An Entra token (``aad``) can be refused before the broker plans to refresh it (revoked,
        or expired by the account's clock): the broker then forgets it, so the current
        version comes back as a freshly fetched token rather than the same one, and the
        withdrawn previous secret is not needed."""
        if getattr(failed, "expires_at", None) is not None:  # an access token, not a key
            secrets.forget_token(cred, failed.version)
        else:
            secrets.invalidate(cred)
        current = await secrets.get(cred)
        if current is not None and (
            current.version != failed.version or current.value != failed.value
        ):
            return current
        older = await secrets.get(cred, previous=True)
        if older is not None and older.version != failed.version:
            return older
        return None

    def _authorization(self, value: str, method: str, rtype: str, link: str, x_ms_date: str) -> str:
        if self.settings.upstream_auth == "aad":
            return f"type=aad&ver=1.0&sig={value}"
        return sig.sign(value, method, rtype, link, x_ms_date)

    async def _send(
        self, method: str, url: URL, headers: dict[str, str], data: bytes, sends: list[int]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body); ``sends[0]`` counts the requests that went out. aiohttp
        resends an idempotent request (GET, PUT, DELETE) once by itself when a connection
        drops before the answer, though the account may have run the first: the count lets
        the outcome record say so."""
        if self._http is None:
            counting = aiohttp.TraceConfig()
            counting.on_request_headers_sent.append(_count_send)
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, ssl=self._ssl or True),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                trace_configs=[counting],
            )
        async with self._http.request(
            method, url, headers=headers, data=data or None, allow_redirects=False,
            trace_request_ctx=sends,
        ) as resp:  # fmt: skip
            body = await resp.read()
            return resp.status, list(resp.raw_headers), body


async def _count_send(session: Any, ctx: Any, params: Any) -> None:
    ctx.trace_request_ctx[0] += 1


# -- helpers -----------------------------------------------------------------------------
def _header_map(head: Any) -> dict[str, str]:
    named = head.connection
    out: dict[str, str] = {}
    for name, value in head.headers:
        low = name.lower()
        if low.startswith(b"x-lockgate-") or (named and low in named) or b"_" in low:
            continue  # (the SDKs send no "_" name; some servers read "_" as "-")
        out[low.decode("latin-1")] = value.decode("latin-1")
    return out


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def _db_container(obj: str) -> dict[str, str]:
    if obj == ACCOUNT:
        return {}
    db, _, container = obj.partition("/")
    return {"db": db, "container": container} if container else {"db": db}


def _public_base(conn: Any, head: Any, path: str, token: str) -> str:
    """The URL the client used, up to and including ``/_t/<token>/``."""
    host = head.host.decode("latin-1") if head.host else _header(head.headers, b"host") or ""
    transport = getattr(conn, "transport", None)
    tls = transport is not None and transport.get_extra_info("sslcontext") is not None
    raw = head.target.decode("latin-1").split("?", 1)[0]
    cut = raw.find(f"/{TOKEN_SEGMENT}/{token}")
    prefix = raw[: cut + len(TOKEN_SEGMENT) + len(token) + 2] if cut >= 0 else path
    return f"{'https' if tls else 'http'}://{host}{prefix}/"


def _rewrite_discovery(
    body: bytes, headers: list[tuple[bytes, bytes]], base: str
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    data = _json(body)
    if not isinstance(data, dict):
        return body, headers

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: base if k == "databaseAccountEndpoint" and isinstance(v, str) else walk(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = json.dumps(walk(data), separators=(",", ":")).encode()
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-encoding", b"etag")]
    return out, kept


def _relay(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, head_only: bool, keep: bool
) -> bytes:
    from lockgate.gateway.http.exchange import _STATUS_LINES  # one status line table

    lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
    for k, v in headers:
        if k.lower() in _DROP_RESPONSE or (head_only and k.lower() == b"content-length"):
            continue
        lines.append(b"%s: %s\r\n" % (k, v))
    if not head_only:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    else:
        length = _header(headers, b"content-length")
        if length:
            lines.append(b"Content-Length: %s\r\n" % length.encode("latin-1"))
    if not keep:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(body)
    return b"".join(lines)


def _cosmos(
    status: int,
    code: str,
    message: str,
    *,
    head_only: bool = False,
    close: bool = False,
    lockgate: dict[str, Any] | None = None,
) -> bytes:
    """A Cosmos-shaped error body: the SDK puts ``message`` in its exception text."""
    payload: dict[str, Any] = {"code": code, "message": message}
    if lockgate:
        payload["lockgate"] = lockgate
    return responses.json_response(status, payload, close=close, head_only=head_only)


__all__ = [
    "ACCOUNT",
    "CosmosProfile",
    "Operation",
    "Refused",
    "classify",
]
