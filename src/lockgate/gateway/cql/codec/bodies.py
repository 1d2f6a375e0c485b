"""Which reader and writer each message's body has, and the frames built around bodies.

One table (:data:`BODIES`) names, per event class, the body reader (:mod:`.readers`) and the
body writer (:mod:`.writers`), so a message added to the codec is added in one place.
:func:`read_body` turns a body into an event; :func:`encode_frame` is the single place that
builds a frame header from an event's fields (:func:`frame` for foreign-version replies).
"""

from __future__ import annotations

import struct
from typing import Any

from . import events as ev
from . import readers as read
from . import writers as write
from ._wire import Malformed, Out, Reader, w_bytes_map, w_string_list

HEADER = struct.Struct(">BBhBi")

#: Per message: (body reader, body writer).
BODIES: dict[type[ev.Event], tuple[read.BodyReader, write.BodyWriter]] = {
    ev.Startup: (read.startup, write.startup),
    ev.Options: (read.empty, write.empty),
    ev.AuthResponse: (read.auth_token, write.auth_token),
    ev.Query: (read.query, write.query),
    ev.Prepare: (read.prepare, write.prepare),
    ev.Execute: (read.execute, write.execute),
    ev.Batch: (read.batch, write.batch),
    ev.Register: (read.register, write.register),
    ev.Error: (read.error, write.error),
    ev.Ready: (read.empty, write.empty),
    ev.Authenticate: (read.authenticate, write.authenticate),
    ev.Supported: (read.supported, write.supported),
    ev.AuthChallenge: (read.auth_token, write.auth_token),
    ev.AuthSuccess: (read.auth_token, write.auth_token),
    ev.ServerEvent: (read.server_event, write.server_event),
    ev.Void: (read.empty, write.void),
    ev.Rows: (read.rows, write.rows),
    ev.SetKeyspace: (read.set_keyspace, write.set_keyspace),
    ev.Prepared: (read.prepared, write.prepared),
    ev.SchemaChange: (read.schema_change, write.schema_change),
}


def read_body(cls: type[ev.Event], r: Reader, version: int, common: dict[str, Any]) -> ev.Event:
    """Parse the rest of the body as ``cls`` (a RESULT is dispatched on its kind here) and
    build the event with ``common`` (header fields, ``raw``, payload/tracing/warnings).
    Raises only :class:`Malformed`, also when bytes are left over."""
    if cls is ev.Result:
        kind = r.i32()
        sub = ev.RESULT_TYPES.get(kind)
        if sub is None:
            raise Malformed(f"unknown result kind {kind}")
        cls = sub
    common.update(BODIES[cls][0](r, version))
    r.done()
    event = cls(**common)
    object.__setattr__(event, "_parsed", True)
    return event


def encode_frame(e: ev.Event) -> bytes:
    """Build the whole frame for ``e`` from its fields (ignores ``raw``)."""
    body_writer = BODIES.get(type(e))
    if body_writer is None:
        raise ValueError(f"cannot encode {type(e).__name__}")
    if e.version != 4:
        raise ValueError("only protocol v4 bodies can be encoded")
    if e.flags & ev.FLAG_COMPRESSION:
        raise ValueError("compressed frames are not supported")
    out: Out = []
    flags = e.flags & ~(ev.FLAG_CUSTOM_PAYLOAD | ev.FLAG_WARNING)
    if isinstance(e, ev.Response):
        flags &= ~ev.FLAG_TRACING
        if e.tracing_id is not None:
            if len(e.tracing_id) != 16:
                raise ValueError("tracing id must be 16 bytes")
            flags |= ev.FLAG_TRACING
            out.append(bytes(e.tracing_id))
        if e.warnings is not None:
            flags |= ev.FLAG_WARNING
            w_string_list(out, e.warnings)
    if e.custom_payload is not None:
        flags |= ev.FLAG_CUSTOM_PAYLOAD
        w_bytes_map(out, e.custom_payload)
    body_writer[1](out, e)
    body = b"".join(out)
    version = e.version if e.is_request else e.version | 0x80
    return HEADER.pack(version, flags, e.stream, e.opcode, len(body)) + body


def frame(version_byte: int, flags: int, stream: int, opcode: int, body: bytes) -> bytes:
    """Low-level: a frame with a given header and body (used for foreign-version replies)."""
    return HEADER.pack(version_byte, flags, stream, opcode, len(body)) + body


__all__ = ["BODIES", "HEADER", "encode_frame", "frame", "read_body"]
