"""A fake Apache Cassandra node for tests: CQL native protocol v4, written from the spec.

It is independent of Lockgate's own CQL codec on purpose, so each keeps the other honest.
Start it with ``await start_cql_server()`` or ``python -m tests.fakes.cqlserver``.
"""

from .server import CqlServer, start_cql_server
from .system import FakePeer

__all__ = ["CqlServer", "FakePeer", "start_cql_server"]
