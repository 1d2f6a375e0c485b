"""Virtual system tables the driver reads: system.local/peers, system_schema.*, system_auth.roles.

Strategy: each table is a column list plus rows computed from the ``Store`` on every read, so
the schema tables always match the in-memory schema. Column sets follow Cassandra 3.11, which
is what ``release_version`` announces (the driver then picks SchemaParserV3 and reads
system.peers, not peers_v2). ``system.peers_v2`` is absent, as on 3.11: the driver's first
query to it gets 0x2200 and it falls back to system.peers.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from typing import Any

from .store import Store
from .types import (
    BIGINT,
    BLOB,
    BLOB_MAP,
    BOOLEAN,
    DOUBLE,
    INET,
    INT,
    TEXT,
    TEXT_LIST,
    TEXT_MAP,
    TEXT_SET,
    UUID_T,
    CqlType,
)

RELEASE_VERSION = "3.11.16"
CQL_VERSION = "3.4.4"
CLUSTER_NAME = "Fake Cluster"
DATA_CENTER = "datacenter1"
PARTITIONER = "org.apache.cassandra.dht.Murmur3Partitioner"


@dataclass(frozen=True)
class FakePeer:
    """A row of system.peers; the server never listens on its address."""

    address: str
    data_center: str = "dc-remote"
    rack: str = "rack1"
    host_id: uuid.UUID | None = None
    tokens: tuple[str, ...] = ("3074457345618258602",)


@dataclass
class VirtualTable:
    keyspace: str
    name: str
    columns: dict[str, CqlType]
    rows: list[dict[str, Any]]
    partition_key: tuple[str, ...] = ()
    clustering: tuple[str, ...] = ()


def _cols(*pairs: tuple[str, CqlType]) -> dict[str, CqlType]:
    return dict(pairs)


_KS_COLS = _cols(("keyspace_name", TEXT), ("durable_writes", BOOLEAN), ("replication", TEXT_MAP))
_TABLE_COLS = _cols(
    ("keyspace_name", TEXT),
    ("table_name", TEXT),
    ("bloom_filter_fp_chance", DOUBLE),
    ("caching", TEXT_MAP),
    ("cdc", BOOLEAN),
    ("comment", TEXT),
    ("compaction", TEXT_MAP),
    ("compression", TEXT_MAP),
    ("crc_check_chance", DOUBLE),
    ("dclocal_read_repair_chance", DOUBLE),
    ("default_time_to_live", INT),
    ("extensions", BLOB_MAP),
    ("flags", TEXT_SET),
    ("gc_grace_seconds", INT),
    ("id", UUID_T),
    ("max_index_interval", INT),
    ("memtable_flush_period_in_ms", INT),
    ("min_index_interval", INT),
    ("read_repair_chance", DOUBLE),
    ("speculative_retry", TEXT),
)
_COLUMN_COLS = _cols(
    ("keyspace_name", TEXT),
    ("table_name", TEXT),
    ("column_name", TEXT),
    ("clustering_order", TEXT),
    ("column_name_bytes", BLOB),
    ("kind", TEXT),
    ("position", INT),
    ("type", TEXT),
)
_EMPTY_TABLES = {
    "types": _cols(("keyspace_name", TEXT), ("type_name", TEXT), ("field_names", TEXT_LIST),
                   ("field_types", TEXT_LIST)),
    "functions": _cols(("keyspace_name", TEXT), ("function_name", TEXT),
                       ("argument_types", TEXT_LIST), ("argument_names", TEXT_LIST),
                       ("body", TEXT), ("called_on_null_input", BOOLEAN), ("language", TEXT),
                       ("return_type", TEXT)),
    "aggregates": _cols(("keyspace_name", TEXT), ("aggregate_name", TEXT),
                        ("argument_types", TEXT_LIST), ("final_func", TEXT), ("initcond", TEXT),
                        ("return_type", TEXT), ("state_func", TEXT), ("state_type", TEXT)),
    "views": _cols(("keyspace_name", TEXT), ("view_name", TEXT), ("base_table_id", UUID_T),
                   ("base_table_name", TEXT), ("include_all_columns", BOOLEAN),
                   ("where_clause", TEXT), ("id", UUID_T)),
    "indexes": _cols(("keyspace_name", TEXT), ("table_name", TEXT), ("index_name", TEXT),
                     ("kind", TEXT), ("options", TEXT_MAP)),
    "triggers": _cols(("keyspace_name", TEXT), ("table_name", TEXT), ("trigger_name", TEXT),
                      ("options", TEXT_MAP)),
    "dropped_columns": _cols(("keyspace_name", TEXT), ("table_name", TEXT),
                             ("column_name", TEXT), ("dropped_time", BIGINT), ("type", TEXT)),
}  # fmt: skip
_LOCAL_COLS = _cols(
    ("key", TEXT),
    ("bootstrapped", TEXT),
    ("broadcast_address", INET),
    ("cluster_name", TEXT),
    ("cql_version", TEXT),
    ("data_center", TEXT),
    ("host_id", UUID_T),
    ("listen_address", INET),
    ("native_protocol_version", TEXT),
    ("partitioner", TEXT),
    ("rack", TEXT),
    ("release_version", TEXT),
    ("rpc_address", INET),
    ("schema_version", UUID_T),
    ("tokens", TEXT_SET),
)
_PEER_COLS = _cols(
    ("peer", INET),
    ("data_center", TEXT),
    ("host_id", UUID_T),
    ("preferred_ip", INET),
    ("rack", TEXT),
    ("release_version", TEXT),
    ("rpc_address", INET),
    ("schema_version", UUID_T),
    ("tokens", TEXT_SET),
)
_ROLE_COLS = _cols(
    ("role", TEXT),
    ("can_login", BOOLEAN),
    ("is_superuser", BOOLEAN),
    ("member_of", TEXT_SET),
)
_LOCAL_REPL = {"class": "org.apache.cassandra.locator.LocalStrategy"}
_SYSTEM_KS = {
    "system": _LOCAL_REPL,
    "system_schema": _LOCAL_REPL,
    "system_auth": {"class": "org.apache.cassandra.locator.SimpleStrategy",
                    "replication_factor": "1"},
}  # fmt: skip


class SystemTables:
    """Builds virtual tables on demand from the store and the node's identity."""

    def __init__(self, store: Store, address: str, peers: list[FakePeer]) -> None:
        self.store = store
        self.address = ipaddress.ip_address(address)
        self.peers = peers
        self.host_id = uuid.uuid4()

    def get(self, ks: str, name: str) -> VirtualTable | None:
        if ks == "system" and name in ("local", "peers"):
            return self._local() if name == "local" else self._peers()
        if ks == "system_schema":
            if name == "keyspaces":
                return VirtualTable(ks, name, _KS_COLS, self._keyspace_rows(), ("keyspace_name",))
            if name == "tables":
                return VirtualTable(ks, name, _TABLE_COLS, self._table_rows())
            if name == "columns":
                return VirtualTable(ks, name, _COLUMN_COLS, self._column_rows())
            if name == "views":
                return VirtualTable(ks, name, _EMPTY_TABLES[name], self._view_rows())
            if name in _EMPTY_TABLES:
                return VirtualTable(ks, name, _EMPTY_TABLES[name], [])
        if ks == "system_auth" and name == "roles":
            rows = [
                {"role": r.name, "can_login": r.login, "is_superuser": r.superuser,
                 "member_of": None}
                for r in self.store.roles.values()
            ]  # fmt: skip
            return VirtualTable(ks, name, _ROLE_COLS, rows, ("role",))
        return None

    def _view_rows(self) -> list[dict[str, object]]:
        return [
            {"keyspace_name": ks.name, "view_name": view, "base_table_name": base,
             "base_table_id": ks.tables[base].id, "include_all_columns": True,
             "where_clause": "", "id": uuid.uuid5(ks.tables[base].id, view)}
            for ks in self.store.keyspaces.values()
            for view, base in ks.views.items()
            if base in ks.tables
        ]  # fmt: skip

    def _local(self) -> VirtualTable:
        row = {
            "key": "local",
            "bootstrapped": "COMPLETED",
            "broadcast_address": self.address,
            "cluster_name": CLUSTER_NAME,
            "cql_version": CQL_VERSION,
            "data_center": DATA_CENTER,
            "host_id": self.host_id,
            "listen_address": self.address,
            "native_protocol_version": "4",
            "partitioner": PARTITIONER,
            "rack": "rack1",
            "release_version": RELEASE_VERSION,
            "rpc_address": self.address,
            "schema_version": self.store.schema_version,
            "tokens": {"-9223372036854775808"},
        }
        return VirtualTable("system", "local", _LOCAL_COLS, [row], ("key",))

    def _peers(self) -> VirtualTable:
        rows = []
        for p in self.peers:
            addr = ipaddress.ip_address(p.address)
            rows.append(
                {
                    "peer": addr,
                    "data_center": p.data_center,
                    "host_id": p.host_id or uuid.uuid5(uuid.NAMESPACE_DNS, p.address),
                    "preferred_ip": None,
                    "rack": p.rack,
                    "release_version": RELEASE_VERSION,
                    "rpc_address": addr,
                    # Same schema version as the local node, or schema agreement never ends.
                    "schema_version": self.store.schema_version,
                    "tokens": set(p.tokens),
                }
            )
        return VirtualTable("system", "peers", _PEER_COLS, rows, ("peer",))

    def _keyspace_rows(self) -> list[dict[str, Any]]:
        rows = [
            {"keyspace_name": n, "durable_writes": True, "replication": r}
            for n, r in _SYSTEM_KS.items()
        ]
        for ks in self.store.keyspaces.values():
            rows.append(
                {
                    "keyspace_name": ks.name,
                    "durable_writes": ks.durable_writes,
                    "replication": dict(ks.replication),
                }
            )
        return rows

    def _table_rows(self) -> list[dict[str, Any]]:
        rows = []
        for ks in self.store.keyspaces.values():
            for t in ks.tables.values():
                rows.append(
                    {
                        "keyspace_name": ks.name,
                        "table_name": t.name,
                        "bloom_filter_fp_chance": 0.01,
                        "caching": {"keys": "ALL", "rows_per_partition": "NONE"},
                        "cdc": None,
                        "comment": "",
                        "compaction": {
                            "class": "org.apache.cassandra.db.compaction."
                            "SizeTieredCompactionStrategy",
                            "max_threshold": "32",
                            "min_threshold": "4",
                        },
                        "compression": {
                            "chunk_length_in_kb": "64",
                            "class": "org.apache.cassandra.io.compress.LZ4Compressor",
                        },
                        "crc_check_chance": 1.0,
                        "dclocal_read_repair_chance": 0.1,
                        "default_time_to_live": 0,
                        "extensions": {},
                        "flags": {"compound"},
                        "gc_grace_seconds": 864000,
                        "id": t.id,
                        "max_index_interval": 2048,
                        "memtable_flush_period_in_ms": 0,
                        "min_index_interval": 128,
                        "read_repair_chance": 0.0,
                        "speculative_retry": "99PERCENTILE",
                    }
                )
        return rows

    def _column_rows(self) -> list[dict[str, Any]]:
        rows = []
        for ks in self.store.keyspaces.values():
            for t in ks.tables.values():
                for name, ctype in t.columns.items():
                    if name in t.partition_key:
                        kind, pos, order = "partition_key", t.partition_key.index(name), "none"
                    elif name in t.clustering:
                        kind, pos = "clustering", t.clustering.index(name)
                        order = "desc" if name in t.descending else "asc"
                    else:
                        kind, pos, order = "regular", -1, "none"
                    rows.append(
                        {
                            "keyspace_name": ks.name,
                            "table_name": t.name,
                            "column_name": name,
                            "clustering_order": order,
                            "column_name_bytes": name.encode(),
                            "kind": kind,
                            "position": pos,
                            "type": str(ctype),
                        }
                    )
        return rows
