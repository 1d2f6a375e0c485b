"""The control plane: the routes of the control listener.

One door, :func:`control_app`, binds every route to a running
:class:`lockgate.server.Gateway`: the token service (``/v1/token``, ``/v1/revoke``, JWKS,
discovery: :mod:`lockgate.identity.service`), ``/v1/catalog`` (:mod:`.catalog`),
``/v1/poll-token``, ``/v1/db-role``, ``/v1/cosmos-key``, the managed-identity endpoint, and
the operations routes ``/healthz``, ``/readyz`` (:mod:`lockgate.readiness`) and
``/metrics``. :func:`serve_control` accepts the listener's connections with the same
handshake timeout and cap as every other listener.
"""

from lockgate.control.app import control_app, serve_control
from lockgate.control.catalog import catalog_entries, connection_template

__all__ = ["catalog_entries", "connection_template", "control_app", "serve_control"]
