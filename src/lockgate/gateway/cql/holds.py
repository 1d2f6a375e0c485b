"""Frames held behind a USE: one connection's keyspace parity under pipelining.

A client may send ``USE other`` and, without waiting for its answer, ``SELECT * FROM
orders`` on the same connection. The upstream runs the SELECT under ``other``, so judging it
against the keyspace the gateway knew before would let a grant on ``ks.orders`` read
``other.orders`` (and a PREPARE would file its id under the wrong keyspace). So while a USE
(a QUERY whose text is USE, an EXECUTE of a prepared USE, or a statement the classifier could
not place) is in flight on a connection, every later frame on it except OPTIONS and REGISTER
(which carry no statement) waits here, in order, and is judged only once the USE's answer
(SetKeyspace or an error) says which keyspace the upstream uses.

Bounds: at most ``max_frames`` frames or ``max_bytes`` bytes wait; beyond that the session
stops reading the client (TCP back-pressure) until the hold drains. If the upstream does not
answer the USE within ``timeout`` seconds, ``on_expired`` gets the held frames (the session
answers each with an error, audits it and closes the connection: the keyspace the upstream
will use can no longer be known).

A statement a quota paces (its answer is an awaitable: the quota holds it up to its
``max_delay`` for a token) holds later frames the same way (:meth:`UseHold.pace`): it was
judged under the keyspace of now, so nothing may be forwarded before it, a USE least of
all. Pacing has no timer of its own: the quota bounds the wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from . import codec


class UseHold:
    """The in-flight USE of one connection and the frames waiting for its answer."""

    def __init__(
        self,
        *,
        max_frames: int,
        max_bytes: int,
        timeout: float,
        on_expired: Callable[[list[codec.Event]], None],
    ) -> None:
        self.use_stream: int | None = None  # stream of a forwarded USE not answered yet
        self.paced_stream: int | None = None  # stream of a statement a quota holds
        self._frames: deque[codec.Event] = deque()
        self._bytes = 0
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._on_expired = on_expired
        self._timer: asyncio.TimerHandle | None = None
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._frames)

    def must_wait(self, event: codec.Event) -> bool:
        """True when ``event`` may not be judged yet (a USE is in flight before it)."""
        if self.use_stream is None and self.paced_stream is None:
            return False
        # OPTIONS and REGISTER carry no statement; one reusing the held stream id waits too,
        # so the USE's answer cannot be taken for theirs.
        return not isinstance(event, codec.Options | codec.Register) or (
            event.stream == self.use_stream or event.stream == self.paced_stream
        )

    def started(self, stream: int) -> None:
        """A USE was forwarded on ``stream``: later frames wait for its answer."""
        self.use_stream = stream
        if self._frames:  # a held USE was released: its own answer gets the full timeout
            self._disarm()
            self._arm()

    def pace(self, stream: int) -> None:
        """A statement on ``stream`` waits for its quota: later frames wait behind it."""
        self.paced_stream = stream

    def paced(self) -> None:
        """The paced statement was forwarded or refused: held frames may be released."""
        self.paced_stream = None

    def answered(self) -> None:
        """The in-flight USE was answered: held frames may be released."""
        self.use_stream = None

    def hold(self, event: codec.Event) -> None:
        self._frames.append(event)
        self._bytes += len(event.raw)
        if self._timer is None and self.use_stream is not None:
            self._arm()
        if self.full:
            self._room.clear()

    @property
    def full(self) -> bool:
        return len(self._frames) >= self._max_frames or self._bytes >= self._max_bytes

    async def wait_for_room(self) -> None:
        """Return once fewer than the bounds are held (the client may be read again)."""
        while self.full:
            await self._room.wait()

    def release_next(self) -> codec.Event | None:
        """The next held frame, once no USE is in flight; None when there is none (yet)."""
        if not self._frames:
            self._disarm()
            return None
        if self.use_stream is not None or self.paced_stream is not None:
            return None
        event = self._frames.popleft()
        self._bytes -= len(event.raw)
        if not self.full:
            self._room.set()
        return event

    def drain(self) -> list[codec.Event]:
        """Every held frame, and nothing held any more. Only for a connection that is ending:
        a client that filled the hold is not read again."""
        frames = list(self._frames)
        self._frames.clear()
        self._bytes = 0
        self._disarm()
        return frames

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._on_expired(self.drain())
