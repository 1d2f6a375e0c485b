"""The audit trail as OCSF events, for a SIEM (``audit.ocsf``: one event per line).

Each committed row becomes one event of the Open Cybersecurity Schema Framework
(:data:`OCSF_VERSION`), by what it records:

=====================================================  ==========================================
record                                                 OCSF class (activity)
=====================================================  ==========================================
a request on an HTTP resource (``admitted``,           API Activity 6003 (Create ``run``, Read
``allowed``, ``denied``, ``throttled``,                ``read``, Update ``write``, Other
``upstream_error``)                                    ``admin``)
a CQL or PostgreSQL statement, a Cosmos DB             Datastore Activity 6005 (Read, Query,
data-plane request                                     Write, Create, Delete, List, Other)
a session's login (action ``connect``),                Authentication 3002 (Logon; Logoff for
``auth_failed``, ``session_ended``                     ``session_ended``)
the console's ``console_signed_in``,                   Authentication 3002 (Logon; Logoff for
``console_sign_in_failed``, ``console_signed_out``     ``console_signed_out``)
``token_issued``                                       Authorize Session 3003 (Assign
                                                       Privileges: a short-lived token for one
                                                       resource; ``privileges`` names it)
keys, credentials, revocations, kill switch,           API Activity 6003 (Create, Update,
policy and config reloads, console links               Delete; ``api.operation`` = the event)
=====================================================  ==========================================

``status_id`` comes from the decision (allow: Success; deny, error: Failure), ``status_detail``
is the reason, ``actor.user.name`` the principal, ``actor.session.uid`` the token id (jti),
``src_endpoint.name`` the Airflow deployment, ``time`` the record's time in milliseconds
(a principal ``console:<subject>``, a person signed in to the console, is a User rather
than an Airflow task).
``unmapped.lockgate`` holds the whole row (every record field, ``seq``, ``prev_hash``,
``hash``): the chain can be verified from the export alone (:func:`lockgate.audit.record.
hash_values` over the fields in ``RECORD_FIELDS`` order), and nothing the record says is lost.

What makes a resource's requests Datastore Activity is the catalog (:func:`datastores`:
CQL and PostgreSQL resources, HTTP resources with the Cosmos DB profile); a resource the
catalog did not name when the sink opened (added by a reload) is judged by its record: a
statement in the detail makes it a datastore.

:func:`event` never raises: a row it cannot map (a bug, an event it does not know) becomes a
minimal API Activity event with the row in ``unmapped`` (a mirror that raised would fail the
gateway closed).

The chain covers ``unmapped.lockgate`` only; what a SIEM indexes and shows is the mapped
fields around it. :func:`verify_export` checks both: the chain, and that every event is
exactly the mapping of the row it carries, so editing ``actor.user.name`` or ``status_id`` of
an exported line (and leaving the row alone) is found as surely as editing the row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lockgate import __version__
from lockgate.audit.record import GENESIS, RECORD_FIELDS, AuditRow, hash_values

#: The OCSF schema version of every event (``metadata.version``).
OCSF_VERSION = "1.5.0"

API_ACTIVITY = 6003
DATASTORE_ACTIVITY = 6005
AUTHENTICATION = 3002
AUTHORIZE_SESSION = 3003

_CLASSES = {
    API_ACTIVITY: ("API Activity", "Application Activity"),
    DATASTORE_ACTIVITY: ("Datastore Activity", "Application Activity"),
    AUTHENTICATION: ("Authentication", "Identity & Access Management"),
    AUTHORIZE_SESSION: ("Authorize Session", "Identity & Access Management"),
}
_ACTIVITIES: dict[int, dict[int, str]] = {
    API_ACTIVITY: {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"},
    DATASTORE_ACTIVITY: {
        1: "Read",
        2: "Update",
        3: "Connect",
        4: "Query",
        5: "Write",
        6: "Create",
        7: "Delete",
        8: "List",
        99: "Other",
    },
    AUTHENTICATION: {1: "Logon", 2: "Logoff", 4: "Service Ticket Request", 99: "Other"},
    AUTHORIZE_SESSION: {1: "Assign Privileges", 2: "Assign Groups", 99: "Other"},
}
_PRODUCT = {"name": "Lockgate", "vendor_name": "Lockgate", "version": __version__}

# A request's action -> activity id, per class.
_API_BY_ACTION = {"run": 1, "read": 2, "write": 3}
_STORE_BY_ACTION = {"read": 4, "write": 5}  # a CQL/PostgreSQL read is a query
# A Cosmos DB operation's first word -> Datastore activity (read_document: Read ...).
_STORE_BY_VERB = {
    "read": 1, "query": 4, "list": 8, "create": 6, "upsert": 5, "replace": 2, "patch": 2,
    "delete": 7, "batch": 5, "execute": 5,
}  # fmt: skip
# Events that are not a request on a resource: (API activity, resource type).
_ADMIN = {
    "credential_set": (1, "credential"),
    "credential_rotated": (3, "credential"),
    "key_rotated": (1, "signing_key"),
    "key_retired": (4, "signing_key"),
    "token_revoked": (4, "token"),
    "mint_blocked": (3, "deployment"),
    "mint_unblocked": (3, "deployment"),
    "policy_reloaded": (3, "policy"),
    "config_reloaded": (3, "configuration"),
    "console_link_created": (1, "console_link"),
}
# The console's sign-in events -> Authentication activity (Logon, Logoff).
_CONSOLE_SIGN_IN = {"console_signed_in": 1, "console_sign_in_failed": 1, "console_signed_out": 2}
_CONSOLE_PRINCIPAL = "console:"
# reasons of config_reloaded that mean nothing was applied
_NOT_APPLIED = frozenset({"refused", "invalid_file", "failed"})
_FAILED = frozenset({"deny", "error"})
# decision -> ((action_id, action), (disposition_id, disposition)) of security_control
_CONTROL = {
    "allow": ((1, "Allowed"), (1, "Allowed")),
    "deny": ((2, "Denied"), (2, "Blocked")),
    "error": ((2, "Denied"), (27, "Error")),
}
_DATABASE_TYPES = {1: "Relational", 6: "NoSQL", 99: "Other"}
_NONE: Mapping[str, int] = {}


class _Resource(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


#: OCSF database type ids (``database.type_id``).
RELATIONAL, NOSQL, OTHER_DATABASE = 1, 6, 99


def datastores(resources: Iterable[_Resource]) -> dict[str, int]:
    """The resources whose requests are Datastore Activity, by name, with their OCSF
    database type: PostgreSQL (Relational), CQL and HTTP resources with the Cosmos DB
    profile (NoSQL)."""
    out: dict[str, int] = {}
    for r in resources:
        if r.kind == "postgres":
            out[r.name] = RELATIONAL
        elif r.kind == "cql" or getattr(r, "profile", None) == "cosmos":
            out[r.name] = NOSQL
    return out


def event(row: AuditRow, datastore_names: Mapping[str, int] = _NONE) -> dict[str, Any]:
    """The OCSF event of one committed row (see the module docstring); never raises."""
    try:
        return _event(row, datastore_names)
    except Exception as exc:  # a mirror must not stop the writer: keep the row, say why
        ev = _base(row, API_ACTIVITY, 99)
        ev["api"] = {"operation": str(row.event)}
        ev["unmapped"]["lockgate_mapping_error"] = type(exc).__name__
        return ev


def _event(row: AuditRow, datastore_names: Mapping[str, int]) -> dict[str, Any]:
    name, action = row.event, row.action
    if name in _ADMIN:
        activity, kind = _ADMIN[name]
        ev = _base(row, API_ACTIVITY, activity)
        ev["api"] = {"operation": name}
        target = row.object or row.resource or row.deployment
        ev["resources"] = [{"name": target, "type": kind}] if target else []
        # recorded once done (no decision): a success, unless a reload applied nothing
        failed = row.decision in _FAILED or (
            name == "config_reloaded" and row.reason in _NOT_APPLIED
        )
        _status(ev, 2 if failed else 1)
        return ev
    if name == "token_issued":
        # A Lockgate token is a session authorised for one resource, whose actions policy
        # decides request by request: the privilege it assigns is reaching that resource.
        ev = _base(row, AUTHORIZE_SESSION, 1)
        ev["privileges"] = [f"resource:{row.resource}"] if row.resource else []
        ev["dst_endpoint"] = {"svc_name": row.resource or "lockgate"}
        return _authentication(ev, row)
    if name in _CONSOLE_SIGN_IN:
        ev = _base(row, AUTHENTICATION, _CONSOLE_SIGN_IN[name])
        ev["service"] = {"name": "lockgate console"}
        _status(ev, 2 if name == "console_sign_in_failed" else 1)
        return _authentication(ev, row)
    if name in ("auth_failed", "session_ended") or action == "connect":
        ev = _base(row, AUTHENTICATION, 2 if name == "session_ended" else 1)
        ev["service"] = {"name": row.resource or "lockgate"}
        if name == "session_ended":  # the gateway ended it: the logoff itself succeeded
            _status(ev, 1)
        elif name == "auth_failed":
            _status(ev, 2)
        return _authentication(ev, row)
    if row.resource in datastore_names or _is_statement(row):
        return _datastore(row, datastore_names.get(row.resource or "", OTHER_DATABASE))
    activity = _API_BY_ACTION.get(action or "", 99)
    ev = _base(row, API_ACTIVITY, activity)
    operation = row.detail.get("operation") if isinstance(row.detail, dict) else None
    ev["api"] = {
        "operation": str(operation or action or name),
        "service": {"name": row.resource or "lockgate"},
    }
    ev["resources"] = _resources(row)
    ev["dst_endpoint"] = {"svc_name": row.resource or "lockgate"}
    return ev


def _datastore(row: AuditRow, database_type: int) -> dict[str, Any]:
    detail = row.detail if isinstance(row.detail, dict) else {}
    operation = detail.get("operation")
    if isinstance(operation, str):  # Cosmos DB: its operation names the activity
        activity = _STORE_BY_VERB.get(operation.partition("_")[0], 99)
    else:
        activity = _STORE_BY_ACTION.get(row.action or "", 99)
    ev = _base(row, DATASTORE_ACTIVITY, activity)
    ev["database"] = {
        "name": row.resource or "lockgate",
        "type_id": database_type,
        "type": _DATABASE_TYPES.get(database_type, "Other"),
    }
    if row.object:
        ev["table"] = {"name": row.object}
    statement = detail.get("statement")
    if isinstance(statement, str):  # as the record keeps it: literals already withheld
        ev["query_info"] = {
            "name": str(detail.get("command") or row.action or "statement"),
            "query_string": statement,
        }
    ev["dst_endpoint"] = {"svc_name": row.resource or "lockgate"}
    return ev


def _is_statement(row: AuditRow) -> bool:
    detail = row.detail
    return isinstance(detail, dict) and ("statement" in detail or "keyspace_name" in detail)


def _authentication(ev: dict[str, Any], row: AuditRow) -> dict[str, Any]:
    ev["user"] = dict(ev["actor"].get("user") or {"name": "unknown"})
    if row.jti:
        ev["session"] = {"uid": row.jti}
    return ev


def _resources(row: AuditRow) -> list[dict[str, str]]:
    out = [{"name": row.resource, "type": "lockgate_resource"}] if row.resource else []
    if row.object:
        out.append({"name": row.object, "type": "object"})
    return out


def _base(row: AuditRow, class_uid: int, activity_id: int) -> dict[str, Any]:
    """What every event carries: class, activity, time, status, actor, source, metadata."""
    class_name, category_name = _CLASSES[class_uid]
    activity_name = _ACTIVITIES[class_uid].get(activity_id, "Other")
    if activity_id == 99 and row.action:
        activity_name = str(row.action).capitalize()  # Other: the source's own word
    actor: dict[str, Any] = {}
    if row.principal:
        if str(row.principal).startswith(_CONSOLE_PRINCIPAL):  # a person, not a task
            actor["user"] = {"name": row.principal, "type_id": 1, "type": "User"}
        else:
            actor["user"] = {"name": row.principal, "type_id": 99, "type": "Airflow task"}
    else:
        actor["app_name"] = "lockgate"
    if row.jti:
        actor["session"] = {"uid": row.jti}
    ev: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": class_uid // 1000,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {activity_name}",
        "time": round(float(row.ts) * 1000),
        "severity_id": 1,
        "severity": "Informational",
        "actor": actor,
        "src_endpoint": {"name": row.deployment or "unknown"},
        "metadata": {
            "version": OCSF_VERSION,
            "product": _PRODUCT,
            "log_name": "lockgate-audit",
            "uid": row.hash or str(row.seq),
            "sequence": row.seq,
            "profiles": ["security_control"],
        },
        "unmapped": {"lockgate": row.to_dict()},
    }
    if isinstance(row.detail, dict) and isinstance(row.detail.get("ref"), str):
        ev["metadata"]["correlation_uid"] = row.detail["ref"]  # the admitted record's
    decision = row.decision
    _status(ev, 2 if decision in _FAILED else 1 if decision == "allow" else 0)
    if decision in _FAILED:
        ev["severity_id"], ev["severity"] = 2, "Low"
    if row.reason:
        ev["status_detail"] = str(row.reason)
    if row.status is not None:
        ev["status_code"] = str(row.status)
    # the security_control profile: what the gateway did, and by which rule
    controlled = _CONTROL.get(decision or "")
    if controlled is not None:
        (ev["action_id"], ev["action"]), (ev["disposition_id"], ev["disposition"]) = controlled
    if row.rule:
        ev["policy"] = {"name": str(row.rule)}
    return ev


def _status(ev: dict[str, Any], status_id: int) -> None:
    ev["status_id"] = status_id
    ev["status"] = {0: "Unknown", 1: "Success", 2: "Failure"}[status_id]


# The version of Lockgate that wrote an event: not part of what the record says.
_UNCHECKED = frozenset({("metadata", "product", "version")})
_ROW_KEYS = frozenset({*RECORD_FIELDS, "seq", "prev_hash", "hash", "replica"})


@dataclass
class ExportCheck:
    """What :func:`verify_export` found: events checked, the last hash, and problems as
    ``(line number, what)`` (empty: the export is the chain, unaltered)."""

    events: int = 0
    head: str = GENESIS
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def altered_fields(ev: Mapping[str, Any]) -> list[str]:
    """Where ``ev`` is not the mapping of the row in its ``unmapped.lockgate`` (dotted
    paths; empty when it is). Which resources are datastores, and their database type,
    is taken from the event itself (the catalog is not in the export): a datastore event
    must still be exactly the Datastore Activity mapping of its row, of a known type."""
    unmapped = ev.get("unmapped")
    data = unmapped.get("lockgate") if isinstance(unmapped, Mapping) else None
    if not isinstance(data, Mapping) or not set(data) <= _ROW_KEYS:
        return ["unmapped.lockgate"]
    try:
        row = AuditRow(**{k: v for k, v in data.items() if k != "replica"})
        row.replica = data.get("replica")
    except TypeError:
        return ["unmapped.lockgate"]
    names: dict[str, int] = {}
    database = ev.get("database")
    type_id = database.get("type_id") if isinstance(database, Mapping) else None
    known = type(type_id) is int and type_id in _DATABASE_TYPES  # bool is no type id
    if ev.get("class_uid") == DATASTORE_ACTIVITY and isinstance(type_id, int) and known:
        names = {str(row.resource or ""): type_id}
    try:  # a row edited into what no record can be (a ts that is no number) fails here
        expected = json.loads(json.dumps(event(row, names)))  # as read back from a line
    except (TypeError, ValueError, OverflowError):
        return ["unmapped.lockgate"]
    return _differences(expected, ev, ())


def _differences(expected: object, got: object, path: tuple[str, ...]) -> list[str]:
    if path in _UNCHECKED:
        return []
    if isinstance(expected, Mapping) and isinstance(got, Mapping):
        out: list[str] = []
        for key in sorted(set(expected) | set(got)):
            if key not in expected or key not in got:
                out.append(".".join((*path, str(key))))
            else:
                out += _differences(expected[key], got[key], (*path, str(key)))
        return out
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        out = []
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            out += _differences(e, g, (*path, str(i)))
        return out
    same = type(expected) is type(got) and expected == got
    return [] if same else [".".join(path) or "(event)"]


def verify_export(lines: Iterable[str | bytes], prev_hash: str = GENESIS) -> ExportCheck:
    """Check OCSF lines (``audit.ocsf`` or ``lockgate audit export --format ocsf``) in
    order: each row chains to the one before (from ``prev_hash``: GENESIS, or the
    ``prev_hash`` of the first line kept) and re-hashes to its ``hash``, and each event is
    exactly its row's mapping (:func:`altered_fields`)."""
    check = ExportCheck(head=prev_hash)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        check.events += 1
        try:
            ev = json.loads(line)
            row = ev["unmapped"]["lockgate"]
            vals = tuple(row[name] for name in RECORD_FIELDS)
            seq, prev, digest = row["seq"], row["prev_hash"], row["hash"]
        except (ValueError, TypeError, KeyError) as exc:
            check.problems.append((number, f"not an event with its row: {type(exc).__name__}"))
            continue
        if prev != check.head:
            check.problems.append((number, f"seq {seq}: prev_hash does not chain"))
        try:
            hashes = hash_values(prev, vals, seq) == digest
        except (TypeError, ValueError, AttributeError, OverflowError):
            hashes = False  # edited into what no row can be
        if not hashes:
            check.problems.append((number, f"seq {seq}: the row does not hash to its hash"))
        altered = altered_fields(ev)
        if altered:
            shown = ", ".join(altered[:5])
            check.problems.append((number, f"seq {seq}: not its row's mapping: {shown}"))
        check.head = str(digest)
    return check


__all__ = [
    "API_ACTIVITY",
    "AUTHENTICATION",
    "AUTHORIZE_SESSION",
    "DATASTORE_ACTIVITY",
    "NOSQL",
    "OCSF_VERSION",
    "RELATIONAL",
    "ExportCheck",
    "altered_fields",
    "datastores",
    "event",
    "verify_export",
]
