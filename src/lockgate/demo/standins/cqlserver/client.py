"""A minimal raw native protocol v4 client for tests that need exact frames and pipelining.

Request frames are built here with ``struct`` from ``native_protocol_v4.spec`` (no driver, no
Lockgate codec), so a test can put several requests on the wire in one write and read the
answers by stream id. Only what enforcement tests need: STARTUP + PLAIN login, QUERY,
PREPARE, EXECUTE and BATCH without bound values, and a small answer decoder (result kind,
prepared id, error code and message).

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass

_HEADER = struct.Struct(">BBhBi")
_STARTUP, _AUTHENTICATE, _QUERY, _RESULT, _PREPARE = 0x01, 0x03, 0x07, 0x08, 0x09
_EXECUTE, _BATCH, _AUTH_RESPONSE, _AUTH_SUCCESS, _ERROR = 0x0A, 0x0D, 0x0F, 0x10, 0x00
_ONE = 0x0001  # consistency ONE
RESULT_PREPARED = 4


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _long_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">i", len(raw)) + raw


def _frame(opcode: int, stream: int, body: bytes) -> bytes:
    return _HEADER.pack(0x04, 0, stream, opcode, len(body)) + body


def query_frame(stream: int, text: str) -> bytes:
    return _frame(_QUERY, stream, _long_string(text) + struct.pack(">HB", _ONE, 0))


def prepare_frame(stream: int, text: str) -> bytes:
    return _frame(_PREPARE, stream, _long_string(text))


def execute_frame(stream: int, query_id: bytes) -> bytes:
    body = struct.pack(">H", len(query_id)) + query_id + struct.pack(">HB", _ONE, 0)
    return _frame(_EXECUTE, stream, body)


def batch_frame(stream: int, children: list[str | bytes]) -> bytes:
    """A LOGGED protocol BATCH; a ``str`` child is a query text, ``bytes`` a prepared id."""
    body = struct.pack(">BH", 0, len(children))
    for child in children:
        if isinstance(child, str):
            body += b"\x00" + _long_string(child)
        else:
            body += b"\x01" + struct.pack(">H", len(child)) + child
        body += struct.pack(">H", 0)  # no values
    return _frame(_BATCH, stream, body + struct.pack(">HB", _ONE, 0))


@dataclass(frozen=True, slots=True)
class Answer:
    stream: int
    opcode: int
    body: bytes

    @property
    def is_error(self) -> bool:
        return self.opcode == _ERROR

    @property
    def error_code(self) -> int | None:
        return struct.unpack(">i", self.body[:4])[0] if self.is_error else None

    @property
    def message(self) -> str:
        if not self.is_error:
            return ""
        (n,) = struct.unpack(">H", self.body[4:6])
        return self.body[6 : 6 + n].decode("utf-8", "replace")

    @property
    def result_kind(self) -> int | None:
        return struct.unpack(">i", self.body[:4])[0] if self.opcode == _RESULT else None

    @property
    def prepared_id(self) -> bytes | None:
        if self.result_kind != RESULT_PREPARED:
            return None
        (n,) = struct.unpack(">H", self.body[4:6])
        return self.body[6 : 6 + n]


class RawCql:
    """One connection; ``send`` writes frames at once, ``answers`` collects them by stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._stream = 0

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawCql:
        return cls(*await asyncio.open_connection(host, port))

    def stream(self) -> int:
        self._stream = self._stream % 30000 + 1
        return self._stream

    async def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))
        await self.writer.drain()

    async def answer(self, timeout: float = 5.0) -> Answer | None:
        """The next answer frame, or None once the peer closed the connection."""
        try:
            async with asyncio.timeout(timeout):
                head = await self.reader.readexactly(_HEADER.size)
                _v, _flags, stream, opcode, length = _HEADER.unpack(head)
                return Answer(stream, opcode, await self.reader.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def answers(self, count: int, timeout: float = 5.0) -> dict[int, Answer]:
        out: dict[int, Answer] = {}
        while len(out) < count:
            got = await self.answer(timeout)
            if got is None:
                break
            out[got.stream] = got
        return out

    async def request(self, frame_for_stream: bytes) -> Answer | None:
        """Send one frame (already numbered) and wait for its answer."""
        await self.send(frame_for_stream)
        return await self.answer()

    async def login(self, user: str, password: str) -> Answer | None:
        startup = struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0")
        first = await self.request(_frame(_STARTUP, self.stream(), startup))
        if first is None or first.opcode != _AUTHENTICATE:
            return first
        token = b"\x00" + user.encode() + b"\x00" + password.encode()
        return await self.request(
            _frame(_AUTH_RESPONSE, self.stream(), struct.pack(">i", len(token)) + token)
        )

    @staticmethod
    def logged_in(answer: Answer | None) -> bool:
        return answer is not None and answer.opcode == _AUTH_SUCCESS

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
