"""The revocation store's tables (:mod:`lockgate.identity.revocation`): its schema steps
(registered there under the ``revocations`` domain) and the statements that write them."""

from __future__ import annotations

from lockgate.store import Migration

#: The schema's domain in ``lockgate_schema`` and the topic every write touches.
DOMAIN = TOPIC = "revocations"

MIGRATIONS = (
    Migration(
        1,
        "revoked tokens, DAGs, runs and task tries; mint blocks",
        # IF NOT EXISTS: SQLite files written before schema versions existed hold these
        # tables already, with the same columns.
        """
        CREATE TABLE IF NOT EXISTS revoked_jti (
            jti TEXT NOT NULL, deployment TEXT NOT NULL,
            expires_at REAL NOT NULL, reason TEXT NOT NULL, revoked_at REAL NOT NULL,
            PRIMARY KEY (jti, deployment)
        );
        CREATE TABLE IF NOT EXISTS revoked_dag (
            deployment TEXT NOT NULL, dag_id TEXT NOT NULL, run_id TEXT NOT NULL DEFAULT '',
            before REAL NOT NULL, expires_at REAL NOT NULL, reason TEXT NOT NULL,
            PRIMARY KEY (deployment, dag_id, run_id)
        );
        CREATE TABLE IF NOT EXISTS revoked_try (
            deployment TEXT NOT NULL, dag_id TEXT NOT NULL, task_id TEXT NOT NULL,
            run_id TEXT NOT NULL, try_number INTEGER NOT NULL, map_index INTEGER NOT NULL,
            expires_at REAL NOT NULL, reason TEXT NOT NULL, revoked_at REAL NOT NULL,
            PRIMARY KEY (deployment, dag_id, task_id, run_id, try_number, map_index)
        );
        CREATE TABLE IF NOT EXISTS mint_block (
            deployment TEXT NOT NULL, dag_id TEXT NOT NULL,
            blocked_at REAL NOT NULL, blocked_by TEXT NOT NULL, reason TEXT NOT NULL,
            PRIMARY KEY (deployment, dag_id)
        );
        """,
    ),
)
#: SQLite files written before jti revocations were scoped to a deployment hold them for any.
MIGRATE_UNSCOPED_JTI = (
    "ALTER TABLE revoked_jti RENAME TO revoked_jti_unscoped",
    """CREATE TABLE revoked_jti (
        jti TEXT NOT NULL, deployment TEXT NOT NULL,
        expires_at REAL NOT NULL, reason TEXT NOT NULL, revoked_at REAL NOT NULL,
        PRIMARY KEY (jti, deployment)
    )""",
    "INSERT INTO revoked_jti SELECT jti, '*', expires_at, reason, revoked_at "
    "FROM revoked_jti_unscoped",
    "DROP TABLE revoked_jti_unscoped",
)

# Writes: one upsert per table, keyed on its primary key (a second revocation of the same
# target replaces the first, as INSERT OR REPLACE did).
UPSERT_JTI = (
    "INSERT INTO revoked_jti (jti, deployment, expires_at, reason, revoked_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (jti, deployment) DO UPDATE SET "
    "expires_at = excluded.expires_at, reason = excluded.reason, revoked_at = excluded.revoked_at"
)
UPSERT_DAG = (
    "INSERT INTO revoked_dag (deployment, dag_id, run_id, before, expires_at, reason) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (deployment, dag_id, run_id) DO UPDATE SET "
    "before = excluded.before, expires_at = excluded.expires_at, reason = excluded.reason"
)
UPSERT_TRY = (
    "INSERT INTO revoked_try (deployment, dag_id, task_id, run_id, try_number, map_index, "
    "expires_at, reason, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (deployment, dag_id, task_id, run_id, try_number, map_index) DO UPDATE SET "
    "expires_at = excluded.expires_at, reason = excluded.reason, revoked_at = excluded.revoked_at"
)
UPSERT_BLOCK = (
    "INSERT INTO mint_block (deployment, dag_id, blocked_at, blocked_by, reason) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (deployment, dag_id) DO UPDATE SET "
    "blocked_at = excluded.blocked_at, blocked_by = excluded.blocked_by, "
    "reason = excluded.reason"
)
EXPIRING_TABLES = ("revoked_jti", "revoked_dag", "revoked_try")


__all__ = [
    "DOMAIN",
    "EXPIRING_TABLES",
    "MIGRATE_UNSCOPED_JTI",
    "MIGRATIONS",
    "TOPIC",
    "UPSERT_BLOCK",
    "UPSERT_DAG",
    "UPSERT_JTI",
    "UPSERT_TRY",
]
