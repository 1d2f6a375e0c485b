"""The ``kind: http`` engine: an identity-aware reverse proxy for REST upstreams.

``HttpEngine(resources, verifier, policy, broker, audit, sign_assertion)`` serves
``/<resource>/<path>``: strict framing (:mod:`.framing`), path normalisation
(:mod:`.normalize`), classification (:mod:`.classify`), policy, then forwarding through a
keep-alive pool (:mod:`.upstream`) with retries (:mod:`.retry`).
"""

from lockgate.gateway.http.engine import HttpEngine

__all__ = ["HttpEngine"]
