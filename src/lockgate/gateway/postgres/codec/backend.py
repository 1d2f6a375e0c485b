"""Messages a server sends: decoders (body -> fields) and encoders (-> framed bytes).

The gateway reads the upstream's login answers (Authentication, ParameterStatus,
BackendKeyData, ReadyForQuery), outcomes (CommandComplete, ErrorResponse) and writes its
own (AuthenticationOk, its BackendKeyData, ErrorResponse for a refusal, ...).
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
    single_cstr,
)

AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

MAX_BACKEND_KEY = 256  # protocol 3.2; 3.0 keys are 4 bytes


@dataclass(frozen=True, slots=True)
class Authentication:
    """``code``: 0 ok, 3 cleartext, 5 md5 (data = 4-byte salt), 10 SASL (data = mechanism
    list, see :func:`sasl_mechanisms`), 11 SASL continue, 12 SASL final (data = SASL data)."""

    code: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Field:
    """One RowDescription column."""

    name: str
    table_oid: int = 0
    column: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


# typlen of the types the gateway itself answers with; anything else is variable (-1).
_TYPE_SIZES = {16: 1, 18: 1, 20: 8, 21: 2, 23: 4, 26: 4, 700: 4, 701: 8, 1082: 4, 1184: 8}


def decode_authentication(body: bytes) -> Authentication:
    cur = Cursor(body, "Authentication")
    code = cur.int32()
    data = cur.rest()
    if code in (AUTH_OK, AUTH_CLEARTEXT_PASSWORD, AUTH_KERBEROS_V5, AUTH_GSS, AUTH_SSPI):
        if data:
            raise cur.fail("unexpected data")
    elif code == AUTH_MD5_PASSWORD and len(data) != 4:
        raise cur.fail("md5 salt is 4 bytes")
    return Authentication(code, data)


def encode_authentication(auth: Authentication) -> bytes:
    return m.encode(m.AUTHENTICATION, INT32.pack(auth.code) + auth.data)


def sasl_mechanisms(data: bytes) -> list[str]:
    """The mechanism list of AuthenticationSASL: strings, then an empty one."""
    cur = Cursor(data, "AuthenticationSASL")
    names: list[str] = []
    while (name := cur.cstr()) != "":
        names.append(name)
    cur.end()
    return names


def authentication_ok() -> bytes:
    return encode_authentication(Authentication(AUTH_OK, b""))


def authentication_cleartext_password() -> bytes:
    return encode_authentication(Authentication(AUTH_CLEARTEXT_PASSWORD, b""))


def authentication_md5_password(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError("md5 salt is 4 bytes")
    return encode_authentication(Authentication(AUTH_MD5_PASSWORD, salt))


def authentication_sasl(mechanisms: list[str]) -> bytes:
    data = b"".join(cstr(name) for name in mechanisms) + b"\0"
    return encode_authentication(Authentication(AUTH_SASL, data))


def authentication_sasl_continue(data: bytes) -> bytes:
    return encode_authentication(Authentication(AUTH_SASL_CONTINUE, data))


def authentication_sasl_final(data: bytes) -> bytes:
    return encode_authentication(Authentication(AUTH_SASL_FINAL, data))


def decode_error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse: field code -> value ('S','V','C','M','D','H',...)."""
    cur = Cursor(body, "ErrorResponse")
    fields: dict[str, str] = {}
    while (code := cur.byte()) != 0:
        fields[chr(code)] = cur.cstr()
    cur.end()
    return fields


def encode_error_fields(type_: int, fields: dict[str, str]) -> bytes:
    parts = []
    for code, value in fields.items():
        if len(code) != 1 or code == "\0":
            raise ValueError("a field code is one non-NUL character")
        parts.append(code.encode("ascii") + cstr(value))
    parts.append(b"\0")
    return m.encode(type_, b"".join(parts))


def _report(
    type_: int,
    sqlstate: str,
    message: str,
    severity: str,
    detail: str | None,
    hint: str | None,
) -> bytes:
    # 'S' may be localised by a server; 'V' (since 9.6) never is, and libpq prefers it.
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail is not None:
        fields["D"] = detail
    if hint is not None:
        fields["H"] = hint
    return encode_error_fields(type_, fields)


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    return _report(m.ERROR_RESPONSE, sqlstate, message, severity, detail, hint)


def notice_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    return _report(m.NOTICE_RESPONSE, sqlstate, message, severity, detail, hint)


def decode_command_complete(body: bytes) -> str:
    return single_cstr(body, "CommandComplete")


def command_complete(tag: str) -> bytes:
    return m.encode(m.COMMAND_COMPLETE, cstr(tag))


# The tags whose last word is a row count (libpq's PQcmdTuples reads the same ones).
_COUNTED = frozenset({"INSERT", "DELETE", "UPDATE", "MERGE", "SELECT", "MOVE", "FETCH", "COPY"})


def rows_affected(tag: str) -> int | None:
    """``"INSERT 0 5"`` -> 5, ``"SELECT 3"`` -> 3, ``"COPY 2"`` -> 2, ``"CREATE TABLE"`` -> None."""
    words = tag.split(" ")
    if words[0] not in _COUNTED or len(words) != (3 if words[0] == "INSERT" else 2):
        return None
    count = words[-1]
    return int(count) if count.isascii() and count.isdigit() else None


def decode_ready_for_query(body: bytes) -> str:
    if len(body) != 1 or body not in (b"I", b"T", b"E"):
        raise ProtocolError("malformed ReadyForQuery message")
    return chr(body[0])


_READY = {status: m.encode(m.READY_FOR_QUERY, status.encode()) for status in "ITE"}


def ready_for_query(status: str) -> bytes:
    return _READY[status]


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    cur = Cursor(body, "ParameterStatus")
    name = cur.cstr()
    value = cur.cstr()
    cur.end()
    return name, value


def parameter_status(name: str, value: str) -> bytes:
    return m.encode(m.PARAMETER_STATUS, cstr(name) + cstr(value))


def decode_backend_key_data(body: bytes) -> tuple[int, bytes]:
    """pid, secret (4 bytes in protocol 3.0; up to 256 in 3.2)."""
    cur = Cursor(body, "BackendKeyData")
    pid = cur.int32()
    secret = cur.rest()
    if not 4 <= len(secret) <= MAX_BACKEND_KEY:
        raise cur.fail("cancel key length")
    return pid, secret


def backend_key_data(pid: int, secret: bytes) -> bytes:
    if not 4 <= len(secret) <= MAX_BACKEND_KEY:
        raise ValueError("a cancel key is 4 to 256 bytes")
    return m.encode(m.BACKEND_KEY_DATA, INT32.pack(pid) + secret)


def decode_notification(body: bytes) -> tuple[int, str, str]:
    """NotificationResponse: sending backend's pid, channel, payload."""
    cur = Cursor(body, "NotificationResponse")
    pid = cur.int32()
    channel = cur.cstr()
    payload = cur.cstr()
    cur.end()
    return pid, channel, payload


def notification(pid: int, channel: str, payload: str) -> bytes:
    return m.encode(m.NOTIFICATION, INT32.pack(pid) + cstr(channel) + cstr(payload))


def decode_data_row(body: bytes) -> tuple[bytes | None, ...]:
    cur = Cursor(body, "DataRow")
    values = cur.values()
    cur.end()
    return values


def data_row(values: tuple[bytes | None, ...] | list[bytes | None]) -> bytes:
    return m.encode(m.DATA_ROW, encode_values(values))


def decode_copy_response(body: bytes) -> tuple[int, tuple[int, ...]]:
    """CopyIn/CopyOut/CopyBothResponse: overall format (0 text, 1 binary), column formats."""
    cur = Cursor(body, "CopyResponse")
    overall = cur.byte()
    formats = cur.int16_list()
    cur.end()
    return overall, formats


def copy_response(type_: int, overall: int, formats: tuple[int, ...] | list[int]) -> bytes:
    return m.encode(type_, bytes([overall]) + encode_int16_list(formats))


def decode_row_description(body: bytes) -> tuple[Field, ...]:
    cur = Cursor(body, "RowDescription")
    fields = []
    for _ in range(cur.uint16()):
        name = cur.cstr()
        table_oid = cur.uint32()
        column = cur.int16()
        type_oid = cur.uint32()
        type_size = cur.int16()
        type_modifier = cur.int32()
        format_ = cur.int16()
        fields.append(Field(name, table_oid, column, type_oid, type_size, type_modifier, format_))
    cur.end()
    return tuple(fields)


def encode_row_description(fields: tuple[Field, ...] | list[Field]) -> bytes:
    parts = [UINT16.pack(len(fields))]
    for f in fields:
        parts.append(cstr(f.name))
        parts.append(
            UINT32.pack(f.table_oid)
            + INT16.pack(f.column)
            + UINT32.pack(f.type_oid)
            + INT16.pack(f.type_size)
            + INT32.pack(f.type_modifier)
            + INT16.pack(f.format)
        )
    return m.encode(m.ROW_DESCRIPTION, b"".join(parts))


def row_description(fields: list[tuple[str, int]]) -> bytes:
    """Columns by (name, type OID), text format; the rest as for a computed column."""
    return encode_row_description(
        [Field(name, type_oid=oid, type_size=_TYPE_SIZES.get(oid, -1)) for name, oid in fields]
    )


def decode_parameter_description(body: bytes) -> tuple[int, ...]:
    cur = Cursor(body, "ParameterDescription")
    oids = cur.uint32_list(cur.uint16())
    cur.end()
    return oids


def parameter_description(oids: tuple[int, ...] | list[int]) -> bytes:
    body = UINT16.pack(len(oids)) + b"".join(UINT32.pack(oid) for oid in oids)
    return m.encode(m.PARAMETER_DESCRIPTION, body)


def decode_negotiate_protocol_version(body: bytes) -> tuple[int, list[str]]:
    """Newest minor version the server speaks, and the _pq_. options it did not recognise.

    The protocol page calls the first field the "newest minor version", but servers (and
    libpq, which compares it with its own full version) put the whole version number on
    the wire: ``3 << 16 | minor``. The major must be 3.
    """
    cur = Cursor(body, "NegotiateProtocolVersion")
    version = cur.uint32()
    if version >> 16 != 3:
        raise cur.fail(f"version {version >> 16}.{version & 0xFFFF}")
    count = cur.int32()
    if count < 0:
        raise cur.fail("negative option count")
    names = [cur.cstr() for _ in range(count)]
    cur.end()
    return version & 0xFFFF, names


def negotiate_protocol_version(newest_minor: int, unrecognized: list[str]) -> bytes:
    body = UINT32.pack(3 << 16 | newest_minor) + INT32.pack(len(unrecognized))
    body += b"".join(cstr(name) for name in unrecognized)
    return m.encode(m.NEGOTIATE_PROTOCOL_VERSION, body)


def decode_function_call_response(body: bytes) -> bytes | None:
    cur = Cursor(body, "FunctionCallResponse")
    length = cur.int32()
    value = None if length == -1 else cur.take(length)
    cur.end()
    return value


def function_call_response(value: bytes | None) -> bytes:
    body = INT32.pack(-1) if value is None else INT32.pack(len(value)) + value
    return m.encode(m.FUNCTION_CALL_RESPONSE, body)


_EMPTY = {
    type_: m.encode(type_, b"")
    for type_ in (
        m.EMPTY_QUERY,
        m.PARSE_COMPLETE,
        m.BIND_COMPLETE,
        m.CLOSE_COMPLETE,
        m.NO_DATA,
        m.PORTAL_SUSPENDED,
        m.COPY_DONE,
    )
}


def empty_query_response() -> bytes:
    return _EMPTY[m.EMPTY_QUERY]


def parse_complete() -> bytes:
    return _EMPTY[m.PARSE_COMPLETE]


def bind_complete() -> bytes:
    return _EMPTY[m.BIND_COMPLETE]


def close_complete() -> bytes:
    return _EMPTY[m.CLOSE_COMPLETE]


def no_data() -> bytes:
    return _EMPTY[m.NO_DATA]


def portal_suspended() -> bytes:
    return _EMPTY[m.PORTAL_SUSPENDED]
