"""Materialized views and their base tables, as the cluster defines them.

Strategy: a view's rows are its base table's, and Cassandra authorises a SELECT from a view
on the base table alone. Lockgate's policy names objects, so a rule granting a view (say
``ks.*_by_*``) would otherwise hand out the rows of a base table the principal may not read.
So a read of a view is judged as a read of the view *and* of its base (both must be
allowed; both are named in the audit record).

:class:`ViewCatalog` keeps, per resource, ``"ks.view" -> "ks.base"`` read from the cluster's
``system_schema.views`` over a client's freshly authenticated upstream link, before that
client gets AUTH_SUCCESS, whenever the catalog is older than ``max_age`` seconds or a schema
change went through the gateway since. A view created after the last load is judged by its
own name only until the next login refreshes the catalog (at most ``max_age`` later, or at
once for views created through the gateway); creating one through the gateway needs read
on its base already. The per-statement cost is one dict lookup per read target, none when
the cluster has no views.

A refresh that was under way when the catalog was invalidated (the resource moved to another
cluster, or a schema change went through the gateway) stores nothing: what it read may be
the old cluster's views, or miss the new view. Each invalidation bumps the resource's
generation; a refresh stores its rows only if the generation it started under still holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lockgate.errors import UpstreamError, UpstreamUnavailable

from . import codec, upstream
from .classify import Target
from .roles import AdminConnection

#: Seconds a resource's catalog is trusted before the next login reloads it.
VIEW_CATALOG_MAX_AGE = 30.0
_QUERY = "SELECT keyspace_name, view_name, base_table_name FROM system_schema.views"


_NO_VIEWS: dict[str, str] = {}


class ViewCatalog:
    """Per resource: materialized view -> base table, as ``keyspace.table`` objects."""

    def __init__(
        self, max_age: float = VIEW_CATALOG_MAX_AGE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_age = max_age
        self._clock = clock
        self._bases: dict[str, dict[str, str]] = {}
        self._loaded: dict[str, float] = {}
        # Bumped by every invalidate: a refresh started under an older one stores nothing.
        self._generation: dict[str, int] = {}

    def bases(self, resource: str) -> dict[str, str]:
        """``{"ks.view": "ks.base"}`` of ``resource`` (empty when it has no views); the same
        object until the catalog is reloaded, so a judgement made on it can tell it stands."""
        return self._bases.get(resource, _NO_VIEWS)

    def stale(self, resource: str) -> bool:
        loaded = self._loaded.get(resource)
        return loaded is None or self._clock() - loaded > self._max_age

    def generation(self, resource: str) -> int:
        """How many times ``resource``'s catalog was invalidated; taken before the resource
        is looked up, it lets :meth:`refresh` tell a link opened to an older definition."""
        return self._generation.get(resource, 0)

    def invalidate(self, resource: str) -> None:
        """The schema changed: the next login reloads the catalog, and a reload already
        under way stores nothing."""
        self._loaded.pop(resource, None)
        self._generation[resource] = self._generation.get(resource, 0) + 1

    async def refresh(
        self, resource: str, link: upstream.UpstreamLink, *, generation: int | None = None
    ) -> None:
        """Reload from ``system_schema.views`` over ``link`` (authenticated, otherwise idle).

        Raises UpstreamUnavailable when the cluster does not answer with rows: a view that
        cannot be told from a table must not be judged as one. When the catalog was
        invalidated meanwhile (since ``generation``, by default since this call), what was
        read is dropped: the catalog stays stale and keeps its earlier rows.
        """
        started = self._clock()
        if generation is None:
            generation = self.generation(resource)
        try:
            answer = await AdminConnection(link).query(_QUERY)
        except (UpstreamError, OSError) as exc:
            raise UpstreamUnavailable(f"could not read system_schema.views: {exc}") from None
        if not isinstance(answer, codec.Rows):
            raise UpstreamUnavailable("system_schema.views did not answer with rows")
        bases: dict[str, str] = {}
        for row in answer.rows:
            ks, view, base = (codec.values.decode_varchar(c or b"") for c in row[:3])
            bases[f"{ks}.{view}"] = f"{ks}.{base}"
        if self.generation(resource) != generation:
            return  # read before a schema or cluster change: not the catalog any more
        self._bases[resource] = bases
        self._loaded[resource] = started


def with_view_bases(targets: list[Target], bases: dict[str, str]) -> list[Target]:
    """``targets`` plus a read of the base table of every view they read."""
    extra = [
        Target("read", base, t.statement_kind)
        for t in targets
        if t.action == "read" and (base := bases.get(t.object)) is not None
    ]
    return [*targets, *extra] if extra else targets
