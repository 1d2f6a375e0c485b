"""ViewCatalog against invalidations that land while a refresh is under way.

A refresh reads ``system_schema.views`` over one login's link; if the catalog is invalidated
meanwhile (the resource moved to another cluster, or a schema change went through the
gateway), what that link read is not the catalog any more and must not be stored as fresh
(it would overwrite what a login of the moved resource read from the new cluster).
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from lockgate.gateway.cql import codec, upstream, views
from lockgate.gateway.cql.views import ViewCatalog

OLD = {"ks.secrets_by_v": "ks.old_base"}
NEW = {"ks.secrets_by_v": "ks.secrets"}


def _rows(catalog: dict[str, str]) -> codec.Rows:
    enc = codec.values.encode_varchar
    return codec.Rows(
        rows=[
            [enc(view.split(".")[0]), enc(view.split(".")[1]), enc(base.split(".")[1])]
            for view, base in catalog.items()
        ]
    )


class _Link:
    """Stands for one login's upstream link: its query answers ``catalog`` once released."""

    def __init__(self, catalog: dict[str, str]) -> None:
        self.catalog = catalog
        self.release = asyncio.Event()


class _AdminConnection:
    def __init__(self, link: _Link) -> None:
        self._link = link

    async def query(self, _text: str) -> codec.Rows:
        await self._link.release.wait()
        return _rows(self._link.catalog)


@pytest.fixture(autouse=True)
def _fake_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "AdminConnection", _AdminConnection)


def _refresh(catalog: ViewCatalog, link: _Link, **kw: int) -> asyncio.Task[None]:
    return asyncio.create_task(catalog.refresh("r", cast(upstream.UpstreamLink, link), **kw))


async def test_a_refresh_straddling_an_invalidate_stores_nothing() -> None:
    catalog = ViewCatalog()
    old_link, new_link = _Link(OLD), _Link(NEW)
    held = _refresh(catalog, old_link)  # a login on the old cluster, still reading
    await asyncio.sleep(0)
    catalog.invalidate("r")  # the resource moves
    fresh = _refresh(catalog, new_link)  # a login of the moved resource
    new_link.release.set()
    await fresh
    assert catalog.bases("r") == NEW and not catalog.stale("r")
    old_link.release.set()
    await held  # lands last: the old cluster's views must not replace the new ones
    assert catalog.bases("r") == NEW and not catalog.stale("r")


async def test_a_refresh_alone_straddling_an_invalidate_leaves_the_catalog_stale() -> None:
    catalog = ViewCatalog()
    link = _Link(OLD)
    held = _refresh(catalog, link)
    await asyncio.sleep(0)
    catalog.invalidate("r")  # e.g. a view created through the gateway meanwhile
    link.release.set()
    await held
    assert catalog.bases("r") == {} and catalog.stale("r")  # the next login reads again


async def test_a_link_opened_before_an_invalidate_stores_nothing() -> None:
    """The generation taken before the resource was looked up covers a link opened to the
    old definition whose refresh starts only after the move."""
    catalog = ViewCatalog()
    before = catalog.generation("r")
    catalog.invalidate("r")
    link = _Link(OLD)
    link.release.set()
    await _refresh(catalog, link, generation=before)
    assert catalog.bases("r") == {} and catalog.stale("r")
    await _refresh(catalog, link)  # no change since it started: stored
    assert catalog.bases("r") == OLD and not catalog.stale("r")
