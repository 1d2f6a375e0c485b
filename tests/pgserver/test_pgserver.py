"""The PostgreSQL test server: TLS, SCRAM and md5 logins, the statement log oracle, restart,
and no server left behind by a killed run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.pgserver import PgServer
from tests.pgserver.fixtures import PgServerFactory, require_postgres


def test_a_statement_shows_up_in_the_log_with_user_database_and_application(
    pg_server: PgServer,
) -> None:
    pg_server.create_user("oracle_reader", "s3cret-oracle")
    since = pg_server.log_position()
    with psycopg.connect(
        pg_server.dsn("oracle_reader", "s3cret-oracle"), application_name="oracle-app"
    ) as conn:
        conn.execute("SELECT 1 AS one,\n  'multi-line' AS two")
        conn.execute("SELECT %s::int", (7,), prepare=True)
    logged = pg_server.statements(since)
    texts = [s.text for s in logged]
    assert "SELECT 1 AS one,\n  'multi-line' AS two" in texts
    assert all(s.user == "oracle_reader" for s in logged)
    assert all(s.database == "postgres" for s in logged)
    assert all(s.application_name == "oracle-app" for s in logged)
    executed = [s for s in logged if s.kind == "execute"]
    assert [s.text for s in executed] == ["SELECT $1::int"]
    assert "$1 = '7'" in executed[0].detail
    # Nothing before the position, and none of the fixture's own statements.
    assert not any("CREATE ROLE" in s.text for s in logged)
    assert not any("lockgate-log-marker" in s.text for s in logged)
    assert pg_server.statements(pg_server.log_position()) == []


def test_scram_and_md5_users_log_in_over_verified_tls(pg_server: PgServer) -> None:
    pg_server.create_user("scram_user", "pw-scram")
    pg_server.create_user("md5_user", "pw-md5", method="md5")
    stored = dict(
        line.split("|", 1)
        for line in pg_server.psql(
            "SELECT rolname, left(rolpassword, 4) FROM pg_authid"
            " WHERE rolname IN ('scram_user', 'md5_user')"
        ).split()
    )
    assert stored["scram_user"] == "SCRA"  # SCRAM-SHA-256$...
    assert stored["md5_user"].startswith("md5")
    for user, password in (("scram_user", "pw-scram"), ("md5_user", "pw-md5")):
        with psycopg.connect(pg_server.dsn(user, password)) as conn:
            row = conn.execute("SELECT current_user, ssl FROM pg_stat_ssl"
                               " WHERE pid = pg_backend_pid()").fetchone()  # fmt: skip
            assert row == (user, True)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.dsn("scram_user", "wrong"))


def test_plain_tcp_is_accepted_with_a_password_too(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn(sslmode="disable")) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (False,)


def test_psql_raises_on_error(pg_server: PgServer) -> None:
    assert pg_server.psql("SELECT 40 + 2").strip() == "42"
    with pytest.raises(RuntimeError, match="no_such_table"):
        pg_server.psql("SELECT * FROM no_such_table")


def test_restart_keeps_the_port_and_the_data(pg_server_factory: PgServerFactory) -> None:
    server = pg_server_factory(settings={"max_connections": "20"})
    port = server.port
    server.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (5)")
    with psycopg.connect(server.dsn()) as conn:
        server.restart()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert server.port == port
    with psycopg.connect(server.dsn()) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (5,)
        assert conn.execute("SHOW max_connections").fetchone() == ("20",)
    server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.dsn(), connect_timeout=2)
    assert not server.datadir.exists()


def test_tls_can_be_off(pg_server_factory: PgServerFactory) -> None:
    server = pg_server_factory(tls=False)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.dsn(sslmode="require"), connect_timeout=5)
    with psycopg.connect(server.dsn(sslmode="disable")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from tests.pgserver import start_pg_server
server = start_pg_server(Path(sys.argv[1]))
print(server.port, server.rundir, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_server_outlives_no_killed_test_run(tmp_path: Path) -> None:
    require_postgres()
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo)])}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    port, rundir = done.stdout.split()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Path(rundir).exists():
        time.sleep(0.1)
    assert not Path(rundir).exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(port)), 1):
        pass
