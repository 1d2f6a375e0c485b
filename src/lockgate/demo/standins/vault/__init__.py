"""A HashiCorp Vault / OpenBao server for KV version 2 secrets, AppRole and JWT logins,
token TTLs and namespaces (see :mod:`.app`).

A stand-in for demos and tests, written from the public API docs: not the service.
"""

from lockgate.demo.standins.vault.app import AppRole, FakeVault, JwtRole, make_app, start

__all__ = ["AppRole", "FakeVault", "JwtRole", "make_app", "start"]
