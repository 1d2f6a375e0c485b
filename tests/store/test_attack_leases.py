"""Role leases in the shared state when processes share one ``replica_id``.

``lockgate serve --workers N`` runs N worker processes on one host; each opens its own
:class:`~lockgate.gateway.role_leases.RoleLeases` under the same ``replica_id`` (the host
name), and the supervisor restarts a worker that exits. A lease of "this replica" created
before this process started reads as a previous incarnation's -- so a restarted worker
could take its live siblings' roles for orphans and drop them (an availability fault: every
task holding such a login would lose it). Leases now name the process holding them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lockgate.config import PostgresStateSettings
from lockgate.gateway.role_leases import RoleLeases
from lockgate.store import PostgresDatabase


def test_another_replicas_live_roles_are_not_orphans(
    pg_state: Callable[..., PostgresStateSettings],
) -> None:
    """What holds: a replica that heartbeats keeps its leases; another replica sees none of
    them as orphans, and does see those of a replica gone quiet past the grace."""
    settings = pg_state()
    db_a = PostgresDatabase(settings, replica_id="a")
    db_b = PostgresDatabase(settings, replica_id="b")
    try:
        a = RoleLeases(db_a, "a", grace=0.5)
        a.record("pg", "lg_live", time.time() + 600)
        b = RoleLeases(db_b, "b", grace=0.5)
        assert b.orphans() == []
        time.sleep(0.7)  # a stops heartbeating: died
        assert [lease.role for lease in b.orphans()] == ["lg_live"]
    finally:
        db_a.close()
        db_b.close()


def test_a_restarted_worker_leaves_its_siblings_roles_alone(
    pg_state: Callable[..., PostgresStateSettings],
) -> None:
    """What holds (a lease names the process holding it): a worker restarted under the same
    replica id leaves a live sibling's roles alone."""
    settings = pg_state()
    db_1 = PostgresDatabase(settings, replica_id="host")
    db_2 = PostgresDatabase(settings, replica_id="host")
    try:
        worker_1 = RoleLeases(db_1, "host", grace=30)
        worker_1.record("pg", "lg_task_login", time.time() + 600)  # a task is using it
        time.sleep(0.05)
        worker_2 = RoleLeases(db_2, "host", grace=30)  # restarted by the supervisor
        worker_1.heartbeat()  # worker 1 is alive and well
        orphans = [lease.role for lease in worker_2.orphans()]
        assert orphans == [], f"worker 2 would drop {orphans}"
    finally:
        db_1.close()
        db_2.close()
