"""The console's sign-in state on the shared PostgreSQL: a session one replica started is
live on another, and a one-time link used on two replicas at once signs in once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lockgate.console.sessions import ConsoleStore, Pending
from lockgate.console.web import ConsoleUser
from lockgate.store import PostgresDatabase
from tests.pgserver import PgServer
from tests.pgserver.state import shared_state_settings

ANN = ConsoleUser(subject="oid-ann", name="ann", role="admin", via="oidc")


def test_two_replicas_share_sessions_pending_sign_ins_and_links(
    pg_server: PgServer, tmp_path: Path
) -> None:
    settings = shared_state_settings(pg_server, tmp_path)
    db_a = PostgresDatabase(settings, replica_id="a")
    db_b = PostgresDatabase(settings, replica_id="b")
    try:
        a, b = ConsoleStore(db_a), ConsoleStore(db_b)
        sid = a.start(ANN, ttl=600)
        seen = b.lookup(sid, idle_timeout=60)
        assert seen is not None and seen.user == ANN
        assert b.end(sid) and a.lookup(sid, idle_timeout=60) is None

        a.remember("state-1", Pending("n", "v", "/console/"))
        assert b.take("state-1") == Pending("n", "v", "/console/")
        assert a.take("state-1") is None

        for _ in range(5):
            token = a.add_link(ttl=60)
            with ThreadPoolExecutor(4) as pool:
                wins = list(pool.map(ConsoleStore.use_link, [a, b, a, b], [token] * 4))
            assert sorted(wins) == [False, False, False, True]
            assert b.link_state(token) == "used"
    finally:
        db_a.close()
        db_b.close()
