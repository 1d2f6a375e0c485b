"""Forwarding headers: the upstream learns who connected from the gateway, never the client.

A client may send ``Forwarded``, ``X-Forwarded-For``/``-Host``/``-Proto`` (any
``X-Forwarded-*``) or ``X-Real-IP`` to make an upstream believe a request came from
somewhere else (an allow-listed address, an internal host, https). Those headers are dropped
(:func:`is_forwarding`) and the gateway sets its own (:func:`forwarding_block`):

* ``for``: the client's peer address as the gateway's socket saw it;
* ``host``: the Host the client addressed when it is a plain ``host[:port]`` (letters,
  digits, ``.``, ``-``, ``_`` or a bracketed IPv6 literal), else the listener's own address;
* ``proto``: ``https`` when the client connection is TLS (including a forward-proxy
  tunnel), else ``http``.

They are the same for every request of a connection (only Host could differ), so the block
is built once per connection and host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from typing import Any, Protocol

_DROPPED = frozenset({b"forwarded", b"x-real-ip"})
# Headers some servers and frameworks read to change the method or the path policy judged.
OVERRIDES = frozenset(
    {b"x-http-method-override", b"x-http-method", b"x-method-override", b"x-original-url",
     b"x-rewrite-url", b"x-override-url"}
)  # fmt: skip
_HOST = re.compile(rb"(?:[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def header_key(name: bytes) -> bytes:
    """The name as an upstream may read it: lowercased, ``_`` read as ``-``.

    CGI/WSGI servers (and any framework on them) turn ``X-Forwarded-For`` and
    ``X_Forwarded_For`` into the same ``HTTP_X_FORWARDED_FOR`` key, so a header the gateway
    drops must also be dropped in its underscore spelling."""
    low = name.lower()
    return low.replace(b"_", b"-") if b"_" in low else low


def is_forwarding(low: bytes) -> bool:
    """True for a (lowercased) header name the gateway sets itself."""
    return low in _DROPPED or low.startswith(b"x-forwarded-")


def _address(info: Any) -> str | None:
    if isinstance(info, tuple) and info:
        try:
            return str(ipaddress.ip_address(str(info[0]).partition("%")[0]))
        except ValueError:
            return None
    return None


def _authority(addr: str, port: Any) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    return f"{host}:{port}" if port else host


class Connection(Protocol):
    """A client connection: its transport, and the block built for it last."""

    transport: asyncio.Transport | None
    forwarded: tuple[bytes | None, bytes] | None


def _no_info(name: str) -> Any:
    return None


def forwarding_block(conn: Connection, host: bytes | None) -> bytes:
    """The ``Forwarded`` and ``X-Forwarded-*``/``X-Real-IP`` lines for a request of ``conn``."""
    cached = conn.forwarded
    if cached is not None and cached[0] == host:
        return cached[1]
    transport = conn.transport
    get = transport.get_extra_info if transport is not None else _no_info
    peer = _address(get("peername")) or "unknown"
    if host is not None and _HOST.fullmatch(host):
        shown = host.decode("ascii")
    else:
        local = get("sockname")
        addr = _address(local)
        shown = _authority(addr, local[1]) if addr and local else "unknown"
    proto = "https" if get("sslcontext") is not None else "http"
    node = f'"[{peer}]"' if ":" in peer else peer
    block = (
        f'Forwarded: for={node};host="{shown}";proto={proto}\r\n'
        f"X-Forwarded-For: {peer}\r\nX-Forwarded-Host: {shown}\r\n"
        f"X-Forwarded-Proto: {proto}\r\nX-Real-IP: {peer}\r\n"
    ).encode("ascii")
    conn.forwarded = (host, block)
    return block
