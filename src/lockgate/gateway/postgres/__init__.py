"""PostgreSQL (wire protocol v3) support for the Lockgate gateway.

Clients (psycopg, asyncpg, libpq tools, Airflow's ``PostgresHook``) connect to the
``postgres`` listener as to one PostgreSQL server, over TLS, with the *resource name* as the
database name (as PgBouncer maps a database alias to a server), any user name, and their
Lockgate token as the password. Every statement is judged before it reaches the server;
a denied one gets a normal ``ErrorResponse`` (SQLSTATE 42501) and the session stays usable.

* :class:`PostgresEngine` (:mod:`.engine`, a :class:`lockgate.gateway.engine.Engine`) — the
  listener, connection limits, the live catalog. :mod:`.context` is what its sessions share
  (collaborators, catalog of resources, relation catalogs, decision cache, cancel keys,
  refusal budget); :mod:`.startup` is the client's login (SSLRequest and TLS,
  StartupMessage, token as password), :mod:`.session` the upstream login and the two pumps
  (:mod:`.session_login`: whether a session logged in upstream may be greeted),
  :mod:`.cancel` CancelRequest with the gateway's own keys, :mod:`.catalog` the upstream's
  relation names shared between sessions.
* :mod:`.codec` — sans-I/O protocol v3 codec (bytes in, messages out).
* :mod:`.classify` (with :mod:`.classify_query`, :mod:`.resolver`, :mod:`.classify_ddl`,
  :mod:`.classified`, :mod:`.scope`, :mod:`.relation_catalog`, :mod:`.functions`,
  :mod:`.redact`) — statement →
  ``(action, object)`` with PostgreSQL's own parser (pglast), names resolved through the
  session's ``search_path``.
* :mod:`.flow` (with :mod:`.flow_answers`, :mod:`.flow_scope`, :mod:`.flow_units`,
  :mod:`.flow_quotas`, :mod:`.judge`) — the per-session statement state machine: judge,
  ask the quotas, write ahead, relay, keep the protocol exact.
* :mod:`.upstream` (with :mod:`.upstream_transport`, :mod:`.scram`,
  :mod:`lockgate.gateway.upstream_credential`) — the gateway's own login to the server;
  :mod:`.dynamic_roles` — per-task roles for clients that cannot come through the gateway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import PostgresEngine

__all__ = ["PostgresEngine"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing the codec or the classifier alone stays light.
    if name == "PostgresEngine":
        from .engine import PostgresEngine

        return PostgresEngine
    raise AttributeError(name)
