"""DDL and other administrative statements: ``admin`` on the thing acted on.

Objects: a relation as ``schema.name`` (a new one in the schema it will be created in: its
own qualifier, ``pg_temp`` for TEMP, else the first existing schema of the path), and
``schema:<name>``, ``role:<name>``, ``function:<schema>.<name>``, ``extension:<name>``,
``channel:<name>``, ``setting:<name>``; ``database`` for what acts on the database as a whole
or on kinds of objects without a finer name here (operators, casts, languages, foreign
servers, publications, tablespaces...). Queries inside DDL (view bodies, CREATE TABLE AS,
rule actions) add their own reads and writes; DEFAULTs and other expressions add their
function calls; other relations a DDL statement names (FOREIGN KEY targets, LIKE sources,
parents) are ``admin`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pglast import ast
from pglast.enums.parsenodes import GrantTargetType, ObjectType, RoleSpecType

from .classified import Effect, Unplaceable, name_part, qualified_object, split_object
from .classify_query import Walker
from .resolver import present, qualified_name

__all__ = ["DDL_HANDLERS", "create_relation"]

Effects = list[Effect]

_RELATION_KINDS = frozenset(
    {
        ObjectType.OBJECT_TABLE,
        ObjectType.OBJECT_VIEW,
        ObjectType.OBJECT_MATVIEW,
        ObjectType.OBJECT_SEQUENCE,
        ObjectType.OBJECT_INDEX,
        ObjectType.OBJECT_FOREIGN_TABLE,
    }
)
# Objects named (schema?, table, name): their table is what is acted on.
_TABLE_MEMBERS = frozenset(
    {
        ObjectType.OBJECT_COLUMN,
        ObjectType.OBJECT_TRIGGER,
        ObjectType.OBJECT_RULE,
        ObjectType.OBJECT_POLICY,
        ObjectType.OBJECT_TABCONSTRAINT,
    }
)
_FUNCTION_KINDS = frozenset(
    {
        ObjectType.OBJECT_FUNCTION,
        ObjectType.OBJECT_PROCEDURE,
        ObjectType.OBJECT_ROUTINE,
        ObjectType.OBJECT_AGGREGATE,
    }
)


def create_relation(w: Walker, rv: ast.RangeVar | None) -> Effects:
    """``admin`` on a relation about to be created; the session will know it may exist."""
    rv = present(rv)
    relname = present(rv.relname)
    if rv.relpersistence == "t" or rv.schemaname == "pg_temp":
        w.add("admin", qualified_object("pg_temp", relname))
        return [Effect("temp_schema", (relname,))]
    effects: Effects = []
    for schema in w.resolver.creation_schemas(rv.schemaname):
        w.add("admin", qualified_object(schema, relname))
        effects.append(Effect("created_relation", (schema, relname)))
    return effects


def _role(spec: object) -> str:
    if isinstance(spec, ast.RoleSpec):
        if spec.roletype == RoleSpecType.ROLESPEC_CSTRING and spec.rolename:
            return "role:" + name_part(spec.rolename)
        kind = RoleSpecType(present(spec.roletype))
        return f"role:{kind.name.removeprefix('ROLESPEC_').lower()}"
    if isinstance(spec, ast.String):
        return "role:" + name_part(present(spec.sval))
    return "role:*"


def _names(node: object) -> tuple[str, ...]:
    if isinstance(node, ast.String):
        return (present(node.sval),)
    if isinstance(node, (tuple, list)):
        return tuple(present(n.sval) for n in node if isinstance(n, ast.String))
    if isinstance(node, ast.TypeName):
        return _names(node.names)
    return ()


def _object(w: Walker, kind: int | None, obj: object, *, missing_ok: bool = False) -> Effects:
    """``admin`` on one object of a DROP / COMMENT / ALTER ... OWNER and the like."""
    effects: Effects = []
    if isinstance(obj, ast.RangeVar):
        parts: tuple[str, ...] = tuple(p for p in (obj.schemaname, obj.relname) if p)
    else:
        parts = _names(obj)
    if isinstance(obj, ast.RangeVar) or kind in _RELATION_KINDS or kind in _TABLE_MEMBERS:
        if isinstance(obj, ast.RangeVar) and obj.catalogname:
            raise Unplaceable("cross_database_reference", f"{obj.catalogname} names a database")
        if kind in _TABLE_MEMBERS and not isinstance(obj, ast.RangeVar):
            parts = parts[:-1]  # (schema, table, column): the table
        if not parts:
            raise Unplaceable("unsupported_statement", "an object name could not be read")
        schema, name = qualified_name(ast.String(sval=p) for p in parts)
        for placed in w.resolver.relation(schema, name, missing_ok=missing_ok):
            w.add("admin", placed)
            if kind in _RELATION_KINDS:
                s, n = split_object(placed)
                effects.append(Effect("dropped_relation", (s, n)))
    elif kind == ObjectType.OBJECT_SCHEMA:
        schema_name = ".".join(_names(obj))
        w.add("admin", "schema:" + name_part(schema_name))
        # dropped or renamed: whatever it held may be gone (the path then looks further)
        effects.append(Effect("opaque_schema", (schema_name,)))
    elif kind == ObjectType.OBJECT_ROLE:
        w.add("admin", _role(obj))
    elif kind == ObjectType.OBJECT_EXTENSION:
        w.add("admin", "extension:" + name_part(".".join(_names(obj))))
    elif kind in _FUNCTION_KINDS and isinstance(obj, ast.ObjectWithArgs):
        schema, name = qualified_name(obj.objname or ())
        for s in [schema] if schema else w.resolver.function_schemas(name):
            w.add("admin", "function:" + qualified_object(s, name))
    else:
        w.add("admin", "database")
    return effects


def _relations_as(action: str) -> Callable[[Walker, ast.Node], Effects]:
    """A statement acting on the relations it names (``action``) and nothing else."""

    def handle(w: Walker, node: ast.Node) -> Effects:
        w.relation_action = action
        w.walk_children(node)
        return []

    return handle


def _create_stmt(w: Walker, node: ast.CreateStmt) -> Effects:
    effects = create_relation(w, node.relation)
    w.walk_children(node, frozenset({"relation"}))
    return effects


def _create_foreign_table(w: Walker, node: ast.CreateForeignTableStmt) -> Effects:
    w.add("admin", "database")  # a foreign server is reached through it
    return _create_stmt(w, present(node.base))


def _create_table_as(w: Walker, node: ast.CreateTableAsStmt) -> Effects:
    effects = create_relation(w, present(node.into).rel)
    w.walk(node.query)
    return effects


def _view(w: Walker, node: ast.ViewStmt) -> Effects:
    effects = create_relation(w, node.view)
    query = Walker(w.resolver)
    query.walk(node.query)
    w.accesses.update(query.accesses)
    # A read of the view needs what its query needs; the relation catalog (read on another
    # connection) never sees a temporary view, and a view over a temporary relation is
    # temporary whatever it says.
    relname = present(present(node.view).relname)
    created = {("pg_temp", relname)} | {
        (e.value[0], e.value[1]) for e in effects if e.kind == "created_relation"
    }
    needs = tuple(f"{a.action} {a.obj}" for a in query.accesses)
    if needs:
        effects += [Effect("dependants", (*where, *needs)) for where in sorted(created)]
    return effects


def _create_seq(w: Walker, node: ast.CreateSeqStmt) -> Effects:
    effects = create_relation(w, node.sequence)
    w.walk_children(node, frozenset({"sequence"}))
    return effects


def _composite_type(w: Walker, node: ast.CompositeTypeStmt) -> Effects:
    effects = create_relation(w, node.typevar)
    w.walk(node.coldeflist)
    return effects


def _existing(w: Walker, node: ast.Node, attr: str, missing_ok: bool = False) -> None:
    rv = getattr(node, attr)
    if isinstance(rv, ast.RangeVar):
        w.add_relation("admin", rv, missing_ok=missing_ok)
    w.walk_children(node, frozenset({attr}))


def _alter_table(w: Walker, node: ast.AlterTableStmt) -> Effects:
    _existing(w, node, "relation", bool(node.missing_ok))
    return []


def _index(w: Walker, node: ast.IndexStmt) -> Effects:
    _existing(w, node, "relation")
    return []


def _trigger(w: Walker, node: ast.CreateTrigStmt) -> Effects:
    schema, name = qualified_name(node.funcname or ())
    calls = [
        "admin function:" + qualified_object(s, name)
        for s in ([schema] if schema else w.resolver.function_schemas(name))
    ]
    for call in calls:
        w.add(*call.split(" ", 1))
    _existing(w, node, "relation")
    # A write to the table runs the function from now on; the relation catalog (read on
    # another connection) never sees a trigger on a temporary table.
    rv = present(node.relation)
    return [
        Effect("dependants", (*split_object(obj), *calls), local=True)
        for obj in w.resolver.relation(rv.schemaname, present(rv.relname))
    ]


def _on_table_or_database(attr: str) -> Callable[[Walker, ast.Node], Effects]:
    """CLUSTER / REINDEX / VACUUM-like: the relation named, or the whole database."""

    def handle(w: Walker, node: ast.Node) -> Effects:
        if getattr(node, attr, None) is None:
            w.add("admin", "database")
        w.walk_children(node)
        return []

    return handle


def _vacuum(w: Walker, node: ast.VacuumStmt) -> Effects:
    if not node.rels:
        w.add("admin", "database")
    w.walk(node.rels)
    return []


def _drop(w: Walker, node: ast.DropStmt) -> Effects:
    effects: Effects = []
    for obj in node.objects or ():
        effects += _object(w, node.removeType, obj, missing_ok=bool(node.missing_ok))
    return effects


def _comment_like(kind_attr: str) -> Callable[[Walker, ast.Node], Effects]:
    def handle(w: Walker, node: ast.Node) -> Effects:
        kind = getattr(node, kind_attr)
        relation = getattr(node, "relation", None)
        _object(w, kind, relation if relation is not None else node.object)  # type: ignore[attr-defined]
        return []

    return handle


def _rename(w: Walker, node: ast.RenameStmt) -> Effects:
    if node.relation is None:
        # a schema, role, database... names its old self in subname
        target = node.object if node.object is not None else ast.String(sval=node.subname or "")
        dropped = _object(w, node.renameType, target, missing_ok=bool(node.missing_ok))
        if node.renameType != ObjectType.OBJECT_SCHEMA:
            return []
        # the renamed schema's relations now answer to the new name
        new_schema = present(node.newname)
        w.add("admin", "schema:" + name_part(new_schema))
        return [*dropped, Effect("opaque_schema", (new_schema,))]
    w.add_relation("admin", node.relation, missing_ok=bool(node.missing_ok))
    if node.renameType not in _RELATION_KINDS:
        return []  # a column, constraint, trigger...: the table keeps its name
    effects: Effects = []
    newname = present(node.newname)
    for placed in w.resolver.relation(
        node.relation.schemaname, present(node.relation.relname), missing_ok=bool(node.missing_ok)
    ):
        schema, old = split_object(placed)
        w.add("admin", qualified_object(schema, newname))
        effects.append(Effect("dropped_relation", (schema, old)))
        effects.append(Effect("created_relation", (schema, newname)))
    return effects


def _set_schema(w: Walker, node: ast.AlterObjectSchemaStmt) -> Effects:
    target = node.relation if node.relation is not None else node.object
    effects = _object(w, node.objectType, target, missing_ok=bool(node.missing_ok))
    newschema = present(node.newschema)
    w.add("admin", "schema:" + name_part(newschema))
    moved = [Effect("created_relation", (newschema, e.value[1])) for e in effects]
    return effects + moved


def _create_schema(w: Walker, node: ast.CreateSchemaStmt) -> Effects:
    name = node.schemaname or (
        node.authrole.rolename if isinstance(node.authrole, ast.RoleSpec) else None
    )
    if not name:
        raise Unplaceable("unsupported_statement", "CREATE SCHEMA without a name")
    w.add("admin", "schema:" + name_part(name))
    effects = [Effect("created_schema", (name,))]
    for element in node.schemaElts or ():
        for attr in ("relation", "view", "sequence"):
            rv = getattr(element, attr, None)
            if isinstance(rv, ast.RangeVar) and rv.schemaname is None:
                rv.schemaname = name  # the elements are created in the new schema
        handler = DDL_HANDLERS.get(type(element))
        if handler is None:
            raise Unplaceable("unsupported_statement", "unsupported CREATE SCHEMA element")
        effects += handler(w, element)
    return effects


def _function(w: Walker, node: ast.CreateFunctionStmt) -> Effects:
    schema, name = qualified_name(node.funcname or ())
    for s in w.resolver.creation_schemas(schema):
        w.add("admin", "function:" + qualified_object(s, name))
    w.walk(node.parameters)
    return []


def _grant(w: Walker, node: ast.GrantStmt) -> Effects:
    if node.targtype == GrantTargetType.ACL_TARGET_ALL_IN_SCHEMA:
        for obj in node.objects or ():
            w.add("admin", "schema:" + name_part(".".join(_names(obj))))
    elif node.targtype == GrantTargetType.ACL_TARGET_OBJECT:
        for obj in node.objects or ():
            _object(w, node.objtype, obj)
    else:
        w.add("admin", "database")
    return []


def _roles(*attrs: str) -> Callable[[Walker, ast.Node], Effects]:
    """Role statements: ``admin`` on each role named (``role:*`` when none is)."""

    def handle(w: Walker, node: ast.Node) -> Effects:
        named = 0
        for attr in attrs:
            value = getattr(node, attr, None)
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, ast.AccessPriv):  # GRANT role TO ...
                    w.add("admin", "role:" + name_part(present(item.priv_name)))
                elif isinstance(item, str):  # CREATE ROLE name
                    w.add("admin", "role:" + name_part(item))
                elif isinstance(item, ast.RoleSpec):
                    w.add("admin", _role(item))
                else:
                    continue
                named += 1
        if not named:
            w.add("admin", "role:*")
        return []

    return handle


def _fixed(*objects: str) -> Callable[[Walker, ast.Node], Effects]:
    def handle(w: Walker, node: ast.Node) -> Effects:
        for obj in objects:
            w.add("admin", obj)
        w.walk_children(node)
        return []

    return handle


def _named(prefix: str, attr: str) -> Callable[[Walker, ast.Node], Effects]:
    def handle(w: Walker, node: ast.Node) -> Effects:
        value = getattr(node, attr, None)
        w.add("admin", f"{prefix}:" + name_part(str(value) if value is not None else "*"))
        return []

    return handle


def _alter_system(w: Walker, node: ast.AlterSystemStmt) -> Effects:
    name = node.setstmt.name if node.setstmt is not None else None
    w.add("admin", "setting:" + name_part(name or "*"))
    return []


def _rule(w: Walker, node: ast.RuleStmt) -> Effects:
    _existing(w, node, "relation")
    return []


def _call(w: Walker, node: ast.CallStmt) -> Effects:
    call = present(node.funccall)
    schema, name = qualified_name(call.funcname or ())
    for s in [schema] if schema else w.resolver.function_schemas(name):
        w.add("admin", "function:" + qualified_object(s, name))
    w.walk(call.args)
    return []


_DATABASE_WIDE: Iterable[type[ast.Node]] = (
    ast.DoStmt,
    ast.LoadStmt,
    ast.CheckPointStmt,
    ast.CreatedbStmt,
    ast.AlterDatabaseStmt,
    ast.AlterDatabaseSetStmt,
    ast.AlterDatabaseRefreshCollStmt,
    ast.DropdbStmt,
    ast.DefineStmt,
    ast.CreateEnumStmt,
    ast.CreateRangeStmt,
    ast.AlterEnumStmt,
    ast.CreateDomainStmt,
    ast.AlterDomainStmt,
    ast.CreateCastStmt,
    ast.CreateOpClassStmt,
    ast.CreateOpFamilyStmt,
    ast.AlterOpFamilyStmt,
    ast.AlterOperatorStmt,
    ast.AlterTypeStmt,
    ast.CreateConversionStmt,
    ast.CreateTransformStmt,
    ast.CreatePLangStmt,
    ast.CreateFdwStmt,
    ast.AlterFdwStmt,
    ast.CreateForeignServerStmt,
    ast.AlterForeignServerStmt,
    ast.CreateUserMappingStmt,
    ast.AlterUserMappingStmt,
    ast.DropUserMappingStmt,
    ast.ImportForeignSchemaStmt,
    ast.CreateEventTrigStmt,
    ast.AlterEventTrigStmt,
    ast.CreatePublicationStmt,
    ast.AlterPublicationStmt,
    ast.CreateSubscriptionStmt,
    ast.AlterSubscriptionStmt,
    ast.DropSubscriptionStmt,
    ast.CreateTableSpaceStmt,
    ast.DropTableSpaceStmt,
    ast.AlterTableSpaceOptionsStmt,
    ast.AlterTableMoveAllStmt,
    ast.CreateAmStmt,
    ast.AlterCollationStmt,
    ast.AlterDefaultPrivilegesStmt,
    ast.AlterTSConfigurationStmt,
    ast.AlterTSDictionaryStmt,
    ast.AlterFunctionStmt,
    ast.AlterObjectDependsStmt,
    ast.AlterStatsStmt,
    ast.AlterExtensionContentsStmt,
)

DDL_HANDLERS: dict[type[ast.Node], Callable[[Walker, ast.Node], Effects]] = {
    ast.CreateStmt: _create_stmt,  # type: ignore[dict-item]
    ast.CreateForeignTableStmt: _create_foreign_table,  # type: ignore[dict-item]
    ast.CreateTableAsStmt: _create_table_as,  # type: ignore[dict-item]
    ast.ViewStmt: _view,  # type: ignore[dict-item]
    ast.CreateSeqStmt: _create_seq,  # type: ignore[dict-item]
    ast.CompositeTypeStmt: _composite_type,  # type: ignore[dict-item]
    ast.AlterSeqStmt: _relations_as("admin"),
    ast.AlterTableStmt: _alter_table,  # type: ignore[dict-item]
    ast.IndexStmt: _index,  # type: ignore[dict-item]
    ast.CreateTrigStmt: _trigger,  # type: ignore[dict-item]
    ast.RuleStmt: _rule,  # type: ignore[dict-item]
    ast.TruncateStmt: _relations_as("admin"),
    ast.LockStmt: _relations_as("write"),
    ast.RefreshMatViewStmt: _relations_as("admin"),
    ast.CreatePolicyStmt: _relations_as("admin"),
    ast.AlterPolicyStmt: _relations_as("admin"),
    ast.CreateStatsStmt: _relations_as("admin"),
    ast.ClusterStmt: _on_table_or_database("relation"),
    ast.ReindexStmt: _on_table_or_database("relation"),
    ast.VacuumStmt: _vacuum,  # type: ignore[dict-item]
    ast.DropStmt: _drop,  # type: ignore[dict-item]
    ast.CommentStmt: _comment_like("objtype"),
    ast.SecLabelStmt: _comment_like("objtype"),
    ast.AlterOwnerStmt: _comment_like("objectType"),
    ast.RenameStmt: _rename,  # type: ignore[dict-item]
    ast.AlterObjectSchemaStmt: _set_schema,  # type: ignore[dict-item]
    ast.CreateSchemaStmt: _create_schema,  # type: ignore[dict-item]
    ast.CreateFunctionStmt: _function,  # type: ignore[dict-item]
    ast.GrantStmt: _grant,  # type: ignore[dict-item]
    ast.GrantRoleStmt: _roles("granted_roles"),
    ast.CreateRoleStmt: _roles("role"),
    ast.AlterRoleStmt: _roles("role"),
    ast.AlterRoleSetStmt: _roles("role"),
    ast.DropRoleStmt: _roles("roles"),
    ast.ReassignOwnedStmt: _roles("roles", "newrole"),
    ast.DropOwnedStmt: _roles("roles"),
    ast.AlterSystemStmt: _alter_system,  # type: ignore[dict-item]
    ast.ListenStmt: _named("channel", "conditionname"),
    ast.UnlistenStmt: _named("channel", "conditionname"),
    ast.NotifyStmt: _named("channel", "conditionname"),
    ast.CreateExtensionStmt: _named("extension", "extname"),
    ast.AlterExtensionStmt: _named("extension", "extname"),
    ast.CallStmt: _call,  # type: ignore[dict-item]
    **{kind: _fixed("database") for kind in _DATABASE_WIDE},
}
