"""The shared backend: one PostgreSQL database for every replica.

Transactions run on a ``psycopg_pool.ConnectionPool`` (a connection is pinged before it is
used, so a server restart costs no failed call once the server is back; each connection
sets ``statement_timeout``). Every driver error surfaces as
:class:`~lockgate.errors.StoreUnavailable` naming the database by its password-free label.

Change propagation: ``cur.touch(topic)`` bumps ``lockgate_changes`` and sends
``pg_notify('lockgate_state', topic)`` (delivered at commit). One watcher thread per
database LISTENs on a connection of its own and re-reads the versions table on every
notification and every ``catch_up_interval`` (so a lost notification costs at most that);
``version()`` is a memory read, and ``stale_for()`` counts from the last time the change
versions were read (a notification or a poll): only that keeps decisions fresh, so an
ordinary transaction, which succeeds just as well with the watcher gone, never resets it.
The watcher reconnects with backoff after any error and stops on
:meth:`PostgresDatabase.close`; should its thread die all the same, ``stale_for()`` starts
a new one (logged) and the bound keeps growing until versions are read again.

A failover that lost the last commits (or a restore to a point in time) restarts versions
lower; they may climb back to a value a replica holds while its watcher reconnects, and
that replica would miss the writes in between. The watcher therefore remembers the highest
WAL position it has seen: a server whose WAL is behind it after a reconnect has rewound
its history, and the watcher bumps every topic (every replica then reloads everything).

Following the feed is not enough: a store whose reload keeps failing (a table locked by
someone, a statement timing out) while the feed answers serves what it held. A store that
says what it loaded (:meth:`PostgresDatabase.mark_loaded`) is counted: ``stale_for()`` is
the worse of the feed's age and the time since the feed moved past what that store holds.

The password is read from ``password_file`` (again at every new connection, so a rotated
password is picked up) or ``password_env``; it never appears in a label or a message.
How connections are made and failures worded: :mod:`lockgate.store.pg_connections`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from lockgate.config.state import PostgresStateSettings
from lockgate.errors import StoreUnavailable
from lockgate.store.base import TOPICS, Cursor, Dialect
from lockgate.store.pg_connections import Connections, ReportingConnection, dsn_label
from lockgate.store.sql import to_postgres_params

log = logging.getLogger("lockgate.store")

CHANNEL = "lockgate_state"
# One round trip: bump the topic's version and queue the notification (sent at commit).
_TOUCH_SQL = (
    "WITH bumped AS (INSERT INTO lockgate_changes (topic, version) VALUES (%s, 1) "
    "ON CONFLICT (topic) DO UPDATE SET version = lockgate_changes.version + 1 "
    "RETURNING version) "
    "SELECT version, pg_notify('lockgate_state', %s) FROM bumped"
)
_VERSIONS_SQL = "SELECT topic, version FROM lockgate_changes"
_WAL_POSITION_SQL = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_POOL_RETRY_FOR = 4.0  # seconds: retry delays 1 s, 2 s, then a fresh start on demand
_WATCH_TICK = 0.2  # longest wait in the watcher between checks of close()


@lru_cache(maxsize=1024)
def _postgres_query(sql: str) -> bytes:
    """The portable text in psycopg's placeholder style, as bytes (what psycopg sends)."""
    return to_postgres_params(sql).encode()


class PostgresCursor:
    """A :class:`~lockgate.store.base.Cursor` over one psycopg cursor."""

    def __init__(self, db: PostgresDatabase, raw: psycopg.Cursor[TupleRow]) -> None:
        self._db = db
        self._raw = raw
        self.touched: dict[str, int] = {}  # topic -> its version after this transaction

    @property
    def rowcount(self) -> int:
        return self._raw.rowcount

    def execute(self, sql: str, params: Sequence[object] = ()) -> PostgresCursor:
        self._run(_postgres_query(sql), tuple(params))
        return self

    def _run(self, sql: bytes, params: tuple[object, ...]) -> None:
        try:
            self._raw.execute(sql, params)
        except psycopg.Error as exc:
            raise self._db.unavailable(exc) from exc

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._raw.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._raw.fetchall()

    def touch(self, topic: str) -> None:
        if topic in self.touched:
            return
        self._run(_TOUCH_SQL.encode(), (topic, topic))
        row = self._raw.fetchone()
        self.touched[topic] = int(row[0]) if row else 0


class PostgresDatabase:
    """The shared database of every replica (see the module docstring)."""

    dialect: Dialect = "postgresql"

    def __init__(self, settings: PostgresStateSettings, *, replica_id: str) -> None:
        self.settings = settings
        self.replica_id = replica_id
        self._connections = Connections(settings, replica_id=replica_id)
        self.label = self._connections.label
        self._versions: dict[str, int] = {}
        self._versions_lock = threading.Lock()
        self._last_contact: float | None = None  # versions last read (time.monotonic())
        self._last_reached: float | None = None  # any transaction last succeeded
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watcher_started = 0.0  # time.monotonic()
        self._watching = False  # start_watching was called (stays True through restarts)
        # Stores that said what they loaded -> (topic, version loaded, behind the feed since).
        self._followers: weakref.WeakKeyDictionary[object, tuple[str, int, float | None]] = (
            weakref.WeakKeyDictionary()
        )
        self._followers_lock = threading.Lock()
        self._behind_since: float | None = None  # the earliest of them (time.monotonic())
        self._wal_high = 0  # the highest WAL position the watcher has seen
        self._watch_lock = threading.Lock()
        self._pool = ConnectionPool(
            settings.dsn,
            connection_class=ReportingConnection,
            kwargs=self._connections.kwargs,
            min_size=1,
            max_size=settings.pool_size,
            open=False,
            configure=self._connections.configure,
            timeout=settings.connect_timeout,
            # The pool retries a failed connection with a doubling delay for this long, then
            # gives up until the next caller asks: bounded, a server back after a long outage
            # is used within seconds rather than after the last (long) retry delay.
            reconnect_timeout=max(_POOL_RETRY_FOR, settings.connect_timeout),
            name=f"lockgate-{replica_id}",
        )
        self._pool.open(wait=False)  # a server that is down now must not stop construction
        try:
            conn = self._checked_connection()
            try:
                self._reload_versions(conn)
            finally:
                self._pool.putconn(conn)
        except psycopg.Error as exc:
            log.warning("%s", self.unavailable(exc))

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        """The error a caller sees: what failed, on which database, never the password."""
        return self._connections.unavailable(exc)

    # -- transactions ---------------------------------------------------------------------
    def _checked_connection(self) -> ReportingConnection:
        """A pooled connection that answered a ping. After a server restart every idle one
        is dead: each is handed back (the pool replaces it) until a live or new one comes,
        at once rather than after the pool's own check backoff."""
        deadline = time.monotonic() + self.settings.connect_timeout
        while True:
            conn = self._pool.getconn(timeout=max(0.001, deadline - time.monotonic()))
            try:
                ConnectionPool.check_connection(conn)
            except psycopg.Error:
                self._pool.putconn(conn)  # broken: the pool opens a new one
                if time.monotonic() >= deadline:
                    raise PoolTimeout("no live connection") from None
                continue
            return conn

    @contextmanager
    def _session(self, *, read_only: bool) -> Iterator[PostgresCursor]:
        try:
            conn = self._checked_connection()
            try:
                conn.read_only = read_only  # goes out with BEGIN: no extra round trip
                with conn.transaction(), conn.cursor() as raw:
                    cur = PostgresCursor(self, raw)
                    yield cur
            finally:
                self._pool.putconn(conn)
        except psycopg.Error as exc:
            raise self.unavailable(exc) from exc
        self._last_reached = time.monotonic()
        if cur.touched:
            self._merge_versions(cur.touched)

    def transaction(self) -> AbstractContextManager[Cursor]:
        return self._session(read_only=False)

    def read(self) -> AbstractContextManager[Cursor]:
        return self._session(read_only=True)

    # -- versions and staleness -----------------------------------------------------------
    def version(self, topic: str) -> int:
        return self._versions.get(topic, 0)

    def stale_for(self) -> float:
        """What decisions from memory may trust: seconds since the change versions were
        last read, or since the feed moved past what a store could reload, whichever is
        longer (see the module docstring). A process that never watches (a CLI command)
        follows nothing: there it is :meth:`unreached_for`, as before watching existed."""
        if not self._watching:
            return self.unreached_for()
        self._revive_watcher()
        now, last, behind = time.monotonic(), self._last_contact, self._behind_since
        if last is None:
            return math.inf
        return max(0.0, now - last, 0.0 if behind is None else now - behind)

    def unreached_for(self) -> float:
        """Seconds since PostgreSQL last answered (a versions read or any transaction):
        whether asking it now is worth a wait. Not a freshness measure: a dead watcher or a
        store stuck on one locked table leaves it low."""
        reached = [t for t in (self._last_contact, self._last_reached) if t is not None]
        return max(0.0, time.monotonic() - max(reached)) if reached else math.inf

    def mark_loaded(self, follower: object, topic: str, version: int) -> None:
        """``follower`` (a store) now holds ``topic`` as of ``version`` (read before its
        rows). While the feed's version differs, the follower is behind, and ``stale_for``
        counts from when the feed moved past it (see the module docstring)."""
        with self._followers_lock:
            behind = None if self.version(topic) == version else time.monotonic()
            self._followers[follower] = (topic, version, behind)
            self._update_behind(self._versions, time.monotonic())

    def _update_behind(self, versions: dict[str, int], now: float) -> None:
        """Re-mark which followers lag ``versions`` (under ``_followers_lock``)."""
        earliest: float | None = None
        for follower, (topic, loaded, since) in list(self._followers.items()):
            if versions.get(topic, 0) == loaded:
                since = None
            elif since is None:
                since = now
            self._followers[follower] = (topic, loaded, since)
            if since is not None and (earliest is None or since < earliest):
                earliest = since
        self._behind_since = earliest

    def _contact(self) -> None:
        self._last_contact = time.monotonic()

    def _merge_versions(self, seen: dict[str, int], *, every_topic: bool = False) -> None:
        """Take the versions just read (``every_topic``: the whole table, so a topic absent
        is at 0). What the database says wins, lower too: after a failover that lost the
        last commits (or a restore), versions restart lower, and stores reload when a
        version *differs* from what they loaded. A read racing a commit may step a version
        back for a moment; that costs one extra reload, never a missed one."""
        with self._versions_lock:
            merged = {} if every_topic else dict(self._versions)
            merged.update(seen)
            if every_topic:
                merged.update({topic: 0 for topic in self._versions if topic not in seen})
            self._versions = merged  # one assignment: readers never see half a merge
        with self._followers_lock:
            self._update_behind(merged, time.monotonic())

    def _reload_versions(self, conn: psycopg.Connection[TupleRow]) -> None:
        try:
            rows = conn.execute(_VERSIONS_SQL).fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []  # not migrated yet: nothing has changed
            if not conn.autocommit:
                conn.rollback()
        if not conn.autocommit:
            conn.commit()
        self._merge_versions(
            {str(topic): int(version) for topic, version in rows}, every_topic=True
        )
        self._contact()

    # -- the watcher ----------------------------------------------------------------------
    def start_watching(self) -> None:
        with self._watch_lock:
            if self._watcher is not None or self._stop.is_set():
                return
            self._watching = True
            self._start_watcher()

    def _revive_watcher(self) -> None:
        """A watcher thread that died (a bug, an error nobody foresaw) is started again:
        without it nothing reads the versions, and ``stale_for`` grows past the bound."""
        watcher = self._watcher
        if watcher is None or watcher.is_alive() or self._stop.is_set():
            return
        if time.monotonic() - self._watcher_started < _BACKOFF_MAX:
            return  # one that dies at once is not restarted (and logged) on every request
        if not self._watch_lock.acquire(blocking=False):
            return  # another caller is at it; this call must not wait
        try:
            if self._watcher is watcher and not self._stop.is_set():
                log.error("state watcher of %s had stopped; starting it again", self.label)
                self._watcher = None
                self._start_watcher()
        finally:
            self._watch_lock.release()

    def _start_watcher(self) -> None:
        self._watcher_started = time.monotonic()
        self._watcher = threading.Thread(
            target=self._watch, name=f"lockgate-state-watch-{self.replica_id}", daemon=True
        )
        self._watcher.start()

    def _watch(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                conn = ReportingConnection.connect(
                    self.settings.dsn, autocommit=True, **self._connections.kwargs()
                )
            except Exception as exc:  # any failure: retry, never die
                log.debug("state watcher: %s", self._failure(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            try:
                with conn:
                    self._connections.configure(conn)  # a hung server must not hang the poll either
                    conn.execute("LISTEN lockgate_state")  # CHANNEL
                    if self._history_rewound(conn):
                        self._touch_every_topic(conn)
                    self._reload_versions(conn)  # whatever happened while we were away
                    backoff = _BACKOFF_FIRST
                    self._listen(conn)
            except Exception as exc:  # any failure: reconnect, never die
                if not self._stop.is_set():
                    log.warning("state watcher lost its connection: %s", self._failure(exc))
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)

    def _failure(self, exc: Exception) -> StoreUnavailable | str:
        """What to log of a watcher failure: a driver error as a caller would see it, any
        other only by its type (its text could hold anything, a secret included)."""
        return self.unavailable(exc) if isinstance(exc, psycopg.Error) else type(exc).__name__

    def _listen(self, conn: psycopg.Connection[TupleRow]) -> None:
        interval = self.settings.catch_up_interval
        next_poll = time.monotonic() + interval
        while not self._stop.is_set():
            wait = min(_WATCH_TICK, max(0.0, next_poll - time.monotonic()))
            notified = False
            for _ in conn.notifies(timeout=wait, stop_after=1):  # ends by itself: lock freed
                notified = True
            if notified or time.monotonic() >= next_poll:
                if self._history_rewound(conn):  # also keeps the high-water mark current
                    self._touch_every_topic(conn)
                self._reload_versions(conn)
                if not notified:
                    next_poll = time.monotonic() + interval

    def _wal_position(self, conn: psycopg.Connection[TupleRow]) -> int | None:
        """The server's WAL position, or None where it cannot say (a standby, a managed
        server that hides it): the check is then skipped, nothing else changes."""
        try:
            row = conn.execute(_WAL_POSITION_SQL).fetchone()
        except psycopg.DatabaseError:  # the watcher's connection is in autocommit
            return None
        return int(row[0]) if row and row[0] is not None else None

    def _history_rewound(self, conn: psycopg.Connection[TupleRow]) -> bool:
        """Whether the server's WAL is behind the highest position seen (a lossy failover or
        a restore). The mark stays up until every topic was bumped (a failed bump is
        tried again at the next reconnect)."""
        position = self._wal_position(conn)
        if position is None:
            return False
        if position < self._wal_high:
            return True
        self._wal_high = position
        return False

    def _touch_every_topic(self, conn: psycopg.Connection[TupleRow]) -> None:
        """Move every topic, so every replica reloads what survived the rewind."""
        log.warning(
            "PostgreSQL %s: its history went back (a failover that lost commits, or a "
            "restore); every replica reloads all shared state",
            self.label,
        )
        for topic in TOPICS:
            conn.execute(_TOUCH_SQL.encode(), (topic, topic))
        self._wal_high = self._wal_position(conn) or 0

    def close(self) -> None:
        self._stop.set()
        watcher = self._watcher
        if watcher is not None:
            watcher.join(timeout=5)
        self._pool.close(timeout=5)

    def __repr__(self) -> str:
        return f"PostgresDatabase({self.label!r}, replica_id={self.replica_id!r})"


__all__ = ["CHANNEL", "PostgresCursor", "PostgresDatabase", "dsn_label"]
