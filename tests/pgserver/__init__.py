"""A real, throwaway PostgreSQL 15 server for tests and benchmarks.

:func:`start_pg_server` copies a data directory made once per run by ``initdb`` (so a server
starts in well under the ~3 s a fresh ``initdb`` costs), writes its own TLS material (a CA and
a server certificate for 127.0.0.1 and localhost, from :mod:`lockgate.tlsgen`), a
``pg_hba.conf`` that demands SCRAM (TLS and plain TCP, loopback only) and starts ``postgres``
on a free 127.0.0.1 port. The server refuses to run as root, so when the tests run as root
every server binary runs as the ``postgres`` system user in a directory that user owns.

The server's own statement log is the test oracle: ``log_statement=all`` into a CSV log, read
back by :meth:`PgServer.statements` (user, database, application name, text -- multi-line
statements intact). Statements the fixture itself runs (``psql``, ``create_user``, log markers)
are left out.

A server stops by itself: :meth:`PgServer.stop` from the pytest fixtures' finalizers and from
``atexit`` for anything else (benchmarks), with a kill if a fast shutdown hangs.
"""

from tests.pgserver.server import (
    LoggedStatement,
    PgServer,
    PostgresMissing,
    as_server_user,
    find_pg_bin,
    server_user_dir,
    start_pg_server,
    write_server_file,
)

__all__ = [
    "LoggedStatement",
    "PgServer",
    "PostgresMissing",
    "as_server_user",
    "find_pg_bin",
    "server_user_dir",
    "start_pg_server",
    "write_server_file",
]
