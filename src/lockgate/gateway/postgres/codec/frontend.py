"""Messages a client sends after startup: decoders (body -> fields) and encoders (-> bytes).

Decoders take the body of a :class:`~.messages.Message` and raise ProtocolError on any
malformation (short body, missing NUL, trailing bytes, bad UTF-8), as strictly as the
server's ``pq_getmsgend``. Encoders return whole framed messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import messages as m
from ._wire import (
    INT16,
    INT32,
    UINT16,
    UINT32,
    Cursor,
    ProtocolError,
    cstr,
    encode_int16_list,
    encode_values,
    expect_empty,
    single_cstr,
)


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    query: str
    param_types: tuple[int, ...]  # type OIDs, 0 = let the server infer


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]  # 0 text, 1 binary; none = all text, one = for all
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int  # 0 = no limit


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # "S" prepared statement | "P" portal
    name: str


@dataclass(frozen=True, slots=True)
class Close:
    kind: str  # "S" prepared statement | "P" portal
    name: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    function: int  # function OID
    arg_formats: tuple[int, ...]
    args: tuple[bytes | None, ...]
    result_format: int


ExtendedMessage = Parse | Bind | Execute | Describe | Close


def decode_query(body: bytes) -> str:
    return single_cstr(body, "Query")


def query(text: str) -> bytes:
    return m.encode(m.QUERY, cstr(text))


def decode_parse(body: bytes) -> Parse:
    cur = Cursor(body, "Parse")
    name = cur.cstr()
    text = cur.cstr()
    types = cur.uint32_list(cur.uint16())
    cur.end()
    return Parse(name, text, types)


def decode_bind(body: bytes) -> Bind:
    cur = Cursor(body, "Bind")
    portal = cur.cstr()
    statement = cur.cstr()
    param_formats = cur.int16_list()
    params = cur.values()
    result_formats = cur.int16_list()
    cur.end()
    return Bind(portal, statement, param_formats, params, result_formats)


def decode_execute(body: bytes) -> Execute:
    cur = Cursor(body, "Execute")
    portal = cur.cstr()
    max_rows = cur.int32()
    cur.end()
    return Execute(portal, max_rows)


def _decode_target(body: bytes, what: str) -> tuple[str, str]:
    cur = Cursor(body, what)
    kind = chr(cur.byte())
    if kind not in ("S", "P"):
        raise ProtocolError(f"invalid {what} message subtype {ord(kind)}")
    name = cur.cstr()
    cur.end()
    return kind, name


def decode_describe(body: bytes) -> Describe:
    return Describe(*_decode_target(body, "Describe"))


def decode_close(body: bytes) -> Close:
    return Close(*_decode_target(body, "Close"))


def decode_function_call(body: bytes) -> FunctionCall:
    cur = Cursor(body, "FunctionCall")
    function = cur.uint32()
    arg_formats = cur.int16_list()
    args = cur.values()
    result_format = cur.int16()
    cur.end()
    return FunctionCall(function, arg_formats, args, result_format)


def encode_message(msg: ExtendedMessage | FunctionCall) -> bytes:
    """Encode an extended-protocol message (or FunctionCall) from its fields."""
    if isinstance(msg, Parse):
        body = (
            cstr(msg.name)
            + cstr(msg.query)
            + UINT16.pack(len(msg.param_types))
            + b"".join(UINT32.pack(oid) for oid in msg.param_types)
        )
        return m.encode(m.PARSE, body)
    if isinstance(msg, Bind):
        body = (
            cstr(msg.portal)
            + cstr(msg.statement)
            + encode_int16_list(msg.param_formats)
            + encode_values(msg.params)
            + encode_int16_list(msg.result_formats)
        )
        return m.encode(m.BIND, body)
    if isinstance(msg, Execute):
        return m.encode(m.EXECUTE, cstr(msg.portal) + INT32.pack(msg.max_rows))
    if isinstance(msg, Describe | Close):
        if msg.kind not in ("S", "P"):
            raise ValueError("kind is 'S' or 'P'")
        type_ = m.DESCRIBE if isinstance(msg, Describe) else m.CLOSE
        return m.encode(type_, msg.kind.encode("ascii") + cstr(msg.name))
    body = (
        UINT32.pack(msg.function)
        + encode_int16_list(msg.arg_formats)
        + encode_values(msg.args)
        + INT16.pack(msg.result_format)
    )
    return m.encode(m.FUNCTION_CALL, body)


def decode_password(body: bytes) -> str:
    """PasswordMessage ('p' answering cleartext or md5): one string."""
    return single_cstr(body, "PasswordMessage")


def password_message(text: str) -> bytes:
    return m.encode(m.PASSWORD, cstr(text))


def decode_sasl_initial_response(body: bytes) -> tuple[str, bytes | None]:
    """SASLInitialResponse ('p'): mechanism, then the client-first data (-1 length: none)."""
    cur = Cursor(body, "SASLInitialResponse")
    mechanism = cur.cstr()
    length = cur.int32()
    data = None if length == -1 else cur.take(length)
    cur.end()
    return mechanism, data


def sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    tail = INT32.pack(-1) if data is None else INT32.pack(len(data)) + data
    return m.encode(m.PASSWORD, cstr(mechanism) + tail)


def decode_sasl_response(body: bytes) -> bytes:
    """SASLResponse ('p'): the body is the mechanism's data as is."""
    return body


def sasl_response(data: bytes) -> bytes:
    return m.encode(m.PASSWORD, data)


def decode_copy_fail(body: bytes) -> str:
    return single_cstr(body, "CopyFail")


def copy_data(data: bytes) -> bytes:
    return m.encode(m.COPY_DATA, data)


def copy_done() -> bytes:
    return _COPY_DONE


def copy_fail(message: str) -> bytes:
    return m.encode(m.COPY_FAIL, cstr(message))


def decode_empty(body: bytes, what: str) -> None:
    """Sync, Flush, Terminate, CopyDone: no body allowed."""
    expect_empty(body, what)


_SYNC = m.encode(m.SYNC, b"")
_FLUSH = m.encode(m.FLUSH, b"")
_TERMINATE = m.encode(m.TERMINATE, b"")
_COPY_DONE = m.encode(m.COPY_DONE, b"")


def sync() -> bytes:
    return _SYNC


def flush() -> bytes:
    return _FLUSH


def terminate() -> bytes:
    return _TERMINATE


__all__ = [
    "Bind",
    "Close",
    "Describe",
    "Execute",
    "ExtendedMessage",
    "FunctionCall",
    "Parse",
    "copy_data",
    "copy_done",
    "copy_fail",
    "decode_bind",
    "decode_close",
    "decode_copy_fail",
    "decode_describe",
    "decode_empty",
    "decode_execute",
    "decode_function_call",
    "decode_parse",
    "decode_password",
    "decode_query",
    "decode_sasl_initial_response",
    "decode_sasl_response",
    "encode_message",
    "flush",
    "password_message",
    "query",
    "sasl_initial_response",
    "sasl_response",
    "sync",
    "terminate",
]
