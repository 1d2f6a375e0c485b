"""Name scope of a PostgreSQL session: what unqualified names resolve through.

* :class:`RelationCatalog` (:mod:`.relation_catalog`, re-exported here) — the upstream's
  relations, functions, view reads and children. A session's own DDL is layered on top as
  *maybe* facts: a relation it created (or a schema) may exist, one it dropped or renamed
  may be gone — resolution treats a maybe as "take it and look further", so a rolled-back
  CREATE or DROP can only widen what is checked, never narrow it.
* :class:`NameScope` — what :func:`lockgate.gateway.postgres.classify.classify` reads.
* :class:`SessionScope` — one per client session: follows ``search_path`` the way the server
  does (SET takes effect when its statement completes; SET LOCAL ends with the transaction; a
  rolled-back transaction or savepoint takes its SETs back; an error ends an implicit
  transaction as a rollback), temporary objects, SQL-level PREPARE names and cursors.
* :class:`TextScope` — what the later statements of one text see.

Paths handed out are expanded: ``$user`` is the upstream login user, ``pg_temp`` is first
once the session may have temporary relations (unless the path lists it). The implicit
``pg_catalog`` is *not* added here: the classifier puts it first unless the path lists it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Protocol

from .classified import Effect, Statement, Unplaceable
from .relation_catalog import ANY_SCHEMA, MAYBE, NO, YES, RelationCatalog

__all__ = [
    "ANY_SCHEMA",
    "MAYBE",
    "NO",
    "YES",
    "NameScope",
    "RelationCatalog",
    "SessionScope",
    "TextScope",
    "cursors_of",
]


class NameScope(Protocol):
    """What classification of one text depends on besides the text."""

    @property
    def search_paths(self) -> tuple[tuple[str, ...], ...]: ...

    @property
    def catalog(self) -> RelationCatalog | None: ...

    @property
    def prepared(self) -> Mapping[str, str]: ...


Path = tuple[str, ...]


class SessionScope:
    """One client session's name scope, moved along by the statements that complete."""

    def __init__(
        self,
        initial_path: Path,
        catalog: RelationCatalog | None = None,
        *,
        user: str = "",
    ) -> None:
        self._initial = tuple(initial_path)
        self._user = user
        self._base_catalog = catalog
        self._catalog = catalog
        self._session: Path = self._initial  # the session value (SET / SET SESSION)
        self._local: Path | None = None  # SET LOCAL, until the transaction ends
        self._tx_start: Path = self._initial  # the session value when the transaction began
        self._in_block = False  # inside BEGIN ... COMMIT/ROLLBACK
        self._failed = False  # an error since the last ReadyForQuery
        self._savepoints: list[tuple[str, Path, Path | None]] = []
        self._ambiguous: set[Path] = set()  # other paths the session may be on
        self._temp = False
        self._present: set[tuple[str, str]] = set()
        self._absent: set[tuple[str, str]] = set()
        self._schemas: set[str] = set()
        self._unknown_schemas: set[str] = set()
        # what the session's own views and triggers set off: (schema, name, on writes
        # only, action, object)
        self._dependants: set[tuple[str, str, bool, str, str]] = set()
        self._prepared: dict[str, str] = {}
        self._cursors: dict[str, tuple[str, ...]] = {}  # name -> "action object" it touches

    # -- NameScope -------------------------------------------------------------------------

    @property
    def search_paths(self) -> tuple[Path, ...]:
        current = self._local if self._local is not None else self._session
        paths = [self._expand(current)]
        for other in sorted(self._ambiguous):
            expanded = self._expand(other)
            if expanded not in paths:
                paths.append(expanded)
        return tuple(paths)

    @property
    def catalog(self) -> RelationCatalog | None:
        return self._catalog

    @property
    def prepared(self) -> Mapping[str, str]:
        return self._prepared

    @property
    def cursors(self) -> Mapping[str, tuple[str, ...]]:
        """SQL cursors declared in this session: what each one's query touches."""
        return self._cursors

    # -- what the flow tells ---------------------------------------------------------------

    def key(self) -> tuple[object, ...]:
        """Everything classification depends on, hashable (for the decision cache)."""
        generation = self._catalog.generation if self._catalog is not None else 0
        prepared = tuple(sorted(self._prepared.items())) if self._prepared else ()
        return (self.search_paths, generation, prepared)

    def fork(self) -> SessionScope:
        """A copy to move along while one text is classified, leaving this one as it is."""
        twin = copy.copy(self)
        twin._savepoints = list(self._savepoints)
        twin._ambiguous = set(self._ambiguous)
        twin._present, twin._absent = set(self._present), set(self._absent)
        twin._schemas = set(self._schemas)
        twin._unknown_schemas = set(self._unknown_schemas)
        twin._dependants = set(self._dependants)
        twin._prepared = dict(self._prepared)
        twin._cursors = dict(self._cursors)
        return twin

    def set_catalog(self, catalog: RelationCatalog) -> None:
        self._base_catalog = catalog
        self._relayer()

    def statement_done(self, stmt: Statement, tag: str) -> None:
        """``stmt`` completed (its CommandComplete carried ``tag``): apply its effects."""
        for effect in stmt.effects:
            self._apply(effect.kind, effect, tag)

    def error(self) -> None:
        """An ErrorResponse arrived: the current (implicit) transaction will not commit."""
        self._failed = True

    def ready(self, status: str) -> None:
        """ReadyForQuery with transaction status ``status`` ('I', 'T' or 'E')."""
        if status == "I":
            if self._in_block or self._failed:
                # The block ended without a COMMIT/ROLLBACK we saw, or an implicit transaction
                # failed: its SETs are gone.
                if self._in_block and not self._failed:
                    self._ambiguous.add(self._session)
                self._session = self._tx_start
            self._end_transaction()
        elif not self._in_block:
            # A transaction block we did not see begin: where it started is uncertain.
            self._ambiguous.add(self._session)
            self._in_block = True
        self._failed = False

    # -- effects ---------------------------------------------------------------------------

    def _apply(self, kind: str, effect: Effect, tag: str) -> None:
        if kind == "search_path":
            self._set_path(effect.value, local=effect.local)
        elif kind == "reset_search_path":
            self._set_path(self._initial, local=effect.local)
        elif kind == "begin":
            self._in_block = True
        elif kind == "commit" and tag != "ROLLBACK":  # COMMIT of a failed block rolls back
            self._finish(commit=True, chain=effect.local)
        elif kind in ("commit", "rollback"):
            self._finish(commit=False, chain=effect.local)
        elif kind == "savepoint":
            self._savepoints.append((effect.name, self._session, self._local))
        elif kind == "rollback_to":
            self._rollback_to(effect.name)
        elif kind == "release":
            self._release(effect.name)
        elif kind == "discard_all":
            self._session, self._local = self._initial, None
            self._prepared.clear()
            self._cursors.clear()
        elif kind == "prepare" and effect.value:
            self._prepared[effect.name] = effect.value[0]
        elif kind == "declare_cursor":
            self._cursors[effect.name] = effect.value
        elif kind == "close_cursor":
            if effect.name:
                self._cursors.pop(effect.name, None)
            else:
                self._cursors.clear()
        elif kind == "deallocate":
            if effect.name:
                self._prepared.pop(effect.name, None)
            else:
                self._prepared.clear()
        elif kind == "opaque_search_path":
            # The path may have moved where classification cannot see (set_config in a
            # function, SET in a DO block): until a SET fixes it, any schema may match.
            self._session = self._opaque(self._session)
            if self._local is not None:
                self._local = self._opaque(self._local)
        elif kind == "temp_schema":
            self._temp = True
            self._present.update(("pg_temp", name) for name in effect.value)
            self._relayer()
        elif kind == "created_relation" and len(effect.value) == 2:
            self._present.add((effect.value[0], effect.value[1]))
            self._relayer()
        elif kind == "dropped_relation" and len(effect.value) == 2:
            self._absent.add((effect.value[0], effect.value[1]))
            self._relayer()
        elif kind == "created_schema" and effect.value:
            self._schemas.add(effect.value[0])
            self._relayer()
        elif kind == "dependants" and len(effect.value) > 2:
            schema, name, *accesses = effect.value
            for access in accesses:
                action, _, obj = access.partition(" ")
                self._dependants.add((schema, name, effect.local, action, obj))
            self._relayer()
        elif kind == "opaque_schema" and effect.value:
            self._unknown_schemas.add(effect.value[0])
            self._relayer()

    def _set_path(self, path: Path, *, local: bool) -> None:
        if local:
            self._local = path
        else:
            self._session, self._local = path, None

    def _finish(self, *, commit: bool, chain: bool) -> None:
        if not commit:
            self._session = self._tx_start
        self._end_transaction()
        self._in_block = chain

    def _end_transaction(self) -> None:
        self._local = None
        self._savepoints.clear()
        self._in_block = False
        self._tx_start = self._session

    def _rollback_to(self, name: str) -> None:
        for index in range(len(self._savepoints) - 1, -1, -1):
            saved_name, session, local = self._savepoints[index]
            if saved_name == name:
                del self._savepoints[index + 1 :]
                self._session, self._local = session, local
                return
        # A savepoint we never saw: keep both where we are and where the block began.
        self._ambiguous.update({self._session, self._tx_start})

    def _release(self, name: str) -> None:
        for index in range(len(self._savepoints) - 1, -1, -1):
            if self._savepoints[index][0] == name:
                del self._savepoints[index:]
                return

    def _relayer(self) -> None:
        base = self._base_catalog
        if base is None:
            self._catalog = None
        elif (
            self._present
            or self._absent
            or self._schemas
            or self._unknown_schemas
            or self._dependants
        ):
            self._catalog = base.with_session_changes(
                self._present,
                self._absent,
                self._schemas,
                self._unknown_schemas,
                self._dependants,
            )
        else:
            self._catalog = base

    @staticmethod
    def _opaque(path: Path) -> Path:
        return path if ANY_SCHEMA in path else (ANY_SCHEMA, *path)

    @property
    def initial_path(self) -> Path:
        """The path RESET and DISCARD ALL return to (unexpanded)."""
        return self._initial

    def expand(self, path: Path) -> Path:
        """``path`` as the server searches it in this session (``$user``, ``pg_temp``)."""
        return self._expand(path)

    def _expand(self, path: Path) -> Path:
        expanded: list[str] = []
        if self._temp and "pg_temp" not in path:
            expanded.append("pg_temp")
        for schema in path:
            if schema == "$user":
                if not self._user:
                    continue  # no login user known: nothing for the server to find either
                schema = self._user
            if schema == "pg_temp" and not self._temp:
                continue  # the server skips a temporary schema the session does not have
            if schema not in expanded:
                expanded.append(schema)
        return tuple(expanded)


class TextScope:
    """What the later statements of one text see: the outer scope moved by the earlier ones.

    The server runs a text's statements in order, so ``SET search_path = s; SELECT ...``
    reads through ``s``, a temporary table created first is there for the next statement,
    and a PREPARE can be EXECUTEd right after. When the outer scope is a
    :class:`SessionScope` (or wraps one as ``.base``) a fork of it follows the text exactly;
    paths the outer scope adds (statements still in flight) stay in the union until a SET,
    RESET or DISCARD in the text fixes the path. Over any other scope a statement after one
    that may move the path or the transaction is refused as ambiguous.
    """

    _PATH_SETTERS = frozenset({"search_path", "reset_search_path", "discard_all"})
    _TRANSACTION_ENDS = frozenset({"rollback", "rollback_to", "commit"})
    _HARMLESS = frozenset(
        {"begin", "savepoint", "release", "prepare", "deallocate", "close_cursor"}
    )

    def __init__(self, outer: NameScope) -> None:
        self._outer = outer
        base = outer if isinstance(outer, SessionScope) else getattr(outer, "base", None)
        self._session = base.fork() if isinstance(base, SessionScope) else None
        # Paths beyond the session's own that the outer scope says are possible.
        self._in_flight: tuple[Path, ...] = () if outer is base else outer.search_paths
        self._extra = self._in_flight
        self._ambiguous = False
        self._prepared: dict[str, str] = {}
        self._deallocated: set[str] = set()

    @property
    def search_paths(self) -> tuple[Path, ...]:
        if self._ambiguous:
            raise Unplaceable(
                "ambiguous_search_path",
                "an earlier statement of the text may have moved the search path",
            )
        if self._session is None:
            return self._outer.search_paths
        return tuple(dict.fromkeys(self._session.search_paths + self._extra))

    @property
    def catalog(self) -> RelationCatalog | None:
        return self._session.catalog if self._session is not None else self._outer.catalog

    @property
    def prepared(self) -> Mapping[str, str]:
        names = dict(self._outer.prepared)
        if self._session is not None:
            names.update(self._session.prepared)
        names.update(self._prepared)
        for name in self._deallocated:
            names.pop(name, None)
        return names

    @property
    def cursors(self) -> Mapping[str, tuple[str, ...]]:
        if self._session is not None:
            return self._session.cursors
        return cursors_of(self._outer)

    def done(self, stmt: Statement) -> None:
        """``stmt`` (an earlier statement of the text) has run."""
        if self._session is not None:
            self._session.statement_done(stmt, stmt.command)
        for effect in stmt.effects:
            if effect.kind == "prepare" and effect.value:
                self._prepared[effect.name] = effect.value[0]
                self._deallocated.discard(effect.name)
            elif effect.kind == "deallocate":
                self._deallocated.update([effect.name] if effect.name else self.prepared)
                if effect.name:
                    self._prepared.pop(effect.name, None)
                else:
                    self._prepared.clear()
            if self._session is None:
                if effect.kind not in self._HARMLESS:
                    self._ambiguous = True
            elif effect.kind in self._PATH_SETTERS:
                self._extra = ()  # exact from here on
            elif effect.kind in self._TRANSACTION_ENDS:
                # back to where the block began: the session knows, unless statements
                # still in flight began it
                self._extra = self._in_flight


def cursors_of(scope: object) -> Mapping[str, tuple[str, ...]]:
    """The SQL cursors a scope knows (its own, or those of the session scope it wraps)."""
    for candidate in (scope, getattr(scope, "base", None)):
        cursors = getattr(candidate, "cursors", None)
        if isinstance(cursors, Mapping):
            return cursors
    inner = getattr(scope, "_flow_scope", None)
    return cursors_of(inner) if inner is not None else {}
