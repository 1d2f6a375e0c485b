"""Which table grants a dynamic PostgreSQL role may safely hold: the grant plan.

Policy is asked per relation by name, but the server reaches further than the name says,
with rights the role itself does not hold. This module decides, for each relation policy
allows ``read`` or ``write`` on, whether the matching GRANT would hand the role more than
policy allows, and if so skips it with a reason (the audit record lists both). Pure: the
facts come from two catalog queries the role admin runs (:attr:`RelationCatalog.QUERY`, the
engine's own, and :data:`GRANT_FACTS_QUERY`); objects are the engine's object names
(:func:`~lockgate.gateway.postgres.classified.qualified_object`), reached relations the
engine's dependency rule (:meth:`RelationCatalog.reads_through`).

A grant of ``action`` on relation R is skipped when (the first three are the engine's own
judgement of a statement on R, from the same catalog facts):

* R reaches a relation (what a view or materialized view reads, recursively through views;
  an inheritance parent's or partitioned table's descendants) on which policy does not
  allow the same ``action``: the server checks a view's relations with the view owner's
  rights and a parent's children not at all;
* R sets off a function (:meth:`RelationCatalog.sets_off`: those the views it reaches call;
  for a write also its and their triggers' and rules' functions) outside the engine's
  allow-list (``pg_catalog`` and :func:`~lockgate.gateway.postgres.functions.is_safe`, never
  :func:`~lockgate.gateway.postgres.functions.always_admin`). Where the engine would ask
  policy for ``admin`` on the function, a role is never granted admin: the grant is skipped.
  So a write grant on a table with a trigger is in practice always skipped (a trigger
  function is no allow-listed built-in; a SECURITY DEFINER one runs as its owner);
* (``write``) R's rules (or those of what it reaches) touch a relation policy does not
  allow ``write`` on: a rule's actions run with the table owner's rights;
* a view's rules use an operator (for a write: any of R's rules) outside ``pg_catalog``'s
  :data:`~lockgate.gateway.postgres.functions.SAFE_OPERATORS` (an operator runs a function
  the engine's catalog does not list);
* (``write`` only) a foreign key makes the server look elsewhere with the owner's rights:
  R references a table policy does not allow ``read`` on (an INSERT probes it for a key),
  or a table referencing R is one policy does not allow ``write`` on when its key action
  cascades, sets null or sets a default (or ``read`` on, for NO ACTION / RESTRICT: a DELETE
  refused because of it reveals its rows).

Column defaults, CHECK constraints and generated columns run as the role itself: a function
they call needs the role's EXECUTE (PUBLIC's, by default), as a direct call would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import LiteralString

from .classified import qualified_object
from .functions import SAFE_OPERATORS, always_admin, is_safe
from .relation_catalog import RelationCatalog

__all__ = ["GRANT_FACTS_QUERY", "Allows", "GrantFacts", "GrantPlan", "Skipped", "plan_grants"]

#: (kind, schema, relation, detail schema, detail name) of what a grant reaches beyond the
#: engine's relation catalog: the operators each relation's rules use ("operator" for a
#: view's, "write-operator" for a table's), and each foreign key both ways: "references"
#: (detail: the referenced table) and "referenced-by-write" / "-read" (detail: the
#: referencing table; what its key action does there).
GRANT_FACTS_QUERY: LiteralString = """
SELECT CASE WHEN v.relkind IN ('v', 'm') THEN 'operator' ELSE 'write-operator' END,
       vn.nspname::text, v.relname::text, opn.nspname::text, o.oprname::text
  FROM pg_catalog.pg_rewrite r
  JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
  JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass
   AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_operator'::regclass
  JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid
  JOIN pg_catalog.pg_namespace opn ON opn.oid = o.oprnamespace
 WHERE vn.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT fk.* FROM pg_catalog.pg_constraint k
  JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_class f ON f.oid = k.confrelid
  JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace
  CROSS JOIN LATERAL (VALUES
    ('references', n.nspname::text, c.relname::text, fn.nspname::text, f.relname::text),
    (CASE WHEN k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd')
          THEN 'referenced-by-write' ELSE 'referenced-by-read' END,
     fn.nspname::text, f.relname::text, n.nspname::text, c.relname::text)
  ) AS fk
 WHERE k.contype = 'f'
"""

Relation = tuple[str, str]  # (schema, name)


@dataclass(slots=True)
class GrantFacts:
    """:data:`GRANT_FACTS_QUERY`'s rows, per relation."""

    operators: dict[Relation, set[Relation]] = field(default_factory=dict)
    write_operators: dict[Relation, set[Relation]] = field(default_factory=dict)
    references: dict[Relation, set[Relation]] = field(default_factory=dict)
    #: relation -> (action the referencing table's key action needs, referencing table)
    referenced_by: dict[Relation, set[tuple[str, Relation]]] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[tuple[str, str, str, str, str]]) -> GrantFacts:
        facts = cls()
        for kind, schema, name, other_schema, other in rows:
            relation, detail = (schema, name), (other_schema, other)
            if kind == "operator":
                facts.operators.setdefault(relation, set()).add(detail)
            elif kind == "write-operator":
                facts.write_operators.setdefault(relation, set()).add(detail)
            elif kind == "references":
                facts.references.setdefault(relation, set()).add(detail)
            elif kind.startswith("referenced-by-"):
                need = kind.removeprefix("referenced-by-")
                facts.referenced_by.setdefault(relation, set()).add((need, detail))
        return facts


@dataclass(frozen=True, slots=True)
class Skipped:
    """A grant policy allows by name but the server would carry further."""

    action: str  # read | write
    obj: str  # the engine's object name
    reason: str


@dataclass(frozen=True, slots=True)
class GrantPlan:
    grants: tuple[tuple[str, Relation], ...]  # (action, relation)
    skipped: tuple[Skipped, ...]


#: (action, object) -> whether policy allows it
Allows = Callable[[str, str], bool]


def plan_grants(
    candidates: Iterable[tuple[str, Relation]],
    catalog: RelationCatalog,
    facts: GrantFacts,
    allows: Allows,
) -> GrantPlan:
    """Of ``candidates`` (action, relation) policy allows by name, the grants that hand the
    role nothing more, and the others with why."""
    grants: list[tuple[str, Relation]] = []
    skipped: list[Skipped] = []
    for action, relation in candidates:
        reason = _refusal(action, relation, catalog, facts, allows)
        if reason is None:
            grants.append((action, relation))
        else:
            skipped.append(Skipped(action, qualified_object(*relation), reason))
    return GrantPlan(tuple(grants), tuple(skipped))


def _refusal(
    action: str, relation: Relation, catalog: RelationCatalog, facts: GrantFacts, allows: Allows
) -> str | None:
    """Why granting ``action`` on ``relation`` would reach beyond policy, or None."""
    reached = catalog.reads_through(*relation)
    for other in reached:
        if not allows(action, qualified_object(*other)):
            return f"reaches {qualified_object(*other)}, where policy does not allow {action}"
    writing = action == "write"
    calls, touches = catalog.sets_off(*relation, writing=writing)
    for schema, name in sorted(calls):
        if schema != "pg_catalog" or always_admin(name) or not is_safe(name):
            return f"runs function:{qualified_object(schema, name)}, outside the allow-list"
    for touched in sorted(touches):
        if not allows("write", qualified_object(*touched)):
            return (
                f"its rules write {qualified_object(*touched)}, where policy does not allow write"
            )
    for holder in (relation, *reached):
        where = qualified_object(*holder)
        operators = facts.operators.get(holder, set())
        if writing:
            operators = operators | facts.write_operators.get(holder, set())
        for schema, symbol in sorted(operators):
            if schema != "pg_catalog" or symbol not in SAFE_OPERATORS:
                return f"{where} uses operator:{qualified_object(schema, symbol)}"
        if not writing:
            continue
        for target in sorted(facts.references.get(holder, ())):
            if not allows("read", qualified_object(*target)):
                return f"{where} references {qualified_object(*target)}, not readable by policy"
        for need, referrer in sorted(facts.referenced_by.get(holder, ())):
            if not allows(need, qualified_object(*referrer)):
                return (
                    f"{qualified_object(*referrer)} references {where}"
                    f" and policy does not allow {need} on it"
                )
    return None
