"""Where a name in a statement lands: the server's search rules over a :class:`NameScope`.

:class:`Resolver` places names the way the server does (implicit ``pg_catalog`` first
unless the path lists it, then the path; the first schema that holds the name; a session's
maybe-facts are taken and the search goes on; without a catalog every candidate is taken;
with several possible paths, the union). :func:`qualified_name` reads a parser name list;
:func:`present` refuses a tree missing what the grammar always fills.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from pglast import ast

from .classified import Unplaceable, qualified_object
from .scope import ANY_SCHEMA, MAYBE, NO, YES, NameScope

__all__ = ["Resolver", "present", "qualified_name"]

T = TypeVar("T")
# Schemas nobody else creates relations in behind the session's back: pg_catalog (only with
# allow_system_table_mods) and the session's own temporary schema (tracked by the scope).
_UNSHADOWED = frozenset({"pg_catalog", "pg_temp"})


def present(value: T | None) -> T:
    """``value``, which the grammar always fills; refused if a tree lacks it anyway."""
    if value is None:
        raise Unplaceable("parse_error", "incomplete statement")
    return value


def _strings(names: Iterable[object]) -> tuple[str, ...]:
    return tuple(present(n.sval) for n in names if isinstance(n, ast.String))


def qualified_name(names: Iterable[object]) -> tuple[str | None, str]:
    """``(schema, name)`` from a parser name list; a catalog prefix is refused."""
    parts = _strings(names)
    if len(parts) == 1:
        return None, parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    if len(parts) == 3:
        raise Unplaceable("cross_database_reference", f"name {'.'.join(parts)} names a database")
    raise Unplaceable("parse_error", "improper qualified name")


def _with_pg_catalog(path: tuple[str, ...]) -> tuple[str, ...]:
    if "pg_catalog" in path:
        return path
    if path[:1] == ("pg_temp",):
        return ("pg_temp", "pg_catalog", *path[1:])
    return ("pg_catalog", *path)


class Resolver:
    """Places schema-less names through a :class:`NameScope`."""

    def __init__(self, scope: NameScope) -> None:
        self.catalog = scope.catalog
        paths = scope.search_paths or ((),)
        # The server searches pg_catalog first unless the path names it (only the session's
        # temporary schema, when the path does not name it either, comes before it).
        self.paths = tuple(_with_pg_catalog(p) for p in paths)
        self.explicit_paths = paths
        self.catalog_sensitive = False  # see Classified.catalog_sensitive

    def relation(self, schema: str | None, relname: str, *, missing_ok: bool = False) -> list[str]:
        """Objects (``schema.relname``) an existing relation reference may be."""
        if schema is not None:
            return [qualified_object(schema, relname)]
        catalog = self.catalog
        found: list[str] = []
        # Whether some hit is a fact, not only "any name may be in a schema the session
        # dropped or renamed": with none, the name is unknown (maybe created since the
        # catalog read, anywhere on the path) and is refused like any unknown name.
        factual = catalog is None
        for path in self.paths:
            if catalog is None:
                found.extend(qualified_object(s, relname) for s in self._known(path))
                continue
            passed_over = False  # an existing schema without the name, before the hit
            for s in path:
                if s == ANY_SCHEMA:  # the path is unknown here: every holder of the name
                    holders = catalog.holders(relname)
                    found.extend(qualified_object(h, relname) for h in holders)
                    factual |= any(catalog.known(h, relname) for h in holders)
                    continue
                state = catalog.relation(s, relname)
                if state != NO:
                    found.append(qualified_object(s, relname))
                    factual |= catalog.known(s, relname)
                elif s not in _UNSHADOWED and catalog.schema(s) != NO:
                    passed_over = True
                if state == YES:
                    self.catalog_sensitive |= passed_over
                    break
        if not factual:
            found = []
        if not found:
            if missing_ok:
                # DROP ... IF EXISTS of a name nowhere: any schema of the path may hold it
                # by the time the server looks.
                schemas = [s for p in self.explicit_paths for s in self._known(p)]
                return [qualified_object(s, relname) for s in schemas or ["pg_catalog"]]
            raise Unplaceable(
                "unresolved_relation",
                f'relation "{relname}" is not in any schema of the search path',
            )
        return list(dict.fromkeys(found))

    def creation_schemas(self, schema: str | None) -> list[str]:
        """Schemas a CREATE of an unqualified name may put it in."""
        if schema is not None:
            return [schema]
        catalog = self.catalog
        found: list[str] = []
        for path in self.explicit_paths:
            for s in self._known(path):
                state = YES if catalog is None else catalog.schema(s)
                if state == NO:
                    continue
                found.append(s)
                if state != MAYBE:
                    break
        if not found:
            raise Unplaceable("empty_search_path", "no schema has been selected to create in")
        return list(dict.fromkeys(found))

    def function_schemas(self, name: str | None = None) -> list[str]:
        """Schemas an unqualified function name may resolve to (never ``pg_temp``).

        With ``name`` and a catalog that lists functions: those of the path that hold a
        function of that name (all of them when none does: it may have been created since).
        """
        catalog = self.catalog
        holders = catalog.function_schemas(name) if catalog and name else frozenset()
        schemas: list[str] = []
        for path in self.paths:
            for s in path:
                if s == ANY_SCHEMA and catalog is not None:
                    schemas.extend(sorted(holders) if holders else catalog.schema_names())
                elif s != "pg_temp":
                    schemas.extend(self._known((s,)))
        ordered = list(dict.fromkeys(schemas))
        if holders:
            return [s for s in ordered if s in holders] or ordered
        return ordered

    @staticmethod
    def _known(path: tuple[str, ...]) -> tuple[str, ...]:
        """``path`` itself, refused when it holds the unknown-path marker (no catalog)."""
        if ANY_SCHEMA in path:
            raise Unplaceable(
                "ambiguous_search_path",
                "an earlier statement may have changed the search path where it cannot be seen",
            )
        return path
