"""A Microsoft Entra ID-compatible token endpoint (see :mod:`.app`): client secrets,
certificates and workload identity federation (:mod:`.federation`), sign-in of people with
the authorization code flow, PKCE and OpenID Connect (:mod:`.authcode`), and the check a
resource server makes of the tokens it issues (:mod:`.resource_trust`).

A stand-in for demos and tests, written from the public API docs: not the service.
"""

from lockgate.demo.standins.entra.app import FakeEntra, TokenRequest, start
from lockgate.demo.standins.entra.directory import RegisteredApp, TestUser
from lockgate.demo.standins.entra.federation import FederatedIdentityCredential
from lockgate.demo.standins.entra.resource_trust import EntraTrust, InvalidEntraToken

__all__ = [
    "EntraTrust",
    "FakeEntra",
    "FederatedIdentityCredential",
    "InvalidEntraToken",
    "RegisteredApp",
    "TestUser",
    "TokenRequest",
    "start",
]
