"""How Lockgate connects to its shared PostgreSQL database, and how it says a failure.

Every connection (the pool's and the watcher's own) is made with the parameters of
:meth:`Connections.kwargs`, computed anew each time because the password may have rotated:
it is read from ``password_file`` (again at every new connection) or ``password_env``.
Each connection gets ``statement_timeout`` and ``standard_conforming_strings`` on
(:meth:`Connections.configure`). A failed attempt is remembered (:class:`ReportingConnection`)
so a pool timeout says what went wrong; every error a caller sees
(:meth:`Connections.unavailable`) names the database by its password-free label
(:func:`dsn_label`) and never holds the password.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, Self

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import PoolTimeout

from lockgate.config.state import PostgresStateSettings
from lockgate.errors import StoreUnavailable

_REPORT_KWARG = "_lockgate_report_error"


class ReportingConnection(psycopg.Connection[TupleRow]):
    """A connection that tells its database why a connection attempt failed, so a pool
    timeout can say what is wrong (refused, bad password ...) rather than only "timeout"."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        report: Callable[[BaseException], None] | None = kwargs.pop(_REPORT_KWARG, None)
        try:
            return super().connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            if report is not None:
                report(exc)
            raise


def dsn_label(dsn: str) -> str:
    """``postgresql://user@host:port/dbname``: enough to find the database, no secret."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgresql://<unparsable dsn>"
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"


class Connections:
    """The connection parameters and error wording of one database (see the docstring)."""

    def __init__(self, settings: PostgresStateSettings, *, replica_id: str) -> None:
        self.settings = settings
        self.replica_id = replica_id
        self.label = dsn_label(settings.dsn)
        self._last_connect_error: str | None = None

    def _password(self) -> str | None:
        s = self.settings
        if s.password_file is not None:
            try:
                return s.password_file.read_text(encoding="utf-8").strip("\r\n")
            except OSError as exc:
                raise psycopg.OperationalError(
                    f"state.postgresql.password_file {s.password_file}: cannot read "
                    f"({exc.strerror})"
                ) from None
            except UnicodeDecodeError:  # e.g. caught mid-rotation; the bytes are never shown
                raise psycopg.OperationalError(
                    f"state.postgresql.password_file {s.password_file}: not UTF-8 text"
                ) from None
        if s.password_env is not None:
            value = os.environ.get(s.password_env)
            if value is None:
                raise psycopg.OperationalError(
                    f"state.postgresql.password_env: {s.password_env} is not set"
                )
            return value
        return None

    def kwargs(self) -> dict[str, Any]:
        """Connection parameters, computed per connection (the password may have rotated)."""
        s = self.settings
        kwargs: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(s.connect_timeout)),
            "application_name": f"lockgate/{self.replica_id}"[:63],
            # A peer gone without a reset (a partition) is noticed in seconds, not hours.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": int(s.connect_timeout * 1000),
            _REPORT_KWARG: self._record_connect_error,
        }
        password = self._password()
        if password is not None:
            kwargs["password"] = password
        return kwargs

    def _record_connect_error(self, exc: BaseException) -> None:
        self._last_connect_error = self._scrub(str(exc).strip().splitlines()[0] if str(exc) else "")

    def configure(self, conn: psycopg.Connection[TupleRow]) -> None:
        ms = str(int(self.settings.statement_timeout * 1000))
        # Backslashes in '...' are text, as store/sql.py reads them, whatever the server says.
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), "
            "set_config('standard_conforming_strings', 'on', false)",
            (ms,),
        )
        conn.commit()

    def _scrub(self, text: str) -> str:
        try:
            password = self._password()
        except psycopg.Error:
            password = None
        return text.replace(password, "***") if password else text

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        """The error a caller sees: what failed, on which database, never the password."""
        if isinstance(exc, PoolTimeout):
            why = f"no connection within {self.settings.connect_timeout:g} s"
            if self._last_connect_error:
                why += f" (last attempt: {self._last_connect_error})"
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            why = f"{type(exc).__name__}: {self._scrub(first)}" if first else type(exc).__name__
        return StoreUnavailable(f"PostgreSQL {self.label}: {why}")
