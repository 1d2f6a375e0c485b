"""The gateway's own answers (401, 403, 4xx, 5xx) as ready-to-write bytes.

Bodies are small JSON objects with an ``error`` slug; messages name resources, principals
and reasons, never a token or a secret. ``close=True`` adds ``Connection: close`` when the
connection cannot be kept in sync (framing errors, an unread request body).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

#: A profile's error shape: (status, the gateway's body) -> the upstream's body, or None.
Shape = Callable[[int, dict[str, Any]], dict[str, Any] | None]


def _quote(text: str) -> str:
    # A quoted-string for WWW-Authenticate: reason slugs are ours, but stay safe.
    return "".join(c for c in text if c.isalnum() or c in "_-. ")


def json_response(
    status: int,
    body: dict[str, Any],
    *,
    close: bool = False,
    head_only: bool = False,
    extra: list[tuple[str, str]] | None = None,
    shape: Shape | None = None,
) -> bytes:
    """``body`` as a JSON answer; in the upstream's error shape when ``shape`` (a profile's
    ``error_body``) gives one, so the client's SDK shows the gateway's reason."""
    if shape is not None:
        body = shape(status, body) or body
    payload = json.dumps(body, separators=(",", ":"), default=str).encode()
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
        b"Content-Type: application/json\r\n",
        b"Content-Length: %d\r\n" % len(payload),
        b"Cache-Control: no-store\r\n",
    ]
    for name, value in extra or ():
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(payload)
    return b"".join(lines)


def bad_request(reason: str) -> bytes:
    """Framing or path refusals: always closes the connection."""
    return json_response(400, {"error": "bad_request", "reason": reason}, close=True)


def challenge(reason: str) -> str:
    """The ``WWW-Authenticate`` value of a 401 with ``reason``."""
    if reason == "missing":
        return 'Bearer realm="lockgate"'
    return f'Bearer realm="lockgate", error="invalid_token", error_description="{_quote(reason)}"'


def unauthorized(
    reason: str, *, close: bool = False, head_only: bool = False, shape: Shape | None = None
) -> bytes:
    return json_response(
        401,
        {"error": "unauthorized", "reason": reason},
        close=close,
        head_only=head_only,
        extra=[("WWW-Authenticate", challenge(reason))],
        shape=shape,
    )


def forbidden(
    *,
    principal: str,
    action: str,
    resource: str,
    obj: str,
    reason: str,
    rule: str | None,
    close: bool = False,
    head_only: bool = False,
) -> bytes:
    body = {
        "error": "forbidden",
        "principal": principal,
        "action": action,
        "resource": resource,
        "object": obj,
        "reason": reason,
        "rule": rule,
    }
    return json_response(403, body, close=close, head_only=head_only)


def error(
    status: int, slug: str, *, close: bool = False, head_only: bool = False, **more: Any
) -> bytes:
    return json_response(status, {"error": slug, **more}, close=close, head_only=head_only)
