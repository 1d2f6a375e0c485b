"""A Microsoft Entra ID-compatible token endpoint for tests (see :mod:`.app`)."""

from tests.fakes.entra.app import FakeEntra, start

__all__ = ["FakeEntra", "start"]
