"""What a session's flow remembers between a message and its answer.

* :class:`Out` — what to do after one message;
* :class:`Unit` — one forwarded message (or one statement of a Query) the server will
  answer, in the FIFO of answers; or a refusal waiting for its turn in that order;
* :class:`Pending` — an admitted statement awaiting its outcome record;
* :class:`Portal` — what a Bind tied a portal to (statement text, search paths then).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lockgate.quotas.engines import Outstanding

from . import codec
from .judge import StatementRecord

# Unit kinds: what answer ends the unit.
PARSE = 1  # ParseComplete
BIND = 2  # BindComplete
DESCRIBE = 3  # RowDescription / NoData
CLOSE = 4  # CloseComplete
EXECUTE = 5  # CommandComplete / EmptyQueryResponse / PortalSuspended
STATEMENT = 6  # one statement of a Query: CommandComplete / EmptyQueryResponse
BATCH_END = 7  # a Sync, or the end of a Query: ReadyForQuery
REFUSAL = 8  # the gateway's ErrorResponse, sent once everything before it was answered


@dataclass(slots=True)
class Out:
    """What to do after one message: bytes for the server, bytes for the client, close."""

    to_server: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)
    close: bool = False


def raw(msg: codec.Message) -> bytes:
    """The message framed again (cheap: one header)."""
    return codec.encode(msg.type, msg.body)


@dataclass(slots=True)
class Pending(Outstanding):
    """An admitted statement: its record was written ahead as ``ref`` (its tickets and span:
    see :class:`~lockgate.quotas.engines.Outstanding`)."""

    t0: float
    record: StatementRecord
    ref: str
    detail: Mapping[str, Any]


@dataclass(slots=True)
class Unit:
    kind: int
    pending: Pending | None = None
    token: int = 0  # its in-flight search paths (:class:`~.flow_scope.FlowScope`), 0: none
    error: bytes | None = None  # REFUSAL: the ErrorResponse
    # PARSE / BIND: (names, name, what the flow put there) to take back if the server fails
    undo: tuple[dict[str, Any], str, object] | None = None
    copy_sync: bool = False  # BATCH_END: a Sync the server ignores if it is in COPY by then


@dataclass(frozen=True, slots=True)
class Portal:
    text: str
    statement: str  # the prepared statement's name ("" unnamed)
    paths: tuple[tuple[str, ...], ...]  # the search paths it may have been planned under


# Quoted literals: '...' with '' escapes (E'' strings with \' too), and $tag$...$tag$.
_LITERAL = re.compile(
    r"(?:[eE]'(?:[^'\\]|\\.|'')*'?)|(?:'(?:[^']|'')*'?)|(\$[A-Za-z_0-9]*\$)[\s\S]*?(?:\1|$)"
)
MASK = "'***'"


def mask_literals(text: str, limit: int = 2048) -> str:
    """``text`` with every quoted or dollar-quoted literal masked, capped at ``limit``."""
    masked = _LITERAL.sub(MASK, text[: limit * 2])
    return masked if len(masked) <= limit else masked[:limit] + "…"


__all__ = [
    "BATCH_END",
    "BIND",
    "CLOSE",
    "DESCRIBE",
    "EXECUTE",
    "MASK",
    "PARSE",
    "REFUSAL",
    "STATEMENT",
    "Out",
    "Pending",
    "Portal",
    "Unit",
    "mask_literals",
    "raw",
]
