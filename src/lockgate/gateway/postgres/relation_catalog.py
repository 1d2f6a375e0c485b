"""The upstream's relation catalog, as classification needs it.

:class:`RelationCatalog` knows which schemas hold which relation names (``pg_class``), which
schemas exist, which schemas hold functions of each name, what each view reads and each
inheritance parent's children, which user functions a cast to each type may run — all
from one simple query (:attr:`RelationCatalog.QUERY`) the engine runs at login and shares
between sessions for a few seconds. A session's own DDL is layered on top as *maybe*
facts (:meth:`RelationCatalog.with_session_changes`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import ClassVar

from .functions import split_identifier

__all__ = ["ANY_SCHEMA", "MAYBE", "NO", "YES", "RelationCatalog"]

_generations = itertools.count(1)

YES, MAYBE, NO = "yes", "maybe", "no"
# In a path: "the session may have moved here, out of sight" (a DO block, a procedure or a
# function that may call set_config): resolution then takes every schema holding the name.
ANY_SCHEMA = "*"


class RelationCatalog:
    """Relation names per schema, from the upstream, plus a session's maybe-facts."""

    # Every relation (tables, partitioned tables, views, materialized views, foreign tables,
    # sequences, indexes, composite types: they share one name space per schema) and every
    # schema (relname NULL). Other sessions' temporary and TOAST schemas are left out.
    # More facts come as rows whose first column starts with a marker longer than any schema
    # name can be (63 bytes): the schemas holding functions of each name, the relations each
    # view reads and the functions it calls, the children of each inheritance parent, and
    # what a write to a table sets off: its triggers' functions, its rules' relations and
    # functions, the user functions of its column defaults, CHECK constraints and index
    # expressions, and the tables whose foreign keys reference it with a cascading action
    # (a write of any kind is taken to set those off: a safe superset of DELETE / UPDATE);
    # and what a cast runs: each domain's CHECK functions (a write into a column of that
    # domain runs them too) and each user cast function, by the type cast to.
    FUNCTIONS_MARK: ClassVar[str] = "lockgate:functions:" + "-" * 48
    VIEW_MARK: ClassVar[str] = "lockgate:view-reads:" + "-" * 48
    CHILD_MARK: ClassVar[str] = "lockgate:child-of:" + "-" * 48
    VIEW_CALLS_MARK: ClassVar[str] = "lockgate:view-calls:" + "-" * 48
    WRITE_CALLS_MARK: ClassVar[str] = "lockgate:write-calls:" + "-" * 48
    WRITE_TOUCHES_MARK: ClassVar[str] = "lockgate:write-touches:" + "-" * 48
    WRITE_CASCADES_MARK: ClassVar[str] = "lockgate:write-cascades:" + "-" * 48
    DOMAIN_CHECKS_MARK: ClassVar[str] = "lockgate:domain-checks:" + "-" * 48
    CAST_CALLS_MARK: ClassVar[str] = "lockgate:cast-calls:" + "-" * 48
    # Each domain with the user functions its CHECK constraints call, its base domains'
    # included (a value cast to a domain passes every check down the chain).
    _DOMAIN_CHECKS: ClassVar[str] = (
        "(WITH RECURSIVE chain(dom, cur) AS (SELECT oid, oid FROM pg_catalog.pg_type"
        " WHERE typtype = 'd' UNION ALL SELECT c.dom, b.oid FROM chain c"
        " JOIN pg_catalog.pg_type t ON t.oid = c.cur"
        " JOIN pg_catalog.pg_type b ON b.oid = t.typbasetype WHERE b.typtype = 'd')"
        " SELECT DISTINCT c.dom, d.refobjid AS fid FROM chain c"
        " JOIN pg_catalog.pg_constraint co ON co.contypid = c.cur AND co.contype = 'c'"
        " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::regclass"
        " AND d.objid = co.oid AND d.refclassid = 'pg_catalog.pg_proc'::regclass)"
    )
    QUERY: ClassVar[str] = (
        # text, not name: a name column would cut the marked rows at 63 bytes
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c"  # noqa: S608
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"
        " UNION ALL SELECT nspname, NULL FROM pg_catalog.pg_namespace"
        " WHERE nspname !~ '^pg_(toast|temp_|toast_temp_)'"
        f" UNION ALL SELECT DISTINCT '{FUNCTIONS_MARK}' || n.nspname, p.proname"
        " FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"
        f" UNION ALL SELECT DISTINCT '{VIEW_MARK}' || quote_ident(vn.nspname) || '.'"
        " || quote_ident(v.relname), quote_ident(bn.nspname) || '.' || quote_ident(b.relname)"
        " FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class v ON v.oid = r.ev_class"
        " JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace"
        " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass"
        " AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass"
        " AND d.refobjid <> v.oid"
        " JOIN pg_catalog.pg_class b ON b.oid = d.refobjid"
        " JOIN pg_catalog.pg_namespace bn ON bn.oid = b.relnamespace"
        " WHERE v.relkind IN ('v', 'm')"
        " AND vn.nspname NOT IN ('pg_catalog', 'information_schema')"
        f" UNION ALL SELECT '{CHILD_MARK}' || quote_ident(pn.nspname) || '.'"
        " || quote_ident(p.relname), quote_ident(cn.nspname) || '.' || quote_ident(c.relname)"
        " FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhparent"
        " JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace"
        " JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p', 'f')"
        # functions a view's rule calls / a table's rules touch and call
        " UNION ALL SELECT DISTINCT CASE WHEN v.relkind IN ('v', 'm')"
        f" THEN '{VIEW_CALLS_MARK}' ELSE CASE WHEN d.refclassid = 'pg_catalog.pg_proc'::regclass"
        f" THEN '{WRITE_CALLS_MARK}' ELSE '{WRITE_TOUCHES_MARK}' END END"
        " || quote_ident(vn.nspname) || '.' || quote_ident(v.relname),"
        " CASE WHEN d.refclassid = 'pg_catalog.pg_proc'::regclass"
        " THEN (SELECT quote_ident(fn.nspname) || '.' || quote_ident(f.proname)"
        " FROM pg_catalog.pg_proc f JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace"
        " WHERE f.oid = d.refobjid)"
        " ELSE (SELECT quote_ident(bn.nspname) || '.' || quote_ident(b.relname)"
        " FROM pg_catalog.pg_class b JOIN pg_catalog.pg_namespace bn ON bn.oid = b.relnamespace"
        " WHERE b.oid = d.refobjid) END"
        " FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class v ON v.oid = r.ev_class"
        " JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace"
        " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass"
        " AND d.objid = r.oid AND d.refobjid <> v.oid AND (d.refclassid ="
        " 'pg_catalog.pg_proc'::regclass OR (d.refclassid = 'pg_catalog.pg_class'::regclass"
        " AND v.relkind NOT IN ('v', 'm')))"
        " WHERE vn.nspname NOT IN ('pg_catalog', 'information_schema')"
        # functions a write sets off through triggers
        f" UNION ALL SELECT DISTINCT '{WRITE_CALLS_MARK}' || quote_ident(cn.nspname) || '.'"
        " || quote_ident(c.relname), quote_ident(fn.nspname) || '.' || quote_ident(f.proname)"
        " FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace"
        " JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid"
        " JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace"
        " WHERE NOT t.tgisinternal AND cn.nspname NOT IN ('pg_catalog', 'information_schema')"
        # user functions a write sets off through column defaults (and generated columns),
        # CHECK constraints and index expressions / predicates (built-in functions are
        # pinned: pg_depend does not list them)
        f" UNION ALL SELECT DISTINCT '{WRITE_CALLS_MARK}' || quote_ident(cn.nspname) || '.'"
        " || quote_ident(c.relname), quote_ident(fn.nspname) || '.' || quote_ident(f.proname)"
        " FROM (SELECT ad.adrelid AS relid, d.refobjid AS fid FROM pg_catalog.pg_attrdef ad"
        " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass"
        " AND d.objid = ad.oid AND d.refclassid = 'pg_catalog.pg_proc'::regclass"
        " UNION ALL SELECT co.conrelid, d.refobjid FROM pg_catalog.pg_constraint co"
        " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::regclass"
        " AND d.objid = co.oid AND d.refclassid = 'pg_catalog.pg_proc'::regclass"
        " WHERE co.contype = 'c' AND co.conrelid <> 0"
        " UNION ALL SELECT i.indrelid, d.refobjid FROM pg_catalog.pg_index i"
        " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass"
        " AND d.objid = i.indexrelid AND d.refclassid = 'pg_catalog.pg_proc'::regclass) x"
        " JOIN pg_catalog.pg_class c ON c.oid = x.relid"
        " JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace"
        " JOIN pg_catalog.pg_proc f ON f.oid = x.fid"
        " JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace"
        " WHERE cn.nspname NOT IN ('pg_catalog', 'information_schema')"
        # tables a write changes through foreign keys with a cascading action
        # (CASCADE, SET NULL, SET DEFAULT) on the written (referenced) table
        f" UNION ALL SELECT DISTINCT '{WRITE_CASCADES_MARK}' || quote_ident(pn.nspname) || '.'"
        " || quote_ident(p.relname), quote_ident(cn.nspname) || '.' || quote_ident(c.relname)"
        " FROM pg_catalog.pg_constraint co JOIN pg_catalog.pg_class p ON p.oid = co.confrelid"
        " JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace"
        " JOIN pg_catalog.pg_class c ON c.oid = co.conrelid"
        " JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace"
        " WHERE co.contype = 'f' AND (co.confdeltype IN ('c', 'n', 'd')"
        " OR co.confupdtype IN ('c', 'n', 'd'))"
        " AND pn.nspname NOT IN ('pg_catalog', 'information_schema')"
        # what a cast to a domain checks, and user cast functions by their target type
        f" UNION ALL SELECT DISTINCT '{DOMAIN_CHECKS_MARK}' || quote_ident(tn.nspname) || '.'"
        " || quote_ident(t.typname), quote_ident(fn.nspname) || '.' || quote_ident(f.proname)"
        f" FROM {_DOMAIN_CHECKS} x JOIN pg_catalog.pg_type t ON t.oid = x.dom"
        " JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace"
        " JOIN pg_catalog.pg_proc f ON f.oid = x.fid"
        " JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace"
        f" UNION ALL SELECT DISTINCT '{CAST_CALLS_MARK}' || quote_ident(tn.nspname) || '.'"
        " || quote_ident(t.typname), quote_ident(fn.nspname) || '.' || quote_ident(f.proname)"
        " FROM pg_catalog.pg_cast k JOIN pg_catalog.pg_type t ON t.oid = k.casttarget"
        " JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace"
        " JOIN pg_catalog.pg_proc f ON f.oid = k.castfunc"
        " JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace"
        " WHERE fn.nspname <> 'pg_catalog'"
        # a write into a column typed with a domain runs the domain's checks
        f" UNION ALL SELECT DISTINCT '{WRITE_CALLS_MARK}' || quote_ident(cn.nspname) || '.'"
        " || quote_ident(c.relname), quote_ident(fn.nspname) || '.' || quote_ident(f.proname)"
        # (a dropped column's type is 0: it never matches a domain)
        f" FROM {_DOMAIN_CHECKS} x JOIN pg_catalog.pg_attribute a ON a.atttypid = x.dom"
        " AND a.attnum > 0"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace"
        " JOIN pg_catalog.pg_proc f ON f.oid = x.fid"
        " JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace"
        " WHERE cn.nspname NOT IN ('pg_catalog', 'information_schema')"
    )

    def __init__(self, rows: Iterable[tuple[str, str | None]], schemas: Iterable[str] = ()) -> None:
        by_name: dict[str, set[str]] = {}
        functions: dict[str, set[str]] = {}
        reads: dict[tuple[str, str], set[tuple[str, str]]] = {}
        children: dict[tuple[str, str], set[tuple[str, str]]] = {}
        view_calls: dict[tuple[str, str], set[tuple[str, str]]] = {}
        write_calls: dict[tuple[str, str], set[tuple[str, str]]] = {}
        write_touches: dict[tuple[str, str], set[tuple[str, str]]] = {}
        write_cascades: dict[tuple[str, str], set[tuple[str, str]]] = {}
        domain_checks: dict[tuple[str, str], set[tuple[str, str]]] = {}
        cast_calls: dict[tuple[str, str], set[tuple[str, str]]] = {}
        known_schemas = set(schemas)
        for schema, name in rows:
            if schema.startswith(self.FUNCTIONS_MARK):
                if name is not None:
                    functions.setdefault(name, set()).add(schema[len(self.FUNCTIONS_MARK) :])
                continue
            for mark, facts in (
                (self.VIEW_MARK, reads),
                (self.CHILD_MARK, children),
                (self.VIEW_CALLS_MARK, view_calls),
                (self.WRITE_CALLS_MARK, write_calls),
                (self.WRITE_TOUCHES_MARK, write_touches),
                (self.WRITE_CASCADES_MARK, write_cascades),
                (self.DOMAIN_CHECKS_MARK, domain_checks),
                (self.CAST_CALLS_MARK, cast_calls),
            ):
                if schema.startswith(mark):
                    holder, held = _relation(schema[len(mark) :]), _relation(name)
                    if holder is not None and held is not None:
                        facts.setdefault(holder, set()).add(held)
                    break
            else:
                known_schemas.add(schema)
                if name is not None:
                    by_name.setdefault(name, set()).add(schema)
                continue
        self._by_name = {name: frozenset(s) for name, s in by_name.items()}
        self._functions = {name: frozenset(s) for name, s in functions.items()}
        self._reads = {holder: frozenset(held) for holder, held in reads.items()}
        self._children = {parent: frozenset(c) for parent, c in children.items()}
        self._view_calls = {v: frozenset(f) for v, f in view_calls.items()}
        self._write_calls = {t: frozenset(f) for t, f in write_calls.items()}
        self._write_touches = {t: frozenset(r) for t, r in write_touches.items()}
        self._write_cascades = {t: frozenset(r) for t, r in write_cascades.items()}
        self._type_calls = _by_type_name(domain_checks)
        self._cast_calls = _by_type_name(cast_calls)
        self._session_dependants: dict[tuple[str, str], frozenset[tuple[bool, str, str]]] = {}
        self.knows_functions = bool(functions)
        self._schemas = frozenset(known_schemas)
        self._maybe_present: frozenset[tuple[str, str]] = frozenset()
        self._maybe_absent: frozenset[tuple[str, str]] = frozenset()
        self._maybe_schemas: frozenset[str] = frozenset()
        # schemas dropped or renamed by the session: any name in them may or may not be there
        self._unknown_schemas: frozenset[str] = frozenset()
        self.generation = next(_generations)

    def reads_through(
        self, schema: str, name: str, *, children: bool = True
    ) -> list[tuple[str, str]]:
        """Relations a read or write of ``schema.name`` reaches too, transitively: what a
        view (or materialized view) reads, and an inheritance parent's (or partitioned
        table's) children unless ``children`` is False (``ONLY``). Of a view's relations
        the children count too (whether the view says ONLY is not known here)."""
        start = (schema, name)
        reached: dict[tuple[str, str], None] = {}
        pending = list(self._reads.get(start, ()))
        if children:
            pending += self._children.get(start, ())
        while pending:
            relation = pending.pop()
            if relation in reached or relation == start:
                continue
            reached[relation] = None
            pending += self._reads.get(relation, ())
            pending += self._children.get(relation, ())
        return list(reached)

    def sets_off(
        self,
        schema: str,
        name: str,
        *,
        writing: bool,
        children: bool = True,
        cascades: bool = False,
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(functions, relations) a read or write of ``schema.name`` runs besides its own
        relations: the functions of the views it reaches, and for a write the functions of
        triggers, rules, column defaults and CHECK constraints and the relations rules write
        (with ``cascades``, also the tables foreign keys with a cascading action change),
        on it and what it reaches."""
        reached = [(schema, name), *self.reads_through(schema, name, children=children)]
        calls: dict[tuple[str, str], None] = {}
        touches: dict[tuple[str, str], None] = {}
        for relation in reached:
            calls.update(dict.fromkeys(self._view_calls.get(relation, ())))
            if writing:
                calls.update(dict.fromkeys(self._write_calls.get(relation, ())))
                touches.update(dict.fromkeys(self._write_touches.get(relation, ())))
                if cascades:
                    touches.update(dict.fromkeys(self._write_cascades.get(relation, ())))
        return list(calls), list(touches)

    def cast_calls(
        self, schema: str | None, type_name: str, *, converting: bool
    ) -> list[tuple[str, str]]:
        """User functions a cast to type ``schema.type_name`` may run: the CHECK functions
        of a domain of that name (and of its base domains) and, when ``converting`` a value
        of another type, the user cast functions into it. Without ``schema``, the types of
        that name in every schema (which one the path picks is not known here)."""
        found = list(self._type_calls.get(type_name, ()))
        if converting:
            found += self._cast_calls.get(type_name, ())
        return list(dict.fromkeys(f for s, f in found if schema in (None, s)))

    def session_dependants(self, schema: str, name: str, *, writing: bool) -> list[tuple[str, str]]:
        """``(action, object)`` the session's own views and triggers on ``schema.name`` add
        to a read (or, ``writing``, a write) of it."""
        return [
            (action, obj)
            for writing_only, action, obj in sorted(
                self._session_dependants.get((schema, name), ())
            )
            if writing or not writing_only
        ]

    def schemas_of(self, relname: str) -> frozenset[str]:
        """Schemas that hold ``relname`` for certain (the upstream's catalog)."""
        return self._by_name.get(relname, frozenset())

    def relation(self, schema: str, relname: str) -> str:
        """``"yes"``, ``"maybe"`` (the session's own DDL may have changed it) or ``"no"``."""
        if (
            (schema, relname) in self._maybe_absent
            or (schema, relname) in self._maybe_present
            or schema in self._unknown_schemas
        ):
            return MAYBE
        return YES if schema in self.schemas_of(relname) else NO

    def function_schemas(self, name: str) -> frozenset[str]:
        """Schemas holding a function called ``name`` (empty when functions are unknown)."""
        return self._functions.get(name, frozenset())

    def known(self, schema: str, relname: str) -> bool:
        """Whether ``schema.relname`` is a fact: the upstream's catalog held it, or the
        session itself created or dropped it (not merely a name in a schema the session
        dropped or renamed, where any name "may" be)."""
        return (
            schema in self.schemas_of(relname)
            or (schema, relname) in self._maybe_present
            or (schema, relname) in self._maybe_absent
        )

    def holders(self, relname: str) -> list[str]:
        """Every schema that holds ``relname`` or may (the session's own DDL)."""
        maybe = {s for s, n in self._maybe_present if n == relname} | self._unknown_schemas
        return sorted(self.schemas_of(relname)) + sorted(maybe)

    def schema_names(self) -> list[str]:
        """Every schema, known or maybe created by the session."""
        return sorted(self._schemas | self._maybe_schemas | self._unknown_schemas)

    def schema(self, name: str) -> str:
        """Whether schema ``name`` exists: ``"yes"``, ``"maybe"`` or ``"no"``."""
        if name in self._maybe_schemas or name in self._unknown_schemas:
            return MAYBE
        return YES if name in self._schemas else NO

    def with_session_changes(
        self,
        present: Iterable[tuple[str, str]],
        absent: Iterable[tuple[str, str]],
        schemas: Iterable[str],
        unknown_schemas: Iterable[str] = (),
        session_dependants: Iterable[tuple[str, str, bool, str, str]] = (),
    ) -> RelationCatalog:
        """This catalog with a session's maybe-facts on top (a new generation).

        ``session_dependants``: ``(schema, name, on writes only, action, object)`` — what
        the session's own views and triggers (temporary ones above all: the catalog, read
        on another connection, never sees them) set off when ``schema.name`` is used."""
        layered = RelationCatalog.__new__(RelationCatalog)
        layered._by_name = self._by_name
        layered._functions = self._functions
        layered._reads = self._reads
        layered._children = self._children
        layered._view_calls = self._view_calls
        layered._write_calls = self._write_calls
        layered._write_touches = self._write_touches
        layered._write_cascades = self._write_cascades
        layered._type_calls = self._type_calls
        layered._cast_calls = self._cast_calls
        dependants = {k: set(v) for k, v in self._session_dependants.items()}
        for schema, name, writing_only, action, obj in session_dependants:
            dependants.setdefault((schema, name), set()).add((writing_only, action, obj))
        layered._session_dependants = {k: frozenset(v) for k, v in dependants.items()}
        layered.knows_functions = self.knows_functions
        layered._schemas = self._schemas
        layered._maybe_present = self._maybe_present | frozenset(present)
        layered._maybe_absent = self._maybe_absent | frozenset(absent)
        layered._maybe_schemas = self._maybe_schemas | frozenset(schemas)
        layered._unknown_schemas = self._unknown_schemas | frozenset(unknown_schemas)
        layered.generation = next(_generations)
        return layered


def _by_type_name(
    facts: dict[tuple[str, str], set[tuple[str, str]]],
) -> dict[str, frozenset[tuple[str, tuple[str, str]]]]:
    """``{type name: {(type schema, function)}}`` of ``{(type schema, type name): functions}``."""
    by_name: dict[str, set[tuple[str, tuple[str, str]]]] = {}
    for (schema, name), functions in facts.items():
        by_name.setdefault(name, set()).update((schema, f) for f in functions)
    return {name: frozenset(held) for name, held in by_name.items()}


def _relation(text: str | None) -> tuple[str, str] | None:
    """``(schema, name)`` of ``quote_ident(schema) || '.' || quote_ident(name)``."""
    parts = split_identifier(text) if text else None
    return (parts[0], parts[1]) if parts is not None and len(parts) == 2 else None
