"""Bounded request and response bodies for the exchange.

* :func:`read_whole` — a profile classifies by the request body: read it, up to a limit;
* :func:`buffered_body` — the collected body, forwarded like one that arrived complete;
* :class:`Tee` — relay a response and keep its first bytes for a profile's audit hook;
* :class:`Collector` — hold a whole (small) response for a profile's rewrite, up to a limit.
"""

from __future__ import annotations

import asyncio

from lockgate.gateway.http.server import ClientConnection, RequestBody
from lockgate.gateway.http.upstream import BodySink

#: What a profile may see of a response body (its audit hook), and what it may rewrite.
CAPTURE_LIMIT = 256 * 1024
REWRITE_LIMIT = 1024 * 1024


async def read_whole(body: RequestBody, limit: int) -> bytes | None:
    """The rest of a request body, or None (and the rest dropped) once it passes ``limit``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    parts: list[bytes] = []
    size = 0

    def write(piece: bytes) -> None:
        nonlocal size
        size += len(piece)
        if size > limit:
            if not done.done():
                done.set_result(None)
            return
        parts.append(piece)

    def end() -> None:
        if not done.done():
            done.set_result(None)

    body.attach(write, end)
    await done
    if size > limit:
        body.discard()
        return None
    return b"".join(parts)


def buffered_body(conn: ClientConnection, data: bytes) -> RequestBody:
    """A complete in-memory body (what :func:`read_whole` collected), for forwarding."""
    out = RequestBody(conn)
    if data:
        out.chunks = [data]
    out.size = out.total = len(data)
    out.complete = True
    return out


class _Keeper:
    """The first ``limit`` bytes of a body; ``overflow`` once it was longer."""

    __slots__ = ("_limit", "_parts", "_size", "overflow")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.overflow = False

    def keep(self, piece: bytes) -> None:
        if self._size + len(piece) > self._limit:
            self.overflow = True
            return
        self._parts.append(piece)
        self._size += len(piece)

    def data(self) -> bytes:
        return b"" if self.overflow else b"".join(self._parts)


class Tee(_Keeper):
    """A response sink that also keeps the first ``limit`` body bytes (for a profile)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: BodySink, limit: int = CAPTURE_LIMIT) -> None:
        super().__init__(limit)
        self._inner = inner

    def write(self, data: bytes) -> None:
        self.keep(data)
        self._inner.write(data)

    def write_first(self, head: bytes, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.keep(piece)
        self._inner.write_first(head, pieces)


class Collector(_Keeper):
    """A response sink that writes nothing: the whole body is held (up to ``limit``) to be
    rewritten and sent with a new head."""

    __slots__ = ()

    def __init__(self, limit: int = REWRITE_LIMIT) -> None:
        super().__init__(limit)

    def write(self, data: bytes) -> None:
        self.keep(data)

    def write_first(self, head: bytes, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.keep(piece)
