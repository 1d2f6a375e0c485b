"""``lockgate db``: the state's schema.

    lockgate db upgrade     apply every missing schema step (all stores), say what was done
    lockgate db check       exit 0 when the schema is current, 1 naming what is missing

With ``state: postgresql`` and ``migrate_on_start: false`` a replica refuses to start on an
old schema: run ``db upgrade`` once (a deployment step, a Kubernetes Job) before rolling the
replicas. With SQLite every store's file is upgraded when the gateway opens it; ``db check``
still tells what an old data directory lacks. Concurrent upgrades are safe (an advisory lock
on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from lockgate._cli_state import add_command, add_group
from lockgate._cli_state import config_from as _config
from lockgate.config import LockgateConfig

if TYPE_CHECKING:
    from lockgate._cli_state import Subcommands
    from lockgate.store import Database, Migration

#: Every module that registers a schema domain at import (a test checks none is missing).
SCHEMA_MODULES = (
    "lockgate.identity.revocation",
    "lockgate.identity.key_table",
    "lockgate.identity.once",
    "lockgate.identity.rate_limit",
    "lockgate.credentials.store",
    "lockgate.gateway.role_leases",
    "lockgate.gateway.http.profiles.databricks.registry",
    "lockgate.gateway.http.profiles.arm.runs",
    "lockgate.audit.shared",
    "lockgate.quotas.shared",
    "lockgate.alerts.trail",
    "lockgate.gateway.live_sessions",
    "lockgate.console.sessions",
)


def schema_domains() -> dict[str, tuple[Migration, ...]]:
    """Every registered domain, once all the modules that own a schema are imported."""
    from lockgate.store import registered_domains

    for module in SCHEMA_MODULES:
        importlib.import_module(module)
    return registered_domains()


def _targets(
    cfg: LockgateConfig, *, create: bool
) -> Iterator[tuple[str, Database | None, tuple[Migration, ...]]]:
    """(domain, its database, its steps) for every domain the configured backend holds.
    SQLite: one file per domain; ``create=False`` leaves a missing file alone (None)."""
    from lockgate.state import NOT_ON_SQLITE, sqlite_path
    from lockgate.store import CORE_DOMAIN, PostgresDatabase, SqliteDatabase

    domains = schema_domains()
    pg = cfg.state.postgresql
    if pg is not None:
        shared = PostgresDatabase(pg, replica_id=pg.resolved_replica_id())
        try:
            for domain, steps in domains.items():
                yield domain, shared, steps
        finally:
            shared.close()
        return
    for domain, steps in domains.items():
        if domain in NOT_ON_SQLITE or domain == CORE_DOMAIN:
            continue  # the core tables come with each file's own domain
        path = sqlite_path(cfg, domain)
        if not create and not path.exists():
            yield domain, None, steps
            continue
        db = SqliteDatabase(path)
        try:
            yield domain, db, steps
        finally:
            db.close()


def _where(cfg: LockgateConfig) -> str:
    from lockgate.store.postgres import dsn_label

    pg = cfg.state.postgresql
    return dsn_label(pg.dsn) if pg is not None else str(cfg.data_dir)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from lockgate.store import migrate

    cfg = _config(args)
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    applied = 0
    for domain, db, steps in _targets(cfg, create=True):
        assert db is not None
        for step in migrate(db, domain, steps):
            print(f"{db.label}: {domain} {step.version}: {step.description}: applied")
            applied += 1
    done = f" ({applied} step(s) applied)" if applied else " (nothing to do)"
    print(f"{_where(cfg)}: schema current{done}")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    from lockgate.store import UPGRADE_COMMAND, pending

    cfg = _config(args)
    missing: list[str] = []
    for domain, db, steps in _targets(cfg, create=False):
        todo = list(steps) if db is None else pending(db, domain, steps)
        missing += [f"{domain} {m.version}: {m.description}" for m in todo]
    where = _where(cfg)
    if missing:
        for line in missing:
            print(f"{where}: missing {line}", file=sys.stderr)
        print(f"{where}: schema not current; run `{UPGRADE_COMMAND}`", file=sys.stderr)
        return 1
    print(f"{where}: schema current")
    return 0


def add_db_commands(sub: Subcommands) -> None:
    db = add_group(sub, "db", "the state's schema (SQLite files or the shared PostgreSQL)")
    add_command(db, "upgrade", cmd_db_upgrade, "apply every missing schema step; say what was done")
    add_command(
        db,
        "check",
        cmd_db_check,
        "exit 0 when the schema is current, else 1 naming what is missing",
    )
