"""An Azure Key Vault data plane for secrets (see :mod:`.app`): Bearer tokens from the test
Entra ID, versions, the 401 challenge, RBAC-like readers.

A stand-in for demos and tests, written from the public API docs: not the service.
"""

from lockgate.demo.standins.key_vault.app import AUDIENCE, FakeKeyVault, make_app, start

__all__ = ["AUDIENCE", "FakeKeyVault", "make_app", "start"]
