"""What the fake node actually executed: one ``Execution`` per statement it ran.

This is the oracle's side of enforcement tests: the node records each statement it carried
out (a QUERY, an EXECUTE of a prepared id, each child of a BATCH, each child of a
``BEGIN BATCH`` text) once it succeeded, with the keyspace the *node* resolved it against at
that moment. Statements refused by the node (syntax, unknown table, no permission) are not
executions and are not recorded.

Actions and objects use the gateway's vocabulary so tests can compare them with the audit:
``read`` (SELECT) and ``write`` (INSERT, UPDATE, DELETE, TRUNCATE) on ``"keyspace.table"``;
``admin`` for schema changes (the keyspace for keyspace DDL, ``"keyspace.table"`` for table
DDL and grants on a table, ``"role:<name>"`` for role statements, ``"*"`` for grants on all
keyspaces); ``use`` for USE, with the keyspace. A conditional INSERT, UPDATE or DELETE
(``IF [NOT] EXISTS``) is logged twice, as a ``write`` and a ``read`` of its table: its
answer shows the row it found.

``ExecutionLog`` keeps the records in memory and, when given a path, also appends them to
a JSON-lines file (one ``write`` per record) for nodes running in another process.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import cql


@dataclass(frozen=True, slots=True)
class Execution:
    connection: int  # node-side connection number, from 1 in accept order
    role: str | None  # the role the connection logged in as
    request: int  # node-wide number of the QUERY/EXECUTE/BATCH frame that carried it
    opcode: str  # QUERY | EXECUTE | BATCH
    op: str  # select | insert | update | delete | truncate | use | create_table | ...
    action: str  # read | write | admin | use
    object: str
    keyspace: str | None  # the connection's (or the prepared statement's) keyspace
    text: str  # the request's statement text (the prepared text for EXECUTE)


def describe(stmt: Any, keyspace: str | None) -> tuple[str, str, str]:
    """``(op, action, object)`` of one executed, non-batch statement.

    ``keyspace`` is the one the node resolved unqualified names against; the caller has
    already checked it exists when the statement needs it.
    """

    def table(ref: cql.TableRef) -> str:
        return f"{ref.keyspace or keyspace}.{ref.name}"

    if isinstance(stmt, cql.Select):
        return "select", "read", table(stmt.table)
    if isinstance(stmt, cql.Insert | cql.Update | cql.Delete | cql.Truncate):
        return type(stmt).__name__.lower(), "write", table(stmt.table)
    if isinstance(stmt, cql.Use):
        return "use", "use", stmt.keyspace
    if isinstance(stmt, cql.CreateKeyspace):
        return "create_keyspace", "admin", stmt.name
    if isinstance(stmt, cql.DropKeyspace):
        return "drop_keyspace", "admin", stmt.name
    if isinstance(stmt, cql.CreateTable):
        return "create_table", "admin", table(stmt.table)
    if isinstance(stmt, cql.CreateView):
        return "create_materialized_view", "admin", table(stmt.view)
    if isinstance(stmt, cql.DropTable):
        return "drop_table", "admin", table(stmt.table)
    if isinstance(stmt, cql.RoleStmt):
        return f"{stmt.verb}_role", "admin", f"role:{stmt.name}"
    if isinstance(stmt, cql.GrantStmt):
        res = stmt.resource
        obj = "*" if res[0] == "all" else res[1] if res[0] == "ks" else f"{res[1]}.{res[2]}"
        return "grant" if stmt.grant else "revoke", "admin", obj
    raise TypeError(f"no description for {type(stmt).__name__}")


def describe_all(stmt: Any, keyspace: str | None) -> list[tuple[str, str, str]]:
    """Everything one executed, non-batch statement did: :func:`describe`, plus a ``read``
    of the table for a conditional write (a failed ``IF`` answers with the row it found)."""
    op, action, obj = describe(stmt, keyspace)
    done = [(op, action, obj)]
    if (isinstance(stmt, cql.Update | cql.Delete) and stmt.if_exists) or (
        isinstance(stmt, cql.Insert) and stmt.if_not_exists
    ):
        done.append((op, "read", obj))
    return done


class ExecutionLog:
    """The node's executed statements, in execution order."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.records: list[Execution] = []
        self.path = Path(path) if path is not None else None

    def append(self, record: Execution) -> None:
        self.records.append(record)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(asdict(record)) + "\n")

    def for_connection(self, connection: int) -> list[Execution]:
        return [r for r in self.records if r.connection == connection]

    def __len__(self) -> int:
        return len(self.records)

    @staticmethod
    def read(path: str | Path) -> list[Execution]:
        """The records of a node running elsewhere, from its JSON-lines file."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [Execution(**json.loads(line)) for line in lines if line]
