"""Result metadata: the CQL type option tree, column specs and rows/prepared metadata.

These are plain frozen values; reading and writing them lives in ``_body.py``. The type tree is
kept complete (custom class names, list/set/map parameters, UDT keyspace/name/fields, tuple
members) so that a Rows result can be decoded, edited (system.local / system.peers rewrites)
and re-encoded byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Type option ids (native protocol v4 §6 / v5 §4.2.5.2).
CUSTOM = 0x0000
ASCII = 0x0001
BIGINT = 0x0002
BLOB = 0x0003
BOOLEAN = 0x0004
COUNTER = 0x0005
DECIMAL = 0x0006
DOUBLE = 0x0007
FLOAT = 0x0008
INT = 0x0009
TIMESTAMP = 0x000B
UUID = 0x000C
VARCHAR = 0x000D
VARINT = 0x000E
TIMEUUID = 0x000F
INET = 0x0010
DATE = 0x0011
TIME = 0x0012
SMALLINT = 0x0013
TINYINT = 0x0014
DURATION = 0x0015
LIST = 0x0020
MAP = 0x0021
SET = 0x0022
UDT = 0x0030
TUPLE = 0x0031

#: Type ids with no parameters. 0x000A (text) is an alias of varchar kept for old servers.
SIMPLE_TYPES = frozenset({*range(0x0001, 0x0016)})

#: Nesting limit for type trees; real schemas nest a handful of levels, a forged frame could
#: nest thousands and exhaust the stack.
MAX_TYPE_DEPTH = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class CqlType:
    """One node of a type option tree.

    ``code`` is the option id. ``params`` holds element types (list/set: 1, map: 2, tuple: n,
    UDT: one per field, in order). ``custom`` is the Java class name for CUSTOM. UDTs also
    carry ``keyspace``, ``name`` and ``field_names`` (same length as ``params``).
    """

    code: int
    params: tuple[CqlType, ...] = ()
    custom: str | None = None
    keyspace: str | None = None
    name: str | None = None
    field_names: tuple[str, ...] = ()


def simple(code: int) -> CqlType:
    """A parameterless type, e.g. ``simple(INET)``."""
    return CqlType(code=code)


def list_of(t: CqlType) -> CqlType:
    return CqlType(code=LIST, params=(t,))


def set_of(t: CqlType) -> CqlType:
    return CqlType(code=SET, params=(t,))


def map_of(k: CqlType, v: CqlType) -> CqlType:
    return CqlType(code=MAP, params=(k, v))


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnSpec:
    """``(keyspace, table, name, type)`` of one result or bind column."""

    keyspace: str
    table: str
    name: str
    type: CqlType


# Rows metadata flags.
GLOBAL_TABLES_SPEC = 0x0001
HAS_MORE_PAGES = 0x0002
NO_METADATA = 0x0004
METADATA_CHANGED = 0x0008  # v5 only


@dataclass(frozen=True, slots=True, kw_only=True)
class RowsMetadata:
    """Rows ``<metadata>``.

    Writers derive HAS_MORE_PAGES from ``paging_state`` and NO_METADATA from ``columns is None``;
    GLOBAL_TABLES_SPEC is taken from ``flags`` (the writer checks every column then shares one
    keyspace/table). ``columns_count`` matters only when ``columns`` is None (no metadata).
    """

    flags: int = 0
    columns_count: int = 0
    paging_state: bytes | None = None
    new_metadata_id: bytes | None = None
    columns: list[ColumnSpec] | None = field(default_factory=list)

    @classmethod
    def for_columns(
        cls, columns: list[ColumnSpec], paging_state: bytes | None = None
    ) -> RowsMetadata:
        """Metadata for synthesized rows; uses the global table spec when all columns share one."""
        same = len({(c.keyspace, c.table) for c in columns}) == 1
        return cls(
            flags=GLOBAL_TABLES_SPEC if same else 0,
            columns_count=len(columns),
            paging_state=paging_state,
            columns=list(columns),
        )

    @property
    def column_count(self) -> int:
        return self.columns_count if self.columns is None else len(self.columns)


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedMetadata:
    """Bind-variable ``<metadata>`` of a Prepared result (v4: with partition-key indexes)."""

    flags: int = 0
    pk_indexes: list[int] = field(default_factory=list)
    columns: list[ColumnSpec] = field(default_factory=list)
