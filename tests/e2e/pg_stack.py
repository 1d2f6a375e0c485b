"""A local stack with a PostgreSQL resource: the demo stack plus a real PostgreSQL server.

:class:`PgLocalStack` extends :class:`~lockgate.demo.stack.LocalStack` (``lockgate init``,
demo upstream, gateway in a background thread) with:

* on a running PostgreSQL server (tests/pgserver): a database of its own with schemas
  ``sales`` (``orders``), ``marketing`` (``campaigns``) and ``other`` (``secret``, and an
  ``orders`` of its own, for search_path tests), and the gateway's upstream login (SCRAM,
  no CREATEROLE). The server's own grants are broader than the policy on purpose — the
  login owns ``sales.orders`` and may read and write ``other`` — so what denies in these
  tests is the gateway, never the server;
* in lockgate.yaml: a ``listeners.postgres`` section (TLS with the dev certificate), a
  ``kind: postgres`` resource ``warehouse-pg`` (conn_id ``warehouse_pg``) pointing at the
  server with ``tls: verify-full`` against the server's CA, its upstream password
  credential, and ``warehouse_*`` added to the ``prod`` deployment's DAGs;
* the example warehouse policy (examples/policies/warehouse.yaml) in the policies directory.

The database and login names are unique per stack, so several stacks can share one server
and each reads only its own statements from the server's log. Two oracles, both from the
server's side: :func:`unaudited`, what the server executed for the gateway's login that the
audit does not show as allowed (same text, one record per execution, every schema-qualified
relation named); and :meth:`PgLocalStack.table_activity_since`, the server's own scan and
row counters of a schema nobody is granted.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lockgate.audit.record import AuditRow
from lockgate.demo.stack import REPO_ROOT, LocalStack

if TYPE_CHECKING:
    from tests.pgserver import PgServer

RESOURCE = "warehouse-pg"
CONN_ID = "warehouse_pg"
CREDENTIAL = "warehouse-pg-pw"
WAREHOUSE_POLICY = REPO_ROOT / "examples" / "policies" / "warehouse.yaml"
# Run as the superuser in the stack's own database; {login} is the gateway's upstream login.
SCHEMA = """\
CREATE SCHEMA sales;
CREATE TABLE sales.orders (order_id text PRIMARY KEY, customer text NOT NULL, amount int NOT NULL);
INSERT INTO sales.orders VALUES ('seed-1', 'seed', 1);
CREATE SCHEMA marketing;
CREATE TABLE marketing.campaigns (name text PRIMARY KEY, budget int NOT NULL);
INSERT INTO marketing.campaigns VALUES ('spring', 1000), ('autumn', 2000);
CREATE SCHEMA other;
CREATE TABLE other.secret (id int PRIMARY KEY, value text NOT NULL);
INSERT INTO other.secret VALUES (1, 'the-upstream-only-secret');
-- same name as sales.orders: an unqualified name may resolve here under another search_path
CREATE TABLE other.orders (order_id text PRIMARY KEY, customer text NOT NULL, amount int NOT NULL);
INSERT INTO other.orders VALUES ('hidden-1', 'hidden', 999);
GRANT USAGE, CREATE ON SCHEMA sales, marketing, other TO {login};
GRANT ALL ON ALL TABLES IN SCHEMA sales, marketing, other TO {login};
ALTER TABLE sales.orders OWNER TO {login};
"""


class PgLocalStack(LocalStack):
    """The demo stack with a ``kind: postgres`` resource in front of a real PostgreSQL."""

    def __init__(self, workdir: Path, server: PgServer) -> None:
        super().__init__(workdir, tls=True)
        self.server = server
        suffix = secrets.token_hex(4)
        self.database = f"warehouse_{suffix}"
        self.upstream_user = f"lockgate_gw_{suffix}"
        self.upstream_password = secrets.token_urlsafe(24)
        server.create_user(self.upstream_user, self.upstream_password)
        server.psql(f"CREATE DATABASE {self.database}")
        server.psql(SCHEMA.format(login=self.upstream_user), dbname=self.database)
        self.log_start = server.log_position()
        # The set-up's own scans and inserts, for table_activity_since (a leak shows above).
        self.other_activity_at_start = self.table_activity("other")
        self._add_postgres()

    def _add_postgres(self) -> None:
        path = Path(self.config_path)
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc["listeners"]["postgres"] = {
            "host": "127.0.0.1",
            "port": 0,
            "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem"},
        }
        doc["resources"].append(
            {
                "name": RESOURCE,
                "kind": "postgres",
                "host": self.server.host,
                "port": self.server.port,
                "database": self.database,
                "username": self.upstream_user,
                "credential": CREDENTIAL,
                "conn_id": CONN_ID,
                "tls": "verify-full",
                "ca_file": str(self.server.ca_file),
                "connect_timeout": 5,
            }
        )
        doc["credentials"].append({"name": CREDENTIAL, "type": "static"})
        for deployment in doc["deployments"]:
            deployment["dags"].append("warehouse_*")
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        shutil.copy(WAREHOUSE_POLICY, self.workdir / "policies" / "warehouse.yaml")

    def start(self) -> PgLocalStack:
        from lockgate.server import State

        State(self.config).credentials.set(CREDENTIAL, self.upstream_password)
        super().start()
        return self

    def __enter__(self) -> PgLocalStack:
        return self.start()

    # -- clients ------------------------------------------------------------------------------
    @property
    def pg_port(self) -> int:
        assert self.gateway is not None
        return int(self.gateway.postgres_port)

    def mint(self, dag: str = "warehouse_orders", task: str = "clients", run: str = "r-1") -> str:
        """A Lockgate token for ``airflow:prod/<dag>/<task>``, audience the resource."""
        from lockgate.identity import TaskIdentity, TokenIssuer

        assert self.gateway is not None
        issuer = TokenIssuer(self.gateway.state.keys, self.gateway.config.issuer_url)
        return issuer.mint(TaskIdentity("prod", dag, task, run, 1), RESOURCE, 900)[0]

    def connect_kwargs(self, token: str) -> dict[str, Any]:
        """libpq keywords for the gateway, as the secrets backend's Connection has them."""
        return {
            "host": "127.0.0.1",
            "port": self.pg_port,
            "dbname": RESOURCE,
            "user": "lockgate",
            "password": token,
            "sslmode": "verify-full",
            "sslrootcert": str(self.ca_file),
        }

    async def asyncpg_connect(self, token: str) -> Any:
        """An asyncpg connection to the gateway (TLS, the host name checked)."""
        import asyncpg  # type: ignore[import-untyped]

        assert self.ca_file is not None
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return await asyncpg.connect(
            host="127.0.0.1",
            port=self.pg_port,
            user="lockgate",
            password=token,
            database=RESOURCE,
            ssl=context,
        )

    def superuser_query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` run directly on the server as the superuser (not through Lockgate)."""
        import psycopg

        with psycopg.connect(self.server.dsn(dbname=self.database), autocommit=True) as conn:
            return list(conn.execute(sql, params or None).fetchall())

    def table_activity(self, schema: str) -> dict[str, tuple[int, ...]]:
        """The server's own counters for every table of ``schema``: scans (sequential and
        index) and rows inserted, updated and deleted (pg_stat_user_tables). A backend sends
        its counts at the end of a transaction when idle for a second, and when it exits."""
        rows = self.superuser_query(
            "SELECT relname, seq_scan, coalesce(idx_scan, 0), n_tup_ins, n_tup_upd, n_tup_del"
            " FROM pg_stat_user_tables WHERE schemaname = %s",
            (schema,),
        )
        return {str(r[0]): tuple(int(v) for v in r[1:]) for r in rows}

    def table_activity_since(
        self, schema: str, before: dict[str, tuple[int, ...]], *, settle: float = 2.5
    ) -> dict[str, tuple[int, ...]]:
        """Tables of ``schema`` whose counters moved since ``before``, watched for ``settle``
        seconds (counts reach the server's statistics a little after the statements)."""
        deadline = time.monotonic() + settle
        while True:
            now = self.table_activity(schema)
            moved = {t: now[t] for t in now if now[t] != before.get(t)}
            if moved or time.monotonic() > deadline:
                return moved
            time.sleep(0.25)

    # -- what happened --------------------------------------------------------------------------
    def audit_rows(self, *, since_seq: int = 0) -> list[AuditRow]:
        """Every audit record for the resource (after ``since_seq``), oldest first."""
        assert self.gateway is not None
        self.gateway.audit.flush(5.0)
        from lockgate.server import State

        log = State(self.config).audit_log()
        try:
            rows = log.search(resource=RESOURCE, limit=100_000)
        finally:
            log.close()
        return [r for r in rows if r.seq > since_seq]

    def judged(self, task: str | None = None) -> list[Judged]:
        """Every statement the audit shows as judged (only ``task``'s when given)."""
        return judged_statements(r for r in self.audit_rows() if task is None or r.task_id == task)

    def upstream_statements(self, since: int | None = None) -> list[str]:
        """Texts the server logged (``log_statement = all``) for the gateway's login in this
        stack's database, oldest first; a multi-statement query is one entry."""
        start = self.log_start if since is None else since
        return [
            s.text
            for s in self.server.statements(start)
            if s.user == self.upstream_user and s.database == self.database
        ]

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            with contextlib.suppress(Exception):  # the server may be gone already
                self.server.psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")


# -- the oracle: the server's statement log against the audit ------------------------------------
def logged_statements(text: str) -> list[str]:
    """The statements of one logged entry (a multi-statement query split as the server would)."""
    from pglast import split

    try:
        return [s.strip() for s in split(text)] or [text.strip()]
    except Exception:  # not parseable: keep it whole; it then matches nothing allowed
        return [text.strip()]


def statement_text(detail: Mapping[str, Any]) -> str | None:
    """The statement text an engine record carries (redacted as the engine wrote it)."""
    for key in ("statement", "text", "query"):
        value = detail.get(key)
        if isinstance(value, str):
            return value.strip()
    return None


@dataclass(frozen=True)
class Judged:
    """One statement the audit shows: its text, decision, action and object, and the rows
    the server reported for it (an allowed statement's outcome record)."""

    text: str
    decision: str
    action: str | None
    object: str | None
    rows: int | None = None
    objects: tuple[str, ...] = ()  # every object its record names


def _record_key(row: AuditRow, seen: Mapping[object, Judged]) -> object:
    """Which statement a record belongs to: an outcome names its written-ahead ``admitted``
    record by ``detail.ref`` (``<sender>/<seq>``, the chain's seq in one process)."""
    ref = row.detail.get("ref")
    if not isinstance(ref, str):
        return ("seq", row.seq)
    number = ref.rpartition("/")[2]
    if number.isdigit() and (("seq", int(number)) in seen or (("seq", int(number)), 0) in seen):
        return ("seq", int(number))
    return ("ref", ref)


def _objects(row: AuditRow) -> list[str]:
    listed = row.detail.get("objects")
    names = [str(o) for o in listed] if isinstance(listed, list) else []
    return [row.object, *names] if row.object else names


def judged_statements(rows: Iterable[AuditRow]) -> list[Judged]:
    """One entry per judged statement. An admitted record and its outcome are one statement;
    a record of a multi-statement query (``detail["statements"]``) is several."""
    merged: dict[object, Judged] = {}
    for row in rows:
        if row.event not in ("admitted", "allowed", "denied", "upstream_error"):
            continue
        base = _record_key(row, merged)
        parts = row.detail.get("statements")
        texts: list[str | None] = (
            [statement_text(p) for p in parts if isinstance(p, Mapping)]
            if isinstance(parts, list)
            else [statement_text(row.detail)]
        )
        for index, text in enumerate(texts):
            key = base if len(texts) == 1 else (base, index)
            prior = merged.get(key)
            if text is None:
                if prior is None:
                    continue
                text = prior.text
            decision = "deny" if row.decision == "deny" else (prior.decision if prior else "allow")
            reported = row.detail.get("rows")
            count = reported if isinstance(reported, int) else (prior.rows if prior else None)
            objects = tuple(dict.fromkeys([*(prior.objects if prior else ()), *_objects(row)]))
            merged[key] = Judged(text, decision, row.action, row.object, count, objects)
    return list(merged.values())


def matches_audited(logged: str, audited: str) -> bool:
    """Whether ``audited`` is ``logged`` as the engine records it: the same text, or the text
    after the engine's own redaction (literals masked, comments a space, in a text that may
    hold a secret), or one whose masked literals stand for whatever the server saw there."""
    from lockgate.gateway.postgres.redact import MASK, redact

    if logged == audited or redact(logged) == audited:
        return True
    if MASK not in audited:
        return False
    head, *rest = audited.split(MASK)
    if not logged.startswith(head):
        return False
    at = len(head)
    for part in rest:
        found = logged.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return logged.endswith(rest[-1])


def qualified_relations(text: str) -> frozenset[str]:
    """The schema-qualified relations a statement's text names, read with pglast on its own
    (not with the engine's classifier). A PREPARE only names them: it reads nothing."""
    from pglast import ast, parse_sql
    from pglast.visitors import referenced_relations

    try:
        statements = parse_sql(text)
    except Exception:
        return frozenset()
    if len(statements) == 1 and isinstance(statements[0].stmt, ast.PrepareStmt):
        return frozenset()
    return frozenset(name for name in referenced_relations(text) if "." in name)


def unaudited(
    logged: Iterable[str], judged: Iterable[Judged], *, exempt: Iterable[str] = ()
) -> list[str]:
    """Statements the server executed beyond what the audit shows as allowed: each logged
    statement needs an allowed record of its own (one record covers one execution) with the
    same text (masked literals aside) and naming every schema-qualified relation the text
    names. ``exempt``: texts the gateway itself runs."""
    pool = [j for j in judged if j.decision == "allow"]
    used = [False] * len(pool)
    by_text: dict[str, list[int]] = {}
    for index, j in enumerate(pool):
        by_text.setdefault(j.text, []).append(index)
    exempt_set = {e.strip() for e in exempt}
    missing: list[str] = []
    for entry in logged:
        for stmt in logged_statements(entry):
            if stmt in exempt_set:
                continue
            names = qualified_relations(stmt)
            candidates = by_text.get(stmt) or [
                i for i, j in enumerate(pool) if matches_audited(stmt, j.text)
            ]
            pick = next(
                (i for i in candidates if not used[i] and names <= set(pool[i].objects)), None
            )
            if pick is None:
                missing.append(stmt)
            else:
                used[pick] = True
    return missing


def denied_but_executed(logged: Iterable[str], judged: Iterable[Judged]) -> list[str]:
    """Denied statements whose text the server logged although no allowed record has it."""
    allowed_texts = {j.text for j in judged if j.decision == "allow"}
    denied = {j.text for j in judged if j.decision == "deny"} - allowed_texts
    seen = {s for entry in logged for s in logged_statements(entry)}
    return sorted(t for t in denied if t in seen or any(matches_audited(s, t) for s in seen))


def catalog_query() -> str:
    """The gateway's own query at login (the one documented exception to the oracle)."""
    from lockgate.gateway.postgres.scope import RelationCatalog

    return str(RelationCatalog.QUERY).strip()
