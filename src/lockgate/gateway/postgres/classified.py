"""What classification says about a SQL text: the value types of :mod:`.classify`.

A text is split into :class:`Statement`\\ s; each names the :class:`Access`\\ es policy must
allow (``read``/``write``/``admin`` on an object) and the :class:`Effect`\\ s it has on the
session once it completes (search path, transaction, prepared statements). Anything that
cannot be placed raises :class:`Unplaceable`; the caller refuses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Access",
    "Classified",
    "Effect",
    "Statement",
    "Unplaceable",
    "name_part",
    "qualified_object",
    "split_object",
]

# In an object name these would change what a policy glob sees: "." separates schema and
# name, "/" segments, ":" a kind; "%" is the escape itself.
_ESCAPES = {"%": "%25", ".": "%2E", "/": "%2F", ":": "%3A"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
_ESCAPED = re.compile("|".join(re.escape(e) for e in _UNESCAPES))


def name_part(name: str) -> str:
    """``name`` as one part of an object: a schema "sales.x" must not read as "sales"."""
    if not any(c in name for c in _ESCAPES):
        return name
    return "".join(_ESCAPES.get(c, c) for c in name)


def qualified_object(schema: str, name: str) -> str:
    """``schema.name`` with each part escaped (:func:`name_part`)."""
    return f"{name_part(schema)}.{name_part(name)}"


def split_object(obj: str) -> tuple[str, str]:
    """The (schema, name) of a :func:`qualified_object`."""
    schema, _, name = obj.partition(".")
    return _unescape(schema), _unescape(name)


def _unescape(part: str) -> str:
    if "%" not in part:
        return part
    return _ESCAPED.sub(lambda m: _UNESCAPES[m.group(0)], part)


@dataclass(frozen=True, slots=True)
class Access:
    """One thing policy must allow: ``action`` (read|write|admin) on ``obj``.

    ``obj`` is ``schema.table`` for a relation, else a typed name: ``function:schema.name``,
    ``schema:<name>``, ``role:<name>``, ``channel:<name>``, ``setting:<name>``,
    ``extension:<name>``, ``operator:<op>`` or ``database`` (database-wide administration).
    Each name part is escaped (:func:`name_part`): a "." "/" ":" or "%" inside a name
    cannot move a boundary a policy glob sees.
    """

    action: str
    obj: str


@dataclass(frozen=True, slots=True)
class Effect:
    """What a statement does to the session, applied when its CommandComplete arrives.

    Kinds: ``search_path`` (value: the schemas; ``local`` for SET LOCAL),
    ``reset_search_path``, ``begin``, ``commit``, ``rollback`` (``local`` = AND CHAIN),
    ``savepoint`` / ``rollback_to`` / ``release`` (``name``), ``discard_all``, ``prepare``
    (``name``; value: the inner text), ``deallocate`` (``name``, "" for ALL),
    ``temp_schema`` (value: the new temporary relation's name). Beyond those, so the
    session's view of the catalog follows its own DDL: ``created_relation`` /
    ``dropped_relation`` (value: schema, name), ``created_schema`` (value: name) and
    ``opaque_schema`` (value: name; a schema dropped or renamed: any name in it may be
    there or not); and
    ``opaque_search_path`` after a statement that may move the path out of sight (DO, CALL,
    a function outside the allow-list: set_config may run inside); ``declare_cursor``
    (``name``; value: "action object" for each access of its query, so a FETCH is judged
    on them) and ``close_cursor`` (``name``, "" for ALL).
    """

    kind: str
    value: tuple[str, ...] = ()
    local: bool = False
    name: str = ""


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a text: its command tag, what it needs and what it changes."""

    command: str
    accesses: tuple[Access, ...]
    text: str
    effects: tuple[Effect, ...] = ()
    prepared_name: str = ""


@dataclass(frozen=True, slots=True)
class Classified:
    """Every statement of a text, in order.

    ``catalog_sensitive``: the placing rests on relation catalog facts another session may
    have changed since the catalog was read — an unqualified name resolved past an existing
    schema of the path (a same-named relation created there would come first), or a view,
    inheritance parent, rule or trigger expanded from the catalog (a view may have been
    redefined). A caller that can read the catalog again may do so and classify again.
    """

    statements: tuple[Statement, ...]
    catalog_sensitive: bool = False


class Unplaceable(Exception):
    """A text the classifier cannot place, so the gateway refuses it.

    ``reason`` is a slug (``parse_error``, ``unresolved_relation``,
    ``unsupported_statement``, ``unknown_prepared_statement``, ``empty_search_path``...);
    ``str(exc)`` is the human message.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
