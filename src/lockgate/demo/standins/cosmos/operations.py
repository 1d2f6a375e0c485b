"""What the fake account executes for a request, and the log of what it executed.

Written from the REST reference ("Query Documents", "Create Document", "Common request
headers") and from what the ``azure-cosmos`` SDK sends, independently of Lockgate's
classifier: the oracle tests compare this log with Lockgate's audit, so the two must not share
code. Where the docs are silent the reading errs towards executing a write, because that is
the reading a gateway must never mistake for a read:

* a ``POST`` to a feed is a **query** only with ``x-ms-documentdb-isquery: True`` *and*
  ``Content-Type: application/query+json`` (or ``application/sql``), exactly as the docs say
  ("the header must be exactly as shown"; no charset);
* it is a **query plan** only with ``x-ms-cosmos-is-query-plan-request: True`` together with
  ``x-ms-cosmos-supported-query-features`` and ``x-ms-cosmos-query-version`` (what every SDK
  sends with it); the plan header alone does not make a query;
* ``x-ms-cosmos-is-batch-request: True`` makes it a transactional **batch** and
  ``x-ms-documentdb-is-upsert: True`` an **upsert**, whatever query headers come with them;
* anything else is a **create** (the body is stored as a document).

Booleans are read as the service's .NET runtime reads them: case-insensitive, surrounding
white space ignored.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["WRITES", "Executed", "flag", "operation_of", "post_operation"]

QUERY_TYPES = ("application/query+json", "application/sql")
# Operations that change data (documents) or the schema (databases, containers).
WRITES = frozenset(
    {"create", "upsert", "replace", "delete", "patch", "batch", "create_database",
     "delete_database", "create_container", "replace_container", "delete_container"}
)  # fmt: skip


@dataclass
class Executed:
    """One operation the account ran (``status`` is what it answered)."""

    op: str  # read, read_feed, query, query_plan, create, upsert, replace, patch, delete, batch...
    db: str | None = None
    container: str | None = None
    doc: str | None = None
    status: int = 0

    @property
    def is_write(self) -> bool:
        return self.op in WRITES


def flag(headers: Mapping[str, str], name: str) -> bool:
    """A boolean header as the service reads it (``" TRUE "`` is true)."""
    return headers.get(name, "").strip().lower() == "true"


def post_operation(headers: Mapping[str, str]) -> str:
    """``batch``, ``upsert``, ``query``, ``query_plan`` or ``create`` for a POST to a feed."""
    if flag(headers, "x-ms-cosmos-is-batch-request"):
        return "batch"
    if flag(headers, "x-ms-documentdb-is-upsert"):
        return "upsert"
    if (
        flag(headers, "x-ms-cosmos-is-query-plan-request")
        and headers.get("x-ms-cosmos-supported-query-features")
        and headers.get("x-ms-cosmos-query-version")
    ):
        return "query_plan"
    if flag(headers, "x-ms-documentdb-isquery") and headers.get("content-type") in QUERY_TYPES:
        return "query"
    return "create"


def operation_of(verb: str, seg: list[str], headers: Mapping[str, str]) -> Executed | None:
    """The operation a request runs, or None when the account has no such operation
    (the router then answers 404/405 without touching the store)."""
    n = len(seg)
    if n == 0:
        return Executed("read_account") if verb == "GET" else None
    if seg[0] != "dbs" or n > 6 or (n >= 3 and seg[2] != "colls"):
        return None
    db = seg[1] if n >= 2 else None
    container = seg[3] if n >= 4 else None
    if n in (1, 3):  # the databases or containers feed
        kind = "database" if n == 1 else "container"
        if verb == "GET":
            return Executed("read_feed", db)
        if verb == "POST":
            how = post_operation(headers)
            if how == "query":
                return Executed("query", db)
            return Executed(f"create_{kind}", db) if how == "create" else None
        return None
    if n in (2, 4):  # one database or container
        kind = "database" if n == 2 else "container"
        ops = {"GET": "read", "DELETE": f"delete_{kind}"}
        if n == 4:
            ops["PUT"] = "replace_container"
        return Executed(ops[verb], db, container) if verb in ops else None
    if seg[4] == "pkranges" and n == 5:
        return Executed("read_feed", db, container) if verb == "GET" else None
    if seg[4] != "docs":
        return None
    if n == 5:
        if verb == "GET":
            return Executed("read_feed", db, container)
        return Executed(post_operation(headers), db, container) if verb == "POST" else None
    ops = {"GET": "read", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}
    return Executed(ops[verb], db, container, seg[5]) if verb in ops else None
