"""Keep drivers on the gateway: rewrite what the cluster says about its own topology.

A CQL driver learns the cluster's nodes from ``system.local`` and ``system.peers`` (or
``peers_v2``) and from TOPOLOGY/STATUS events, then dials those nodes directly. Through
Lockgate it must only ever see one node: the gateway. So

* ``system.local`` rows get the gateway's address (as the client reached it) in
  ``rpc_address``, ``broadcast_address`` and ``listen_address``, and the gateway's port in
  every native port column present;
* ``system.peers`` / ``system.peers_v2`` answers keep their metadata but carry no rows
  (and no paging state), so ``cluster.metadata.all_hosts()`` is just the gateway;
* TOPOLOGY_CHANGE and STATUS_CHANGE events are dropped; SCHEMA_CHANGE events pass.
"""

from __future__ import annotations

import dataclasses

from . import codec

LOCAL = "local"
PEERS = "peers"

_ADDRESS_COLUMNS = ("rpc_address", "broadcast_address", "listen_address")
_PORT_COLUMNS = (
    "native_port",
    "native_transport_port",
    "native_port_ssl",
    "native_transport_port_ssl",
)
_TOPOLOGY_EVENTS = frozenset({"TOPOLOGY_CHANGE", "STATUS_CHANGE"})


def rewrite_kind(objects: list[str]) -> str | None:
    """Which rewrite a read of ``objects`` needs (``LOCAL``, ``PEERS`` or None)."""
    for obj in objects:
        if obj in ("system.peers", "system.peers_v2"):
            return PEERS
    for obj in objects:
        if obj == "system.local":
            return LOCAL
    return None


def rewrite_rows(rows: codec.Rows, kind: str, address: str, port: int) -> codec.Rows:
    """The rows the client may see for a ``kind`` read (see module docstring)."""
    if kind == PEERS:
        meta = dataclasses.replace(rows.metadata, paging_state=None)
        return dataclasses.replace(rows, metadata=meta, rows=[])
    if rows.metadata.columns is None:
        # No metadata (skip_metadata on EXECUTE): columns cannot be located; hide the rows
        # rather than leak a node address the driver could dial.
        return dataclasses.replace(rows, rows=[])
    inet = codec.values.encode_inet(address)
    port_cell = codec.values.encode_int(port)
    edits: dict[int, bytes] = {}
    for name in _ADDRESS_COLUMNS:
        i = rows.column_index(name)
        if i is not None:
            edits[i] = inet
    for name in _PORT_COLUMNS:
        i = rows.column_index(name)
        if i is not None:
            edits[i] = port_cell
    if not edits:
        return rows
    new_rows = []
    for row in rows.rows:
        row = list(row)
        for i, cell in edits.items():
            if i < len(row) and row[i] is not None:
                row[i] = cell
        new_rows.append(row)
    return dataclasses.replace(rows, rows=new_rows)


def forward_event(event: codec.ServerEvent) -> bool:
    """Whether a server EVENT may reach the client (topology and status never do)."""
    return event.event_type not in _TOPOLOGY_EVENTS
