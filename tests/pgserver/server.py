"""The PostgreSQL test server itself: template data directory, start, stop, statement log.

See the package docstring (:mod:`tests.pgserver`) for what the server is and why.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import itertools
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from lockgate.tlsgen import write_dev_tls

# PostgreSQL 15 first (what the suite is written against), then any other Debian install.
PG_BIN_CANDIDATES = (
    Path("/usr/lib/postgresql/15/bin"),
    *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True),
    Path("/usr/local/pgsql/bin"),
)
SYSTEM_USER = "postgres"
SUPERUSER = "postgres"
# Connections the fixture makes itself carry this application_name, so the statement log
# oracle can leave them out.
FIXTURE_APP = "lockgate-pgserver"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
LOG_FLUSH_TIMEOUT = 10.0

# PostgreSQL 13+ csvlog columns (PG 14 added backend_type/leader_pid/query_id at the end).
_CSV_COLUMNS = (
    "log_time",
    "user_name",
    "database_name",
    "process_id",
    "connection_from",
    "session_id",
    "session_line_num",
    "command_tag",
    "session_start_time",
    "virtual_transaction_id",
    "transaction_id",
    "error_severity",
    "sql_state_code",
    "message",
    "detail",
    "hint",
    "internal_query",
    "internal_query_pos",
    "context",
    "query",
    "query_pos",
    "location",
    "application_name",
    "backend_type",
    "leader_pid",
    "query_id",
)
# log_statement=all writes "statement: <sql>" (simple protocol) and
# "execute <name>: <sql>" (extended protocol; <name> "<unnamed>" or the prepared name).
_STATEMENT_PREFIXES = ("statement: ", "execute ")


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries (or the ``postgres`` system user) are not here."""


@dataclass(frozen=True, slots=True)
class LoggedStatement:
    """One statement as the server logged it (``log_statement=all``)."""

    user: str
    database: str
    application_name: str
    text: str  # the SQL as the server received it (multi-line intact)
    session_id: str  # the server's session id: one per backend connection
    pid: int
    kind: str  # "statement" (simple query) | "execute" (extended protocol)
    prepared_name: str  # extended protocol: "<unnamed>" or the statement name; "" for simple
    detail: str  # e.g. "parameters: $1 = '7'" for extended protocol
    log_time: str


def find_pg_bin() -> Path:
    """The directory holding ``initdb``/``postgres``/``pg_ctl``/``psql``; ``PG_BIN``
    overrides. ``tests/setup-system.sh`` installs them from Debian."""
    env = os.environ.get("PG_BIN")
    for candidate in ([Path(env)] if env else []) + list(PG_BIN_CANDIDATES):
        if (candidate / "postgres").is_file() and (candidate / "initdb").is_file():
            return candidate
    raise PostgresMissing(
        "PostgreSQL server binaries not found (run tests/setup-system.sh as root, or set PG_BIN)"
    )


def _as_root() -> bool:
    return os.geteuid() == 0


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError as exc:
        raise PostgresMissing(f"the {SYSTEM_USER!r} system user does not exist") from exc


def as_server_user(argv: list[str]) -> list[str]:
    """Run a server binary as the postgres system user when we are root (it refuses root)."""
    return ["runuser", "-u", SYSTEM_USER, "--", *argv] if _as_root() else argv


def give_to_server_user(path: Path) -> None:
    """Hand ``path`` to the postgres system user (no-op unless we are root)."""
    if _as_root():
        user = _system_user()
        os.chown(path, user.pw_uid, user.pw_gid)


def write_server_file(path: Path, text: str | bytes, mode: int = 0o600) -> None:
    """Write ``path`` (``mode``, 0600 by default) for the postgres system user to read."""
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
    give_to_server_user(path)


def _run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} {' '.join(argv[1:4])}... exited {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done.stdout


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_user_dir(prefix: str) -> Path:
    """A fresh 0700 directory the postgres system user owns, under the system temp dir (the
    pytest tmp dirs are 0700 root, which the postgres user cannot enter)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    give_to_server_user(path)
    return path


# -- the template data directory: initdb once per run -----------------------------------------

#: A watchdog (see _watchdog): the write end of its pipe and its process.
Watchdog = tuple[int, "subprocess.Popen[bytes]"]

_template_lock = threading.Lock()
_template: tuple[Path, str] | None = None  # (data dir, superuser password)
_template_watchdog: list[Watchdog] = []


def _template_datadir(pg_bin: Path) -> tuple[Path, str]:
    """A data directory made by ``initdb`` once per process; servers start from a copy."""
    global _template
    with _template_lock:
        if _template is not None and _template[0].is_dir():
            return _template
        root = server_user_dir("lockgate-pg-template-")
        atexit.register(shutil.rmtree, root, True)
        # Left open for the life of the process: the watchdog removes the template after it.
        _template_watchdog.append(_watchdog([], root / "data", root))
        password = secrets.token_urlsafe(18)
        pwfile = root / "pwfile"
        write_server_file(pwfile, password + "\n")
        datadir = root / "data"
        _run(
            as_server_user(
                [
                    str(pg_bin / "initdb"),
                    "-D",
                    str(datadir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ]
            ),
            timeout=120,
        )
        pwfile.unlink()
        # Every server's own settings live in lockgate.conf, written per copy.
        with (datadir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'lockgate.conf'\n")
        _template = (datadir, password)
        return _template


def _conf_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# The watchdog's program (see _watchdog): argv = fd, pg_ctl argv (JSON), data dir, what to
# remove.
_WATCHDOG = """
import json, os, shutil, subprocess, sys
fd = int(sys.argv[1])
while os.read(fd, 4096):
    pass
if os.path.exists(os.path.join(sys.argv[3], "postmaster.pid")):
    subprocess.run(json.loads(sys.argv[2]) + ["stop", "-m", "immediate", "-w"], timeout=30,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
shutil.rmtree(sys.argv[4], ignore_errors=True)
"""


def _watchdog(pg_ctl: list[str], datadir: Path, remove: Path) -> Watchdog:
    """Start a process of its own session that, once this process dies without running
    ``atexit`` (SIGTERM from ``timeout``, SIGKILL), stops the server in ``datadir`` if one
    runs there and removes ``remove``. It waits for the end of a pipe only this process holds
    open; returned: that pipe's write end (closing it sets the watchdog off) and the process."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(read_end), json.dumps(pg_ctl), str(datadir),
         str(remove)],
        pass_fds=(read_end,), start_new_session=True, cwd="/",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(read_end)
    return write_end, proc


# -- the server ---------------------------------------------------------------------------------

_marker_ids = itertools.count(1)


@dataclass
class PgServer:
    """A running PostgreSQL server (see :func:`start_pg_server`)."""

    host: str
    port: int
    datadir: Path
    superuser: str
    superpassword: str
    ca_file: Path  # CA that signed the server cert (cert names 127.0.0.1 and localhost)
    log_file: Path  # the CSV statement log
    pg_bin: Path = field(repr=False)
    rundir: Path = field(repr=False)  # holds datadir, the TLS material and the stderr log
    _md5_users: list[str] = field(default_factory=list, repr=False)
    _running: bool = field(default=False, repr=False)
    _watchdog: Watchdog | None = field(default=None, repr=False)

    # -- connecting -----------------------------------------------------------------------

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        sslmode: str = "verify-full",
    ) -> str:
        """A libpq URI; the superuser's when ``user`` is None."""
        if user is None:
            user, password = self.superuser, self.superpassword
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        uri = f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"
        uri += f"?sslmode={sslmode}"
        if sslmode in ("verify-ca", "verify-full"):
            uri += f"&sslrootcert={quote(str(self.ca_file), safe='/')}"
        return uri

    def _socket_conninfo(self, dbname: str = "postgres") -> str:
        # The fixture's own connections: the Unix socket in the 0700 data directory (trust:
        # only root and the postgres user can reach it).
        return (
            f"host={self.datadir} port={self.port} user={self.superuser} "
            f"dbname={dbname} application_name={FIXTURE_APP}"
        )

    def psql(self, sql: str, *, user: str | None = None, dbname: str = "postgres") -> str:
        """Run ``sql`` with the real ``psql`` (as the superuser unless ``user``, a role the
        superuser may become, is given); statements run one by one, the first error raises.
        Returns psql's unaligned, tuples-only output."""
        env = dict(os.environ)
        env.update(
            PGHOST=str(self.datadir),
            PGPORT=str(self.port),
            PGUSER=user or self.superuser,
            PGDATABASE=dbname,
            PGAPPNAME=FIXTURE_APP,
            PGCONNECT_TIMEOUT="10",
        )
        for var in ("PGPASSWORD", "PGSSLMODE", "PGSERVICE", "PGOPTIONS"):
            env.pop(var, None)
        done = subprocess.run(
            [str(self.pg_bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
            input=sql,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd="/",
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def create_user(
        self,
        name: str,
        password: str,
        *,
        method: str = "scram-sha-256",
        superuser: bool = False,
        createrole: bool = False,
    ) -> None:
        """Create a login role whose password is stored (and checked) with ``method``."""
        if method not in ("scram-sha-256", "md5"):
            raise ValueError(f"method must be scram-sha-256 or md5, not {method!r}")
        options = ["LOGIN", "SUPERUSER" if superuser else "NOSUPERUSER"]
        options.append("CREATEROLE" if createrole else "NOCREATEROLE")
        ident = '"' + name.replace('"', '""') + '"'
        literal = "'" + password.replace("'", "''") + "'"
        self.psql(
            f"SET password_encryption = '{method}';\n"
            f"CREATE ROLE {ident} {' '.join(options)} PASSWORD {literal};\n"
        )
        if method == "md5":
            # pg_hba's scram-sha-256 refuses an md5-stored password: give this role its own
            # md5 lines ahead of the general ones.
            self._md5_users.append(name)
            self._write_hba()
            self.psql("SELECT pg_reload_conf();")

    def _write_hba(self) -> None:
        lines = ["# written by tests.pgserver", "local all all trust"]
        for user in self._md5_users:
            quoted = '"' + user.replace('"', '""') + '"'
            for kind in ("hostssl", "host"):
                for net in ("127.0.0.1/32", "::1/128"):
                    lines.append(f"{kind} all {quoted} {net} md5")
        for kind in ("hostssl", "host"):
            for net in ("127.0.0.1/32", "::1/128"):
                lines.append(f"{kind} all all {net} scram-sha-256")
        write_server_file(self.datadir / "pg_hba.conf", "\n".join(lines) + "\n")

    # -- the statement log (the test oracle) ------------------------------------------------

    def log_position(self) -> int:
        """Where the statement log ends now (every statement so far is before it)."""
        self._flush_log()
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def statements(self, since: int = 0) -> list[LoggedStatement]:
        """Statements the server logged after ``since`` (a :meth:`log_position`), oldest
        first, without the fixture's own."""
        end = self.log_position()
        if end <= since:
            return []
        with self.log_file.open("rb") as fh:
            fh.seek(since)
            chunk = fh.read(end - since).decode("utf-8", errors="replace")
        found = []
        # A statement may be far longer than the csv module's 128 KiB default field limit
        # (tests send megabyte-sized statements); the log is the server's own, trusted.
        csv.field_size_limit(max(csv.field_size_limit(), len(chunk)))
        for row in csv.reader(chunk.splitlines(keepends=True)):
            rec = dict(zip(_CSV_COLUMNS, row, strict=False))
            message = rec.get("message", "")
            if rec.get("error_severity") != "LOG" or not message.startswith(_STATEMENT_PREFIXES):
                continue
            if rec.get("application_name") == FIXTURE_APP:
                continue
            head, _, text = message.partition(": ")
            kind, _, name = head.partition(" ")
            found.append(
                LoggedStatement(
                    user=rec.get("user_name", ""),
                    database=rec.get("database_name", ""),
                    application_name=rec.get("application_name", ""),
                    text=text,
                    session_id=rec.get("session_id", ""),
                    pid=int(rec.get("process_id") or 0),
                    kind=kind,
                    prepared_name=name,
                    detail=rec.get("detail", ""),
                    log_time=rec.get("log_time", ""),
                )
            )
        return found

    def _flush_log(self) -> None:
        """Wait until the logging collector has written everything logged so far: log a
        unique marker and wait for it (the collector's pipe keeps order, so every statement
        a backend logged before answering its client is in the file before the marker)."""
        import psycopg  # local: only the statement oracle needs a driver
        from psycopg import sql

        marker = f"lockgate-log-marker-{os.getpid()}-{next(_marker_ids)}"
        with psycopg.connect(self._socket_conninfo(), autocommit=True, connect_timeout=10) as c:
            c.execute(sql.SQL("SELECT {}").format(sql.Literal(marker)))
        needle = marker.encode()
        deadline = time.monotonic() + LOG_FLUSH_TIMEOUT
        while time.monotonic() < deadline:
            if self.log_file.exists():
                with self.log_file.open("rb") as fh:
                    size = fh.seek(0, os.SEEK_END)
                    fh.seek(max(0, size - 65536))
                    if needle in fh.read():
                        return
            time.sleep(0.005)
        raise TimeoutError(f"the statement log {self.log_file} did not show {marker}")

    # -- life cycle --------------------------------------------------------------------------

    def _pg_ctl(self, *args: str, timeout: float) -> str:
        return _run(
            as_server_user([str(self.pg_bin / "pg_ctl"), "-D", str(self.datadir), *args]),
            timeout=timeout,
        )

    def _start(self) -> None:
        stderr_log = self.rundir / "server.log"
        self._pg_ctl(
            "start",
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-l",
            str(stderr_log),
            timeout=START_TIMEOUT + 5,
        )
        self._running = True

    def restart(self) -> None:
        """Fast restart (open connections are cut), same port, same data."""
        # -l: the new postmaster must not hold our captured stdout open.
        self._pg_ctl("restart", "-w", "-m", "fast", "-t", str(int(START_TIMEOUT)),
                     "-l", str(self.rundir / "server.log"),
                     timeout=START_TIMEOUT + STOP_TIMEOUT)  # fmt: skip
        self._running = True

    def pause(self) -> None:
        """Fast shutdown, keeping data and port: the server is down until :meth:`resume`."""
        self._pg_ctl("stop", "-w", "-m", "fast", "-t", str(int(STOP_TIMEOUT)),
                     timeout=STOP_TIMEOUT + 5)  # fmt: skip
        self._running = False

    def resume(self) -> None:
        """Start a paused server again (same port, same data)."""
        self._start()

    def stop(self) -> None:
        """Stop the server (fast shutdown; killed if that hangs) and remove its files."""
        if self._running:
            self._running = False
            try:
                self._pg_ctl("stop", "-w", "-m", "fast", "-t", str(int(STOP_TIMEOUT)),
                             timeout=STOP_TIMEOUT + 5)  # fmt: skip
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill()
        shutil.rmtree(self.rundir, ignore_errors=True)
        if self._watchdog is not None:
            fd, proc = self._watchdog
            self._watchdog = None
            os.close(fd)  # the watchdog finds nothing left and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def _start_watchdog(self) -> None:
        pg_ctl = as_server_user([str(self.pg_bin / "pg_ctl"), "-D", str(self.datadir)])
        self._watchdog = _watchdog(pg_ctl, self.datadir, self.rundir)

    def _kill(self) -> None:
        pidfile = self.datadir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_pg_server(
    workdir: Path, *, tls: bool = True, settings: dict[str, str] | None = None
) -> PgServer:
    """Start a private PostgreSQL server on a free 127.0.0.1 port and return it running.

    ``workdir`` gets a ``pgserver`` symlink to the server's files (which live in a directory
    the postgres system user owns). ``settings`` are extra ``postgresql.conf`` lines (they
    override the defaults here). Raises :class:`PostgresMissing` without the binaries.
    """
    pg_bin = find_pg_bin()
    if _as_root():
        _system_user()
    template, password = _template_datadir(pg_bin)
    rundir = server_user_dir("lockgate-pg-")
    # The CA file must be readable by clients running as anyone; the data dir stays 0700.
    os.chmod(rundir, 0o755)  # noqa: S103
    datadir = rundir / "data"
    _run(as_server_user(["cp", "-a", str(template), str(datadir)]), timeout=60)
    tls_dir = rundir / "tls"
    paths = write_dev_tls(tls_dir, ["127.0.0.1", "localhost"])
    give_to_server_user(tls_dir)
    for name in ("cert", "key"):
        give_to_server_user(paths[name])
    os.chmod(tls_dir, 0o755)  # noqa: S103 -- the key file itself is 0600
    os.chmod(paths["ca"], 0o644)
    log_dir = rundir / "log"
    log_dir.mkdir(mode=0o755)
    give_to_server_user(log_dir)

    conf: dict[str, str] = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(datadir),
        "ssl": "on" if tls else "off",
        "ssl_cert_file": str(paths["cert"]),
        "ssl_key_file": str(paths["key"]),
        "ssl_ca_file": str(paths["ca"]),
        "password_encryption": "scram-sha-256",
        "logging_collector": "on",
        "log_destination": "csvlog",
        "log_directory": str(log_dir),
        "log_filename": "postgresql.log",
        "log_file_mode": "0644",
        "log_rotation_age": "0",
        "log_rotation_size": "0",
        "log_statement": "all",
        "log_connections": "on",
        "log_disconnections": "on",
        "lc_messages": "C",
        # A test server: durability is not what is under test, start-up and speed are.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "shared_buffers": "32MB",
    }
    conf.update(settings or {})
    last_error: Exception | None = None
    for _attempt in range(5):  # a free port can be taken between probe and bind
        port = _free_port()
        conf["port"] = str(port)
        write_server_file(
            datadir / "lockgate.conf",
            "".join(f"{key} = {_conf_value(value)}\n" for key, value in conf.items()),
        )
        server = PgServer(
            host="127.0.0.1",
            port=port,
            datadir=datadir,
            superuser=SUPERUSER,
            superpassword=password,
            ca_file=paths["ca"],
            log_file=log_dir / "postgresql.csv",
            pg_bin=pg_bin,
            rundir=rundir,
        )
        server._write_hba()
        try:
            server._start()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            last_error = exc
            server._kill()
            continue
        server._start_watchdog()
        atexit.register(server.stop)
        with contextlib.suppress(OSError):
            link = workdir / "pgserver"
            if not link.exists():
                link.symlink_to(rundir)
        return server
    server_log = ""
    with contextlib.suppress(OSError):
        server_log = (rundir / "server.log").read_text()[-2000:]
    shutil.rmtree(rundir, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start: {last_error}\n{server_log}")
