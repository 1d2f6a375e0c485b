"""An Apache Cassandra node: CQL native protocol v4, written from the protocol spec.

A stand-in for demos and tests, written from the public API docs: not the service.

It is independent of Lockgate's own CQL codec on purpose, so each keeps the other honest.
Start it with ``await start_cql_server()`` or ``python -m lockgate.demo.standins.cqlserver``.
"""

from .server import CqlServer, start_cql_server
from .system import FakePeer

__all__ = ["CqlServer", "FakePeer", "start_cql_server"]
