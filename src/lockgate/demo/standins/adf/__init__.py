"""Azure Data Factory's ARM REST surface for pipeline runs (see :mod:`.app`).

A stand-in for demos and tests, written from the public API docs: not the service.
"""

from lockgate.demo.standins.adf.app import FakeAdf, start

__all__ = ["FakeAdf", "start"]
