"""Codec events: one frozen dataclass per CQL message, named as in the spec.

Every event carries the frame header fields (``stream``, ``version``, ``flags``) and ``raw``,
the exact frame bytes it was parsed from (``b""`` for events built by hand). ``flags`` are the
*frame* flags; the per-message flag words are ``query_flags`` / ``batch_flags``.

Rules:

* ``Connection.send(event)`` returns ``raw`` unchanged only for events the codec itself parsed
  (a private marker set by the reader). ``dataclasses.replace`` yields a new event without the
  marker, so an edited event is always re-encoded from its fields: stale ``raw`` can never be
  forwarded after an edit.
* When encoding from fields, the body-bearing frame flags (custom payload 0x04, and for
  responses tracing 0x02 and warning 0x08) are derived from ``custom_payload``,
  ``tracing_id`` and ``warnings``; other bits of ``flags`` are kept. Likewise the optional
  field bits of ``query_flags`` / ``batch_flags`` are derived from the fields that are set.
* Version-5-only fields (``keyspace``, ``now_in_seconds``, ``result_metadata_id`` ...) are
  always None in v4 and refused by the v4 writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ._wire import Value
from .types import PreparedMetadata, RowsMetadata

# -- opcodes ------------------------------------------------------------------------------------
ERROR = 0x00
STARTUP = 0x01
READY = 0x02
AUTHENTICATE = 0x03
OPTIONS = 0x05
SUPPORTED = 0x06
QUERY = 0x07
RESULT = 0x08
PREPARE = 0x09
EXECUTE = 0x0A
REGISTER = 0x0B
EVENT = 0x0C
BATCH = 0x0D
AUTH_CHALLENGE = 0x0E
AUTH_RESPONSE = 0x0F
AUTH_SUCCESS = 0x10

# -- frame flags --------------------------------------------------------------------------------
FLAG_COMPRESSION = 0x01
FLAG_TRACING = 0x02
FLAG_CUSTOM_PAYLOAD = 0x04
FLAG_WARNING = 0x08
FLAG_USE_BETA = 0x10

# -- query / batch parameter flags (v4: one byte) -------------------------------------------------
Q_VALUES = 0x01
Q_SKIP_METADATA = 0x02
Q_PAGE_SIZE = 0x04
Q_PAGING_STATE = 0x08
Q_SERIAL_CONSISTENCY = 0x10
Q_TIMESTAMP = 0x20
Q_NAMES_FOR_VALUES = 0x40
Q_KEYSPACE = 0x80  # v5 only

# -- result kinds -------------------------------------------------------------------------------
RESULT_VOID = 0x0001
RESULT_ROWS = 0x0002
RESULT_SET_KEYSPACE = 0x0003
RESULT_PREPARED = 0x0004
RESULT_SCHEMA_CHANGE = 0x0005

# -- error codes --------------------------------------------------------------------------------
ERR_SERVER = 0x0000
ERR_PROTOCOL = 0x000A
ERR_BAD_CREDENTIALS = 0x0100
ERR_UNAVAILABLE = 0x1000
ERR_OVERLOADED = 0x1001
ERR_IS_BOOTSTRAPPING = 0x1002
ERR_TRUNCATE = 0x1003
ERR_WRITE_TIMEOUT = 0x1100
ERR_READ_TIMEOUT = 0x1200
ERR_READ_FAILURE = 0x1300
ERR_FUNCTION_FAILURE = 0x1400
ERR_WRITE_FAILURE = 0x1500
ERR_SYNTAX = 0x2000
ERR_UNAUTHORIZED = 0x2100
ERR_INVALID = 0x2200
ERR_CONFIG = 0x2300
ERR_ALREADY_EXISTS = 0x2400
ERR_UNPREPARED = 0x2500

# -- consistency levels -------------------------------------------------------------------------
ANY, ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, EACH_QUORUM = range(8)
SERIAL, LOCAL_SERIAL, LOCAL_ONE = 0x08, 0x09, 0x0A


# -- base classes -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every message. Do not instantiate directly."""

    opcode: ClassVar[int] = -1
    is_request: ClassVar[bool] = True

    stream: int = 0
    version: int = 4
    flags: int = 0
    raw: bytes = b""
    custom_payload: dict[str, bytes | None] | None = None
    # Set (via object.__setattr__) only by the codec's readers; see the module docstring.
    _parsed: bool = field(default=False, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(Event):
    """A client → server message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Response(Event):
    """A server → client message; may carry a tracing id and warnings."""

    is_request: ClassVar[bool] = False

    tracing_id: bytes | None = None
    warnings: list[str] | None = None


# -- requests -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Startup(Request):
    opcode: ClassVar[int] = STARTUP
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Options(Request):
    opcode: ClassVar[int] = OPTIONS


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResponse(Request):
    """SASL response; for PLAIN: ``b"\\0" + user + b"\\0" + password``. Never log ``token``."""

    opcode: ClassVar[int] = AUTH_RESPONSE
    token: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Parameters(Request):
    """``<query_parameters>`` shared by QUERY and EXECUTE."""

    consistency: int = LOCAL_ONE
    query_flags: int = 0
    values: list[Value] | None = None
    names: list[str] | None = None
    page_size: int | None = None
    paging_state: bytes | None = None
    serial_consistency: int | None = None
    timestamp: int | None = None
    keyspace: str | None = None  # v5 only
    now_in_seconds: int | None = None  # v5 only


@dataclass(frozen=True, slots=True, kw_only=True)
class Query(_Parameters):
    opcode: ClassVar[int] = QUERY
    query: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare(Request):
    opcode: ClassVar[int] = PREPARE
    query: str = ""
    keyspace: str | None = None  # v5 only


@dataclass(frozen=True, slots=True, kw_only=True)
class Execute(_Parameters):
    opcode: ClassVar[int] = EXECUTE
    query_id: bytes = b""
    result_metadata_id: bytes | None = None  # v5 only


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchStatement:
    """One BATCH child: ``kind`` 0 with ``query`` text, or 1 with a prepared ``query_id``."""

    kind: int
    query: str | None = None
    query_id: bytes | None = None
    values: list[Value] = field(default_factory=list)


BATCH_LOGGED, BATCH_UNLOGGED, BATCH_COUNTER = 0, 1, 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch(Request):
    opcode: ClassVar[int] = BATCH
    batch_type: int = BATCH_LOGGED
    statements: list[BatchStatement] = field(default_factory=list)
    consistency: int = LOCAL_ONE
    batch_flags: int = 0
    serial_consistency: int | None = None
    timestamp: int | None = None
    keyspace: str | None = None  # v5 only
    now_in_seconds: int | None = None  # v5 only


@dataclass(frozen=True, slots=True, kw_only=True)
class Register(Request):
    opcode: ClassVar[int] = REGISTER
    event_types: list[str] = field(default_factory=list)


# -- responses ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Response):
    """ERROR. ``unprepared_id`` for 0x2500, ``keyspace``/``table`` for 0x2400; for every other
    code the code-specific tail is kept verbatim in ``extra`` (the gateway never needs it)."""

    opcode: ClassVar[int] = ERROR
    code: int = ERR_SERVER
    message: str = ""
    unprepared_id: bytes | None = None
    keyspace: str | None = None
    table: str | None = None
    extra: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready(Response):
    opcode: ClassVar[int] = READY


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticate(Response):
    opcode: ClassVar[int] = AUTHENTICATE
    authenticator: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Supported(Response):
    opcode: ClassVar[int] = SUPPORTED
    options: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthChallenge(Response):
    opcode: ClassVar[int] = AUTH_CHALLENGE
    token: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthSuccess(Response):
    opcode: ClassVar[int] = AUTH_SUCCESS
    token: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerEvent(Response):
    """EVENT (stream -1). TOPOLOGY_CHANGE / STATUS_CHANGE carry ``change_type`` and
    ``address`` (raw 4/16 address bytes) + ``port``; SCHEMA_CHANGE carries the same fields as
    :class:`SchemaChange`."""

    opcode: ClassVar[int] = EVENT
    event_type: str = ""
    change_type: str = ""
    address: bytes | None = None
    port: int | None = None
    target: str | None = None
    keyspace: str | None = None
    name: str | None = None
    arg_types: list[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Result(Response):
    """Base of the RESULT kinds."""

    opcode: ClassVar[int] = RESULT
    kind: ClassVar[int] = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Void(Result):
    kind: ClassVar[int] = RESULT_VOID


@dataclass(frozen=True, slots=True, kw_only=True)
class Rows(Result):
    """Rows: each row is a list of raw cell values (``None`` = null), one per column."""

    kind: ClassVar[int] = RESULT_ROWS
    metadata: RowsMetadata = field(default_factory=RowsMetadata)
    rows: list[list[bytes | None]] = field(default_factory=list)

    def column_index(self, name: str) -> int | None:
        """Index of the column called ``name`` (exact, case-sensitive), or None."""
        for i, col in enumerate(self.metadata.columns or ()):
            if col.name == name:
                return i
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetKeyspace(Result):
    kind: ClassVar[int] = RESULT_SET_KEYSPACE
    keyspace: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared(Result):
    kind: ClassVar[int] = RESULT_PREPARED
    query_id: bytes = b""
    result_metadata_id: bytes | None = None  # v5 only
    metadata: PreparedMetadata = field(default_factory=PreparedMetadata)
    result_metadata: RowsMetadata = field(default_factory=RowsMetadata)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaChange(Result):
    """``target`` KEYSPACE: only ``keyspace``; TABLE/TYPE: + ``name``; FUNCTION/AGGREGATE:
    + ``name`` and ``arg_types``."""

    kind: ClassVar[int] = RESULT_SCHEMA_CHANGE
    change_type: str = ""
    target: str = ""
    keyspace: str = ""
    name: str | None = None
    arg_types: list[str] | None = None


REQUEST_TYPES: dict[int, type[Request]] = {
    c.opcode: c for c in (Startup, Options, AuthResponse, Query, Prepare, Execute, Batch, Register)
}
RESPONSE_TYPES: dict[int, type[Response]] = {
    c.opcode: c
    for c in (
        Error,
        Ready,
        Authenticate,
        Supported,
        AuthChallenge,
        AuthSuccess,
        ServerEvent,
        Result,
    )
}
RESULT_TYPES: dict[int, type[Result]] = {
    c.kind: c for c in (Void, Rows, SetKeyspace, Prepared, SchemaChange)
}

# Star-exports: the protocol constants (opcodes, flags, kinds, error codes, consistencies),
# listed so that type checkers see them through ``codec``.
__all__ = [
    "ALL",
    "ANY",
    "AUTHENTICATE",
    "AUTH_CHALLENGE",
    "AUTH_RESPONSE",
    "AUTH_SUCCESS",
    "BATCH",
    "BATCH_COUNTER",
    "BATCH_LOGGED",
    "BATCH_UNLOGGED",
    "EACH_QUORUM",
    "ERROR",
    "ERR_ALREADY_EXISTS",
    "ERR_BAD_CREDENTIALS",
    "ERR_CONFIG",
    "ERR_FUNCTION_FAILURE",
    "ERR_INVALID",
    "ERR_IS_BOOTSTRAPPING",
    "ERR_OVERLOADED",
    "ERR_PROTOCOL",
    "ERR_READ_FAILURE",
    "ERR_READ_TIMEOUT",
    "ERR_SERVER",
    "ERR_SYNTAX",
    "ERR_TRUNCATE",
    "ERR_UNAUTHORIZED",
    "ERR_UNAVAILABLE",
    "ERR_UNPREPARED",
    "ERR_WRITE_FAILURE",
    "ERR_WRITE_TIMEOUT",
    "EVENT",
    "EXECUTE",
    "FLAG_COMPRESSION",
    "FLAG_CUSTOM_PAYLOAD",
    "FLAG_TRACING",
    "FLAG_USE_BETA",
    "FLAG_WARNING",
    "LOCAL_ONE",
    "LOCAL_QUORUM",
    "LOCAL_SERIAL",
    "ONE",
    "OPTIONS",
    "PREPARE",
    "QUERY",
    "QUORUM",
    "Q_KEYSPACE",
    "Q_NAMES_FOR_VALUES",
    "Q_PAGE_SIZE",
    "Q_PAGING_STATE",
    "Q_SERIAL_CONSISTENCY",
    "Q_SKIP_METADATA",
    "Q_TIMESTAMP",
    "Q_VALUES",
    "READY",
    "REGISTER",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "RESULT",
    "RESULT_PREPARED",
    "RESULT_ROWS",
    "RESULT_SCHEMA_CHANGE",
    "RESULT_SET_KEYSPACE",
    "RESULT_TYPES",
    "RESULT_VOID",
    "SERIAL",
    "STARTUP",
    "SUPPORTED",
    "THREE",
    "TWO",
]
