"""The ``kind: http`` engine: an identity-aware reverse proxy for REST upstreams.

``HttpEngine(resources, shared)`` (:mod:`.engine`, a :class:`lockgate.gateway.engine.Engine`)
serves ``/<resource>/<path>`` on the ``http`` listener, each resource with ``listen`` at the
root of its own port, and intercepted hosts through the forward proxy
(:mod:`.forward_proxy`): strict framing (:mod:`.codec`, :mod:`.framing`), path
normalisation (:mod:`.normalize`), classification (:mod:`.classify`), policy, then one
exchange with the upstream through a keep-alive pool (:mod:`.upstream`) with retries
(:mod:`.retry`). Profiles (:mod:`.profiles`) plug into that exchange.
"""

from lockgate.gateway.http.engine import HttpEngine

__all__ = ["HttpEngine"]
