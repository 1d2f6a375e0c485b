"""Cosmos DB request signing (master-key HMAC), sans-I/O: strings in, strings out.

Written from the public REST documentation ("Access control on Cosmos DB resources") and
checked against what azure-cosmos 4.x puts on the wire:

    StringToSign = lower(verb) \\n lower(resourceType) \\n resourceLink \\n lower(x-ms-date) \\n
                   lower(Date) \\n
    sig          = base64(HMAC-SHA256(base64decode(key), utf8(StringToSign)))
    Authorization: urlencode("type=master&ver=1.0&sig=" + sig)

``resourceLink`` is the full name-based link (``dbs/Sales/colls/Orders``, case kept) or, for
``_rid``-based addressing (a database id of 8 characters decoding to 4 bytes), the lower-cased
``_rid`` of the resource alone. The SDK leaves ``Date``
empty, so the string ends with two newlines.

Per-task keys (how Lockgate uses this). The stock ``AzureCosmosDBHook`` can only sign with a
master key, and the real account key must never reach a worker. So the secrets backend gives
each task a *derived* key::

    task_key = base64(HMAC-SHA256(gateway_secret, "cosmos-task-key:" + jti))

where ``jti`` is the id of the task's Lockgate token (carried to the gateway out of band of the
signature, e.g. in a URL path prefix). The task signs requests with ``task_key`` exactly as it
would with an account key; the gateway recomputes ``task_key`` from the token's ``jti`` and
checks the signature with :func:`verify_master_signature`. A valid signature proves possession
of a key derived from that token; a key leaked from a finished task dies with its token. The
gateway then re-signs upstream with the real account key (:func:`sign`), which never leaves it.

Rules: verification fails closed with :class:`~lockgate.errors.AuthenticationError` whose
``reason`` is one of ``bad_auth_header``, ``missing_date``, ``date_skew``, ``bad_signature``;
signatures are compared with :func:`hmac.compare_digest`; no key or signature is ever put in an
exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote, unquote

from lockgate.errors import AuthenticationError

__all__ = [
    "AUTH_TYPES",
    "AuthHeader",
    "derive_task_key",
    "is_rid_based",
    "parse_auth_header",
    "resource_of",
    "rfc1123_now",
    "sign",
    "signing_link",
    "string_to_sign",
    "task_key_secret",
    "verify_master_signature",
]

AUTH_TYPES = frozenset({"master", "aad", "resource"})
# Characters the SDK leaves unescaped when it URL-encodes the header (RFC 2396 "mark" set).
_SAFE = "-_.!~*'()"
_TASK_KEY_LABEL = b"cosmos-task-key:"
_TASK_SECRET_INFO = b"lockgate cosmos task-key secret v1:"
# A header longer than this is not a Cosmos header (an AAD JWT is a few KB at most).
_MAX_HEADER = 16 * 1024


@dataclass(frozen=True, slots=True)
class AuthHeader:
    """A decoded ``Authorization`` header: ``type=<type>&ver=<ver>&sig=<sig>``."""

    type: str
    ver: str
    sig: str

    def __repr__(self) -> str:  # the signature or bearer token must never reach a log line
        return f"AuthHeader(type={self.type!r}, ver={self.ver!r}, sig=<redacted>)"


def string_to_sign(
    verb: str, resource_type: str, resource_link: str, x_ms_date: str, date: str = ""
) -> str:
    """The five newline-terminated fields that are HMAC'd; ``resource_link`` is used as given."""
    fields = (verb.lower(), resource_type.lower(), resource_link, x_ms_date.lower(), date.lower())
    return "".join(f"{field}\n" for field in fields)


def is_rid_based(resource_link: str) -> bool:
    """True when the link addresses resources by ``_rid`` rather than by name.

    Same heuristic as the SDKs, so a gateway computes the same string they signed: the first
    segment is ``dbs`` and the database id is 8 characters that base64-decode (``-`` read as
    ``/``, other non-alphabet characters skipped as a lenient decoder does) to exactly 4 bytes.
    """
    parts = resource_link.strip("/").split("/")
    if len(parts) < 2 or parts[0].lower() != "dbs" or not parts[1]:
        return False
    db = parts[1]
    if len(db) != 8:
        return False
    try:
        return len(base64.b64decode(db.replace("-", "/"))) == 4
    except (binascii.Error, ValueError):
        return False


def signing_link(resource_link: str) -> str:
    """The link as it goes into the string to sign.

    Name-based links are signed whole and keep their case. ``_rid``-based links are signed as
    the ``_rid`` of the addressed resource alone (the last id in the link), lower-cased.
    """
    if not is_rid_based(resource_link):
        return resource_link
    return resource_link.strip("/").split("/")[-1].lower()


def resource_of(path: str) -> tuple[str, str]:
    """``(resource_type, resource_link)`` of a request path, as the signature covers them.

    Segments alternate type/id. An odd count is a feed (type = last segment, link = the rest);
    an even count is an item (type = second-to-last, link = the whole path). Names are
    URL-decoded; leading/trailing slashes and the query string are ignored. ``/`` (the database
    account) is ``("", "")``. The one irregular path the SDK signs differently is the
    partition-key delete (``.../colls/{c}/operations/partitionkeydelete``), signed as the
    collection.
    """
    path = path.split("?", 1)[0].strip("/")
    if not path:
        return "", ""
    raw = path.split("/")
    if len(raw) >= 6 and [s.lower() for s in raw[-2:]] == ["operations", "partitionkeydelete"]:
        raw = raw[:-2]
        return "colls", "/".join(unquote(s) for s in raw)
    segments = [unquote(s) for s in raw]
    if len(segments) % 2:
        return segments[-1], "/".join(segments[:-1])
    return segments[-2], "/".join(segments)


def _hmac_b64(key: bytes, message: str) -> str:
    return base64.b64encode(
        hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()
    ).decode()


def _decode_key(master_key_b64: str) -> bytes:
    try:
        key = base64.b64decode(master_key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise AuthenticationError("bad_key", "Cosmos key is not valid base64") from None
    if not key:
        raise AuthenticationError("bad_key", "Cosmos key is empty")
    return key


def sign(
    master_key_b64: str, verb: str, resource_type: str, resource_link: str, x_ms_date: str
) -> str:
    """The ``Authorization`` header value (URL-encoded) for one request, as the SDK sends it."""
    key = _decode_key(master_key_b64)
    sig = _hmac_b64(
        key, string_to_sign(verb, resource_type, signing_link(resource_link), x_ms_date)
    )
    return quote(f"type=master&ver=1.0&sig={sig}", safe=_SAFE)


def parse_auth_header(value: str) -> AuthHeader:
    """Decode an ``Authorization`` header (URL-encoded or not) into its three fields."""
    if not value or len(value) > _MAX_HEADER:
        raise AuthenticationError("bad_auth_header", "missing or oversized Cosmos authorization")
    # AAD headers arrive unencoded; master/resource ones encoded. unquote is harmless on both
    # because neither a base64 signature nor a JWT contains '%'.
    decoded = unquote(value.strip())
    fields: dict[str, str] = {}
    for part in decoded.split("&", 2):
        name, sep, val = part.partition("=")
        if not sep or name in fields:
            raise AuthenticationError("bad_auth_header", "malformed Cosmos authorization")
        fields[name] = val
    if set(fields) != {"type", "ver", "sig"}:
        raise AuthenticationError("bad_auth_header", "malformed Cosmos authorization")
    kind = fields["type"].lower()
    if kind not in AUTH_TYPES or fields["ver"] != "1.0" or not fields["sig"]:
        raise AuthenticationError("bad_auth_header", "unsupported Cosmos authorization type")
    return AuthHeader(kind, fields["ver"], fields["sig"])


def rfc1123_now() -> str:
    """The current time as an ``x-ms-date`` value (``Sun, 22 Nov 2026 13:17:18 GMT``)."""
    return formatdate(usegmt=True)


def _parse_date(x_ms_date: str) -> float:
    try:
        when = parsedate_to_datetime(x_ms_date)
    except (TypeError, ValueError, IndexError):
        raise AuthenticationError("missing_date", "x-ms-date is not an RFC 1123 date") from None
    if when.tzinfo is None:  # "-0000" zone: refuse rather than guess
        raise AuthenticationError("missing_date", "x-ms-date has no time zone")
    return when.timestamp()


def verify_master_signature(
    key_b64: str | list[str] | tuple[str, ...],
    header: str | AuthHeader,
    verb: str,
    path: str,
    x_ms_date: str | None,
    now: float,
    max_skew: float = 900,
) -> None:
    """Check a master-key signed request; return ``None`` or raise ``AuthenticationError``.

    ``key_b64`` may be several keys (primary and secondary during a rotation); the request
    passes when any of them produced the signature. ``now`` is a Unix timestamp.
    """
    auth = header if isinstance(header, AuthHeader) else parse_auth_header(header)
    if auth.type != "master":
        raise AuthenticationError("bad_auth_header", "not a master-key authorization")
    if not x_ms_date:
        raise AuthenticationError("missing_date", "x-ms-date header is required")
    if abs(now - _parse_date(x_ms_date)) > max_skew:
        raise AuthenticationError("date_skew", "x-ms-date is outside the allowed clock skew")
    resource_type, resource_link = resource_of(path)
    message = string_to_sign(verb, resource_type, signing_link(resource_link), x_ms_date)
    keys = [key_b64] if isinstance(key_b64, str) else list(key_b64)
    presented = auth.sig.encode()
    ok = False
    for key in keys:
        # Check every key, no early exit, so timing does not tell which key matched.
        expected = _hmac_b64(_decode_key(key), message).encode()
        ok |= hmac.compare_digest(expected, presented)
    if not ok:
        raise AuthenticationError("bad_signature", "Cosmos request signature does not match")


def derive_task_key(gateway_secret: bytes, jti: str) -> str:
    """The base64 32-byte per-task Cosmos key: HMAC-SHA256(secret, "cosmos-task-key:" + jti)."""
    if len(gateway_secret) < 32:
        raise ValueError("gateway secret must be at least 32 bytes")
    if not jti:
        raise ValueError("jti is required")
    digest = hmac.new(gateway_secret, _TASK_KEY_LABEL + jti.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def task_key_secret(master_key: bytes, resource: str) -> bytes:
    """The gateway secret behind :func:`derive_task_key` for one Cosmos resource.

    HKDF-SHA256 of Lockgate's master key (the one that encrypts the credential store), bound
    to the resource name: nothing extra to store or configure, the same in every worker
    process, and a task key for one resource is worthless at another.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if len(master_key) < 32:
        raise ValueError("master key must be at least 32 bytes")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=_TASK_SECRET_INFO + resource.encode("utf-8"),
    )
    return hkdf.derive(master_key)
