"""Fixtures shared across test packages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lockgate.demo.stack import LocalStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A real local stack (demo upstream + gateway over HTTPS) on free 127.0.0.1 ports."""
    with LocalStack(tmp_path_factory.mktemp("lockgate")) as s:
        yield s
