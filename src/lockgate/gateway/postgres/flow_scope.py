"""The name scope a session's flow judges under: the settled scope plus what is in flight.

:class:`~.scope.SessionScope` moves when a statement *completes* (its CommandComplete). A
pipelining client does not wait for that: ``SET search_path = s2`` and the ``SELECT`` after
it may both be judged before the server answered the SET. So the flow judges under
:class:`FlowScope`: the settled scope's paths *plus* every path a forwarded, unanswered
statement may put the session on (a SET's new path; the initial path for RESET and DISCARD
ALL; any path seen in this transaction for a ROLLBACK, ROLLBACK TO or COMMIT, which may roll
back). Resolving over the union is a safe superset: every object the server could pick is
judged. Once the statement is answered its path leaves the union and the settled scope has
it (or not, if it failed).

Prepared statements share one name space on the server: a protocol-level Parse ``"s1"`` can
be run by SQL ``EXECUTE s1`` and a SQL ``PREPARE p`` bound by a protocol Bind. The flow
keeps the protocol-level names; :attr:`FlowScope.prepared` shows the classifier both.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable, Mapping

from .classified import Statement
from .scope import RelationCatalog, SessionScope

Path = tuple[str, ...]

#: Effects after which the session may be on another search path.
PATH_EFFECTS = frozenset(
    {"search_path", "reset_search_path", "discard_all", "rollback", "rollback_to", "commit"}
)


class FlowScope:
    """A :class:`~.scope.NameScope` over a settled scope and statements in flight."""

    __slots__ = ("_initial", "_paths", "_seen", "base", "protocol", "unsettled")

    def __init__(self, base: SessionScope) -> None:
        self.base = base
        self._initial: tuple[Path, ...] = base.search_paths
        # The settled paths, read again only after what may move them (the calls below).
        self._paths: tuple[Path, ...] | None = self._initial
        # paths the settled scope has shown in this transaction (besides the current one):
        # where a ROLLBACK in flight may take the session back to
        self._seen: dict[Path, None] = {}
        self.unsettled: dict[int, tuple[Path, ...]] = {}  # forwarded statement -> its paths
        self.protocol: dict[str, str] = {}  # protocol-level prepared statements: name -> text

    # -- NameScope -------------------------------------------------------------------------
    @property
    def settled_paths(self) -> tuple[Path, ...]:
        paths = self._paths
        if paths is None:
            paths = self._paths = self.base.search_paths
        return paths

    @property
    def search_paths(self) -> tuple[Path, ...]:
        paths = self.settled_paths
        if not self.unsettled:
            return paths
        merged = dict.fromkeys(paths)
        for extra in self.unsettled.values():
            merged.update(dict.fromkeys(extra))
        return tuple(merged)

    @property
    def catalog(self) -> RelationCatalog | None:
        return self.base.catalog

    @property
    def prepared(self) -> Mapping[str, str]:
        named = {k: v for k, v in self.protocol.items() if k}
        if not named:
            return self.base.prepared
        return ChainMap(dict(self.base.prepared), named)

    def key(self) -> tuple[object, ...]:
        if not self.unsettled:
            return self.base.key()
        return (self.base.key(), self.search_paths)

    # -- what the flow tells ---------------------------------------------------------------
    def sent(self, token: int, statements: Iterable[Statement]) -> None:
        """Statements were forwarded under ``token``; note where they may take the path."""
        paths: dict[Path, None] = {}
        for statement in statements:
            for effect in statement.effects:
                kind = effect.kind
                if kind not in PATH_EFFECTS:
                    continue
                if kind == "search_path":
                    paths[self._expand(effect.value)] = None
                elif kind in ("reset_search_path", "discard_all"):
                    paths.update(dict.fromkeys(self._initial))
                else:  # may roll back to any path of this transaction
                    paths.update(self._seen)
                    paths.update(dict.fromkeys(self.settled_paths))
        if paths:
            self.unsettled[token] = tuple(paths)

    def settled(self, token: int) -> None:
        """The statements sent under ``token`` were answered (done, failed or skipped)."""
        if self.unsettled.pop(token, None) is not None:
            self._seen.update(dict.fromkeys(self.settled_paths))

    def statement_done(self, statement: Statement, tag: str) -> None:
        """A statement completed: the settled scope applies its effects."""
        self.base.statement_done(statement, tag)
        if statement.effects:
            self._paths = None

    def error(self) -> None:
        """An ErrorResponse: the settled scope may take back this transaction's SETs."""
        self.base.error()
        self._paths = None

    def ready(self, status: str) -> None:
        """A ReadyForQuery: the settled scope moves; an idle session starts a new history."""
        self.base.ready(status)
        self._paths = None
        if status == "I":
            if self._seen:
                self._seen = {}  # the current path is added where it is needed (sent)
        else:
            self._seen.update(dict.fromkeys(self.settled_paths))

    def forget_unsettled(self) -> None:
        self.unsettled.clear()

    def _expand(self, path: Path) -> Path:
        # The settled scope expands "$user" and pg_temp as the server does.
        return self.base.expand(path)


class WidenedScope:
    """A flow scope widened by the search paths a portal was bound under."""

    __slots__ = ("_flow_scope", "search_paths")

    def __init__(self, flow_scope: FlowScope, paths: tuple[tuple[str, ...], ...]) -> None:
        self._flow_scope = flow_scope
        self.search_paths = tuple(dict.fromkeys(flow_scope.search_paths + paths))

    @property
    def catalog(self) -> RelationCatalog | None:
        return self._flow_scope.catalog

    @property
    def prepared(self) -> Mapping[str, str]:
        return self._flow_scope.prepared

    def key(self) -> tuple[object, ...]:
        return (self._flow_scope.key(), self.search_paths)


__all__ = ["PATH_EFFECTS", "FlowScope", "WidenedScope"]
