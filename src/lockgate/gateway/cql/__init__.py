"""Cassandra (CQL native protocol) support for the Lockgate gateway.

* :class:`CqlEngine` (:mod:`.engine`, a :class:`lockgate.gateway.engine.Engine`) — the
  ``cql`` listener: token login, per-statement policy, upstream relay, audit; takes a new
  catalog live. :mod:`.context` is what its sessions share. :mod:`.session` (with :mod:`.judge` and
  :mod:`.answers`, its two halves), :mod:`.handshake`, :mod:`.upstream`, :mod:`.holds`,
  :mod:`.statements` and :mod:`.rewrite` are its parts; :mod:`.pacing` (quotas and spans
  of statements, asking the gate through :mod:`lockgate.quotas.engines`) too.
* :mod:`lockgate.gateway.cql.codec` — sans-I/O protocol v4 frame codec (bytes in, events out).
* :mod:`lockgate.gateway.cql.classify` — CQL statement → ``(action, object)`` targets for policy.
  Its lexer (:mod:`.lexer`) is written from Cassandra's Lexer.g; :mod:`.redact` hides
  password literals in statement texts kept for audit.
* :mod:`lockgate.gateway.cql.roles` — optional dynamic least-privilege Cassandra roles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import CqlEngine

__all__ = ["CqlEngine"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing the codec alone stays light.
    if name == "CqlEngine":
        from .engine import CqlEngine

        return CqlEngine
    raise AttributeError(name)
