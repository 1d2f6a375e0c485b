"""Azure Data Factory over ARM for tests (see :mod:`.app`)."""

from tests.fakes.adf.app import FakeAdf, start

__all__ = ["FakeAdf", "start"]
