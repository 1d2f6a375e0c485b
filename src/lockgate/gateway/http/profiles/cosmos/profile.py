"""``profile: cosmos``: Azure Cosmos DB for NoSQL (REST) with the stock SDK and hook.

The stock ``AzureCosmosDBHook`` does ``CosmosClient(conn.login, {"masterKey": conn.password})``
and signs every request with that key; the signature names no key. So a task gets:

* ``login`` = ``https://<gateway>/<resource>/_t/<Lockgate token>/`` (the SDK keeps a path
  prefix on every request), ``password`` = ``derive_task_key(secret, jti)`` (never the key).

The profile plugs into the one HTTP exchange through its hooks:

1. ``authenticate``: the token comes from the path; ``verify_request``: the master-key
   signature is verified with the task key derived from the token's ``jti`` (``x-ms-date``
   within ``max_skew``): holding the token (it may show up in URL logs) is not enough, the
   key is needed too, and a key dies with its token;
2. ``authorize``: (verb, path, query/upsert/batch headers) is classified into (action,
   object), failing closed (:mod:`.classify`): objects are ``<db>/<container>``, ``<db>``
   or ``*`` (the account); policy decides; a denial is a Cosmos-shaped 403 whose message
   carries the reason (``error_body``);
3. ``sign_upstream``: each attempt is re-signed with the real account key and a fresh
   ``x-ms-date`` (an upstream 401 is retried once by the exchange with a rotated or the
   previous version) or carries the Entra ID token (``type=aad``);
4. ``rewrite_response``: ``GET /`` (account discovery) has its ``databaseAccountEndpoint``
   values rewritten to the gateway URL with the same token prefix, or the SDK would go
   straight to the account. 429s are relayed with their ``x-ms-retry-after-ms`` and never
   retried by the gateway (``retry_statuses`` is empty): the SDK's own throttling budget is
   the one that counts; ``on_response`` records them and the request charge.

Rules: deny by default (anything :func:`classify` does not know is refused); ``_rid``-based
links are refused (policy names objects by name); no token, key or signature is logged.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockgate.credentials import cosmos as sig
from lockgate.gateway.engine import UpstreamSecret
from lockgate.gateway.http import framing
from lockgate.gateway.http.normalize import Target
from lockgate.gateway.http.profiles.cosmos.answers import (
    db_container,
    error_body,
    header,
    rewrite_discovery,
)
from lockgate.gateway.http.profiles.cosmos.classify import Refused, classify
from lockgate.gateway.http.profiles.hooks import (
    Decide,
    Headers,
    Presented,
    ProfileBase,
    ProfileRequest,
    UpstreamCall,
    UpstreamHeaders,
    Verdict,
)

if TYPE_CHECKING:
    from lockgate.config import HttpResource
    from lockgate.gateway.http.upstream import UpstreamTarget
    from lockgate.identity import Claims

TOKEN_SEGMENT = "_t"  # noqa: S105 - a path segment name, not a secret
SHOWN_PATH = f"/{TOKEN_SEGMENT}/<token>"  # what a record names instead of the token
_JWT = re.compile(r"[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}")
_PREFIX = re.compile(rf"^[^?]*?/{TOKEN_SEGMENT}/[^/?]+")
_NO_ENCODING = frozenset({b"accept-encoding"})  # the discovery body is rewritten


def _operations(name: str, body: bytes | None) -> int:
    """How many operations a request carries: each of a batch's (bulk mode sends batches of
    up to 100) counts against a rate, so a batch is no way past one."""
    if name != "batch" or not body:
        return 1
    try:
        ops = json.loads(body)
    except (ValueError, RecursionError):
        return 1  # not a batch the account would run
    return max(1, len(ops)) if isinstance(ops, list) else 1


class CosmosProfile(ProfileBase):
    """A ``profile: cosmos`` resource's hooks (see the module docstring)."""

    retry_statuses: frozenset[int] = frozenset()
    identity_assertion = False
    # Signed by the gateway per attempt; the SDKs send no "_" name, and some servers read
    # "_" as "-", so an underscored name is never forwarded either.
    drop_headers = frozenset({b"x-ms-date", b"date"})
    drop_underscored = True

    def __init__(self, resource: HttpResource, task_secret: bytes) -> None:
        self.name: str = resource.name
        self.settings = resource.cosmos
        self.max_body = self.settings.max_body_bytes
        self.timeout = self.settings.timeout
        self._secret = task_secret
        self._aad = self.settings.upstream_auth == "aad"

    @classmethod
    def for_resource(
        cls, resource: HttpResource, target: UpstreamTarget, data_dir: Path | None
    ) -> CosmosProfile:
        from lockgate.credentials import load_or_create_master_key
        from lockgate.credentials.master_key import ENV_VAR, decode_key

        if data_dir is not None:
            master = load_or_create_master_key(data_dir)
        elif os.environ.get(ENV_VAR):
            master = decode_key(os.environ[ENV_VAR], f"${ENV_VAR}")
        else:
            raise ValueError(f"resource {resource.name}: profile cosmos needs a data_dir")
        return cls(resource, sig.task_key_secret(master, resource.name))

    def task_key(self, jti: str) -> str:
        return sig.derive_task_key(self._secret, jti)

    # -- hooks -----------------------------------------------------------------------------
    def authenticate(self, target: Target, head: framing.Head) -> Presented:
        parts = target.path.split("/", 3)  # "", "_t", token, rest
        if len(parts) < 3 or parts[1] != TOKEN_SEGMENT or not _JWT.fullmatch(parts[2]):
            return Presented(None, "missing", target, SHOWN_PATH)
        inner = Target(target.resource, "/" + (parts[3] if len(parts) > 3 else ""), target.query)
        return Presented(parts[2], "", inner, SHOWN_PATH)

    def verify_request(
        self, claims: Claims, method: str, target: Target, head: framing.Head
    ) -> None:
        headers = header_map(head)
        auth = sig.parse_auth_header(headers.get("authorization", ""))
        sig.verify_master_signature(
            self.task_key(claims.jti), auth, method, target.path, headers.get("x-ms-date"),
            time.time(), self.settings.max_skew,
        )  # fmt: skip

    def wants_body(self, method: str, path: str) -> bool:
        return True

    async def authorize(
        self, req: ProfileRequest, decide: Decide, headers: UpstreamHeaders
    ) -> Verdict:
        try:
            if req.query:  # no SDK sends one; how the account would read it is unknown
                raise Refused(400, "BadRequest", "a query string is not served on Cosmos DB")
            assert req.head is not None
            fields = header_map(req.head)
            if len(fields) != _named(req.head):
                # which copy the account reads is not ours to guess: a decoy would be judged
                raise Refused(400, "BadRequest", "a header is named twice")
            op = classify(req.method, req.path, fields, req.body)
        except Refused as exc:
            return Verdict(
                False, "unknown", req.path, exc.reason, rule="cosmos-classify",
                status=exc.status, slug=exc.code,
            )  # fmt: skip
        detail: dict[str, Any] = {"operation": op.name, **db_container(op.obj)}
        if op.name == "read_account":  # discovery: every client needs it, it names no data
            prefix = _PREFIX.match(req.head.target.decode("latin-1"))
            return Verdict(
                True, op.action, op.obj, "account discovery", rule="cosmos-account-discovery",
                rewrite=True, drop_headers=_NO_ENCODING, detail=detail,
                state=prefix.group(0) if prefix else "",
            )  # fmt: skip
        decision = decide(op.action, op.obj)
        if not decision.allowed:
            return Verdict(
                False, op.action, op.obj, decision.explain(), rule=decision.rule, detail=detail
            )
        return Verdict(
            True, op.action, op.obj, decision.reason, rule=decision.rule, decision=decision,
            detail=detail, cost=_operations(op.name, req.body),
        )  # fmt: skip

    def sign_upstream(self, call: UpstreamCall, secret: UpstreamSecret) -> bytes:
        x_ms_date = sig.rfc1123_now()
        if self._aad:
            value = f"type=aad&ver=1.0&sig={secret.value}"
        else:
            rtype, link = sig.resource_of(call.path)
            value = sig.sign(secret.value, call.method, rtype, link, x_ms_date)
        lines = f"x-ms-date: {x_ms_date}\r\nauthorization: {value}\r\n"
        if call.verdict.rewrite:
            lines += "Accept-Encoding: identity\r\n"
        return lines.encode("latin-1")

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return error_body(status, body)

    def throttle_headers(self, retry_after: float) -> list[tuple[str, str]]:
        """Cosmos DB's own throttling answer: the SDK's ResourceThrottleRetryPolicy waits
        ``x-ms-retry-after-ms`` and retries (substatus 3200: request rate too large)."""
        return [
            *super().throttle_headers(retry_after),
            ("x-ms-retry-after-ms", str(max(1, round(retry_after * 1000)))),
            ("x-ms-substatus", "3200"),
        ]

    def rewrite_response(
        self, verdict: Verdict, status: int, headers: Headers, body: bytes, origin: str
    ) -> tuple[Headers, bytes]:
        return rewrite_discovery(body, headers, f"{origin}{verdict.state}/")

    def on_response(
        self, verdict: Verdict, status: int, headers: Headers, body: bytes
    ) -> dict[str, Any]:
        detail = dict(verdict.detail)
        if status == 429:
            detail["retry_after_ms"] = header(headers, b"x-ms-retry-after-ms")
        charge = header(headers, b"x-ms-request-charge")
        if charge:
            detail["request_charge"] = charge
        return detail


def _named(head: framing.Head) -> int:
    """How many headers :func:`header_map` reads (before duplicates collapse)."""
    named = head.connection
    return sum(
        1
        for name, _ in head.headers
        if not (
            (low := name.lower()).startswith(b"x-lockgate-")
            or (named and low in named)
            or b"_" in low
        )
    )


def header_map(head: framing.Head) -> dict[str, str]:
    """The client's headers by lowercased name, as the signature and classification read
    them (the gateway's own and hop-by-hop ones left out)."""
    named = head.connection
    out: dict[str, str] = {}
    for name, value in head.headers:
        low = name.lower()
        if low.startswith(b"x-lockgate-") or (named and low in named) or b"_" in low:
            continue  # (the SDKs send no "_" name; some servers read "_" as "-")
        out[low.decode("latin-1")] = value.decode("latin-1")
    return out
