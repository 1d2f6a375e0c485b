"""One HTTP resource as the engine serves it: what can be computed once, not per request.

:class:`ResourceState` holds the upstream target and its pool, the route classifier, the
retry schedule, the header lines the gateway adds (``Host``, the credential, the identity
assertion) and the set of client headers never forwarded upstream. The engine builds one
per configured resource and swaps them on a reload; the exchange only reads them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from lockgate import metrics
from lockgate.errors import UpstreamUnavailable
from lockgate.gateway.engine import RequestCounter, UpstreamSecret
from lockgate.gateway.http import framing
from lockgate.gateway.http.classify import Classifier
from lockgate.gateway.http.forwarded import OVERRIDES, header_key
from lockgate.gateway.http.retry import Backoff
from lockgate.gateway.http.upstream import UpstreamPool, UpstreamTarget

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from lockgate.config import HttpResource
    from lockgate.gateway.http.normalize import Target
    from lockgate.gateway.http.profiles.hooks import Profile

# Never forwarded upstream: hop-by-hop, framing (re-added), credentials, and headers some
# servers use to override the method or the path policy judged.
DROP_REQUEST = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
        b"expect",
        b"authorization",
        # set by the gateway itself (:mod:`.forwarded`), never taken from the client
        b"forwarded",
        b"x-real-ip",
        *OVERRIDES,
    }
)
# Prefixes of headers never forwarded: the gateway's own, and X-Forwarded-* (set by it).
DROP_PREFIXES = (b"x-lockgate-", b"x-forwarded-")

# Segment ends that Windows (IIS, App Service on Windows) drops when it maps a URL to a file.
_WINDOWS_TAIL = re.compile(r"(?:\.|%20)+(?=/|$)")


def upstream_reading(path: str) -> str:
    """``path`` as a lenient upstream may read it: lower-cased (ASP.NET Core, Express, IIS
    route without regard to case) and without trailing dots or spaces in a segment (IIS)."""
    folded = path.lower()
    if "." in folded or "%20" in folded:
        folded = _WINDOWS_TAIL.sub("", folded)
    return folded


def header_safe(value: bytes) -> bool:
    """No byte that would end a header line or the head (CR, LF, NUL)."""
    return b"\r" not in value and b"\n" not in value and b"\x00" not in value


class ResourceState:
    """Everything about one resource that can be computed once, not per request."""

    def __init__(self, resource: HttpResource, pool: UpstreamPool | None = None) -> None:
        self.resource = resource
        self.name: str = resource.name
        self.target = UpstreamTarget.from_resource(resource)
        self.pool = pool or UpstreamPool(self.target)
        self.classifier = Classifier(resource.routes)
        self.backoff = Backoff(resource.retry)
        self.credential: str | None = resource.credential
        auth_name = resource.auth.header.encode("latin-1")
        self._auth_prefix = (
            auth_name
            + b": "
            + (resource.auth.scheme.encode("latin-1") + b" " if resource.auth.scheme else b"")
        )
        ident = resource.identity_header
        self.identity_prefix = ident.encode("latin-1") + b": " if ident else None
        # compared with header_key(), which reads '_' as '-' (CGI/WSGI upstreams do)
        drop = set(DROP_REQUEST) | {header_key(auth_name)}
        if ident:
            drop.add(header_key(ident.encode("latin-1")))
        self.drop = frozenset(drop)
        self.host_line = b"Host: " + self.target.host_header + b"\r\n"
        self._auth_cache: tuple[UpstreamSecret, bytes] | None = None
        self._identity_cache: tuple[str, bytes] | None = None
        # id(head) -> (head, target, its request lines); the head is kept so its id stays its
        self._lines: dict[int, tuple[framing.Head, Target, bytes]] = {}
        # ``count(action, decision, dag_id)``: lockgate_requests_total += 1 (children cached)
        self.count = RequestCounter(self.name).count
        self.latency: Histogram = metrics.UPSTREAM_LATENCY.labels(self.name)
        self.profile: Profile | None = None  # set by the engine for ``profile:`` resources

    def auth_line(self, secret: UpstreamSecret) -> bytes:
        """The credential header line for ``secret`` (cached while the secret object is)."""
        cached = self._auth_cache
        if cached is not None and cached[0] is secret:
            return cached[1]
        try:
            value: bytes | None = str(secret.value).encode("latin-1")
        except UnicodeEncodeError:  # the error's text names characters of the value: dropped
            value = None
        if value is None or not header_safe(value):
            raise UpstreamUnavailable("credential value is not header-safe")
        line = self._auth_prefix + value + b"\r\n"
        self._auth_cache = (secret, line)
        return line

    def request_line(self, head: framing.Head, target: Target) -> bytes:
        """``METHOD <base path><path>[?query] HTTP/1.1`` and the upstream's Host line."""
        path = self.target.base_path + target.path
        if target.query:
            path += "?" + target.query
        return head.method + b" " + path.encode("ascii") + b" HTTP/1.1\r\n" + self.host_line

    def request_lines(self, head: framing.Head, target: Target) -> bytes:
        """:meth:`request_line` and :meth:`forwarded_headers`, built once per head object:
        the listener shares one parsed head among the requests that repeat its bytes."""
        entry = self._lines.get(id(head))
        if entry is not None and entry[0] is head and entry[1] == target:
            return entry[2]
        lines = self.request_line(head, target) + self.forwarded_headers(head)
        if len(lines) <= framing.CACHE_MAX_HEAD:  # (larger heads are not shared)
            if len(self._lines) >= framing.CACHE_ENTRIES:
                self._lines.clear()
            self._lines[id(head)] = (head, target, lines)
        return lines

    def identity_line(self, assertion: str) -> bytes:
        """The identity assertion header line; checked once per (cached) assertion string."""
        cached = self._identity_cache
        if cached is not None and cached[0] is assertion:
            return cached[1]
        value = assertion.encode("latin-1")
        if self.identity_prefix is None or not header_safe(value):
            raise ValueError("assertion is not header-safe")
        line = self.identity_prefix + value + b"\r\n"
        self._identity_cache = (assertion, line)
        return line

    def forwarded_headers(
        self,
        head: framing.Head,
        also_drop: frozenset[bytes] = frozenset(),
        drop_underscored: bool = False,
    ) -> bytes:
        """The client's headers that may go upstream, as header lines."""
        drop = self.drop
        named = head.connection  # headers the client listed in Connection are hop-by-hop
        out: list[bytes] = []
        for name, value in head.headers:
            low = header_key(name)
            if (
                low in drop
                or low.startswith(DROP_PREFIXES)
                or (named and (low in named or name.lower() in named))
                or (also_drop and low in also_drop)
                or (drop_underscored and b"_" in name)
            ):
                continue
            out.append(b"%s: %s\r\n" % (name, value))
        return b"".join(out)
