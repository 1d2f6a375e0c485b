"""The control plane: every route of the control listener, over one flow.

A deployment authenticates (client secret, private-key JWT or OIDC token exchange), its
delegation and the mint policy are checked, then something is minted: a token
(``/v1/token``), a triggerer's poll token (``/v1/poll-token``), a dynamic database role
(``/v1/db-role``), a Cosmos DB task key (``/v1/cosmos-key``). Besides: ``/v1/revoke``,
``/v1/catalog``, the managed-identity endpoint (``/msi/token``), JWKS and OIDC discovery,
``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` (the reference of all of them,
rendered to ``docs/control-api.md``).

- :mod:`.app`              ControlPlane: builds the token service, binds the routes, serves
- :mod:`.context`          ControlContext: the routes' typed collaborators, authenticate/refuse
- :mod:`.mint`             MintPolicy: kill switch, policy mint check, TTL caps
- :mod:`.events`           TokenAudit: one audit record per control-plane decision
- :mod:`.offers`           what each HTTP profile offers the control plane (one table)
- :mod:`.catalog`          ``/v1/catalog`` and the connection templates
- :mod:`.poll_token`       ``/v1/poll-token``
- :mod:`.db_role`          ``/v1/db-role``
- :mod:`.cosmos_key`       ``/v1/cosmos-key``
- :mod:`.managed_identity` ``/msi/token``
- :mod:`.openapi`          the OpenAPI 3.1 document of every route (:mod:`.openapi_schemas`
  its schemas, :mod:`.openapi_markdown` the docs page); a route added here goes there too

The identity logic (proofs, token issue and verify, keys, revocation) stays in
:mod:`lockgate.identity`; the dynamic roles themselves (CQL and PostgreSQL) in
:mod:`lockgate.gateway.dynamic_roles`.
"""

from lockgate.control.app import ControlPlane, control_app, serve_control
from lockgate.control.catalog import catalog_entries, connection_template
from lockgate.control.context import ControlContext
from lockgate.control.events import TokenAudit
from lockgate.control.mint import MintPolicy

__all__ = [
    "ControlContext",
    "ControlPlane",
    "MintPolicy",
    "TokenAudit",
    "catalog_entries",
    "connection_template",
    "control_app",
    "serve_control",
]
