"""Whether what is sent to a URL stays unread on the way: the one rule every token request,
key fetch and secret-bearing call of Lockgate follows (the gateway's and the worker's)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def private_channel(url: str) -> bool:
    """True for https, and for plain http to this machine (a sidecar, a test service);
    anything else crosses a network in clear."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme != "http" or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
