"""Cassandra (CQL native protocol) support for the Lockgate gateway.

* :mod:`lockgate.gateway.cql.codec` — sans-I/O protocol v4 frame codec (bytes in, events out).
* :mod:`lockgate.gateway.cql.classify` — CQL statement → ``(action, object)`` targets for policy.

The engine that drives them over sockets lives in its own modules of this package.
"""
