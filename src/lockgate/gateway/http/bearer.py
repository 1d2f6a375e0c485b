"""Where an HTTP request carries its Lockgate token: ``Authorization: Bearer <token>``, or
HTTP Basic whose password is the token (clients that only speak Basic).

The listener hands the same parsed head object to every request whose head bytes are the
same (a pipeline sends the same head again and again), so the token found in a head is
kept per head object: a repeated request costs a dict lookup, not a header scan.
"""

from __future__ import annotations

import binascii
from base64 import b64decode

from lockgate.gateway.http import framing

_CACHE_ENTRIES = framing.CACHE_ENTRIES
# id(head) -> (head, token, why); the head is kept so its id cannot be reused meanwhile.
_found: dict[int, tuple[framing.Head, str | None, str]] = {}


def extract_token(headers: framing.Headers) -> tuple[str | None, str]:
    """Bearer token, or HTTP Basic whose password is the token; else (None, reason)."""
    found: bytes | None = None
    for name, value in headers:
        if name.lower() == b"authorization":
            if found is not None:
                return None, "malformed"
            found = value
    if found is None:
        return None, "missing"
    scheme, _, cred = found.partition(b" ")
    scheme = scheme.lower()
    cred = cred.strip()
    if scheme == b"bearer" and cred:
        return cred.decode("latin-1"), ""
    if scheme == b"basic" and cred:
        try:
            decoded = b64decode(cred, validate=True)
        except (binascii.Error, ValueError):
            return None, "malformed"
        _, sep, password = decoded.partition(b":")
        if sep and password:
            return password.decode("latin-1"), ""
    return None, "malformed"


def token_of(head: framing.Head) -> tuple[str | None, str]:
    """:func:`extract_token` of ``head``'s headers, found once per head object."""
    entry = _found.get(id(head))
    if entry is not None and entry[0] is head:
        return entry[1], entry[2]
    token, why = extract_token(head.headers)
    if sum(len(n) + len(v) for n, v in head.headers) > framing.CACHE_MAX_HEAD:
        return token, why  # the listener does not share such heads: nothing to reuse
    if len(_found) >= _CACHE_ENTRIES:
        _found.clear()  # cheap bound; heads found again are scanned again
    _found[id(head)] = (head, token, why)
    return token, why
