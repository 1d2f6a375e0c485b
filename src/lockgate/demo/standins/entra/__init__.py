"""A Microsoft Entra ID-compatible token endpoint (see :mod:`.app`).

A stand-in for demos and tests, written from the public API docs: not the service.
"""

from lockgate.demo.standins.entra.app import FakeEntra, start

__all__ = ["FakeEntra", "start"]
