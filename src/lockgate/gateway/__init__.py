"""The gateway room: one engine per wire protocol, judging every request before it goes upstream.

Each engine does the same five steps for its protocol: authenticate the client with its
Lockgate token, classify each request or statement into an action on an object, ask policy
(deny by default), talk upstream with the gateway's own credential, then relay and audit
(the allowed request's record durable before its first byte goes upstream; every refusal
recorded with its reason).

The door:

* :class:`~lockgate.gateway.engine.Engine` — the protocol every engine implements: built
  from ``(resources, shared)``, ``listen(listeners)`` opens its listener(s) from the
  config, ``update_resources(resources)`` takes a new catalog without a restart,
  ``ports`` names what it bound, ``close()`` ends it all. ``kind`` is the resource kind it
  serves (and the name of its ``listeners`` section); ``every_worker`` says whether
  ``serve --workers`` processes may share its port;
* :class:`~lockgate.gateway.engine.Collaborators` — the one bundle engines share (token
  verifier, policy, credential broker and its secret cache, audit sink and record builder,
  assertion signer and its cache, request metrics), checked once when built;
* :mod:`~lockgate.gateway.registry` — resource kind -> engine class; the server wires
  engines by kind through it and names none.

Rooms inside:

* :mod:`.http` — ``kind: http``: reverse proxy for REST upstreams, profiles (Cosmos DB,
  Databricks, ARM) plugged into one exchange, the forward proxy for fixed upstream URLs;
* :mod:`.cql` — ``kind: cql``: the Cassandra native protocol, sans-I/O codec, statement
  classification with Cassandra's own grammar, dynamic least-privilege roles;
* :mod:`.engine`, :mod:`.registry` — the interface, the shared bundle, kind -> engine;
* :mod:`.records` — the audit records of every engine (one builder, the same fields);
* :mod:`.caches` — upstream secrets and identity assertions on the hot path;
  :mod:`.upstream_credential` — which credential version a database login sends (CQL and
  PostgreSQL), and what after a refusal during a rotation;
* :mod:`.refusals` — refusals described safely and budgeted per peer before authentication;
* :mod:`.listeners` — connection accounting, caps, TLS contexts from listener configs.

A new protocol (PostgreSQL) is a subpackage with one class implementing ``Engine`` and one
line in :data:`lockgate.gateway.registry.ENGINES`; the sketch is in :mod:`.engine`.
"""
