"""Console sign-ins kept server-side: sessions, pending OIDC sign-ins and one-time links.

The state lives in the store domain ``console`` (``data_dir/console.db`` on SQLite, the
shared PostgreSQL otherwise), so every worker and replica knows a session another one
started, and ``lockgate console link`` run beside a serving gateway makes a link it honours.

Only digests are stored: a session id, an OIDC ``state`` and a link token are 256-bit
random values the browser holds; the tables hold their SHA-256, so whoever reads the
database cannot sign in with what it finds there. Single use is one ``DELETE`` (or
``UPDATE ... WHERE used_at IS NULL``) whose row count says who came first, atomic across
processes. A user's role is fixed at sign-in; a session ends at ``session_ttl`` after it
began or ``idle_timeout`` after its last request, whichever comes first.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from lockgate.console.web import ConsoleUser
from lockgate.store import Database, Migration, open_store, register_domain

DOMAIN = "console"
MIGRATIONS = (
    Migration(
        1,
        "console sessions, pending OIDC sign-ins and one-time admin links (digests only)",
        """
        CREATE TABLE IF NOT EXISTS console_sessions (
            id_hash TEXT PRIMARY KEY, subject TEXT NOT NULL, name TEXT NOT NULL,
            role TEXT NOT NULL, via TEXT NOT NULL, csrf TEXT NOT NULL,
            created_at REAL NOT NULL, last_seen REAL NOT NULL, expires_at REAL NOT NULL);
        CREATE TABLE IF NOT EXISTS console_pending (
            state_hash TEXT PRIMARY KEY, nonce TEXT NOT NULL, verifier TEXT NOT NULL,
            next_path TEXT NOT NULL, expires_at REAL NOT NULL);
        CREATE TABLE IF NOT EXISTS console_links (
            token_hash TEXT PRIMARY KEY, created_at REAL NOT NULL, expires_at REAL NOT NULL,
            used_at REAL);
        """,
    ),
)
register_domain(DOMAIN, MIGRATIONS)

#: Seconds a pending OIDC sign-in (state, nonce, PKCE verifier) waits for its callback.
PENDING_TTL = 600.0
#: Pending sign-ins held at most (anyone may start one: the table must not grow unbounded;
#: past it the oldest are dropped).
MAX_PENDING = 10_000
#: last_seen is written at most this often per session (every request would be a write).
_TOUCH_EVERY = 15.0
_PURGE_EVERY = 60.0


def digest(secret: str) -> str:
    """What the tables keep of a random value the browser holds."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Session:
    """A live sign-in: the user and the CSRF token every POST of it must carry."""

    user: ConsoleUser
    csrf: str
    expires_at: float


@dataclass(frozen=True)
class Pending:
    """An OIDC sign-in between the redirect to the provider and its callback."""

    nonce: str
    verifier: str
    next_path: str


class ConsoleStore:
    """Sessions, pending sign-ins and links over one database (see the module docstring).

    ``where``: the State's database (``ctx.database("console")``), a SQLite path, or None
    (in memory: tests). ``idle_timeout``: sessions idle that long are purged too (None:
    only at their expiry; :meth:`lookup` refuses them either way)."""

    def __init__(
        self,
        where: Database | None,
        *,
        idle_timeout: float | None = None,
        migrate_schema: bool | None = None,
    ) -> None:
        self.db, self._owned = open_store(where, DOMAIN, MIGRATIONS, migrate_schema=migrate_schema)
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._last_purge = float("-inf")

    # -- sessions -------------------------------------------------------------------------
    def start(self, user: ConsoleUser, *, ttl: float, now: float | None = None) -> str:
        """A new session for ``user``; the session id for the cookie (never stored)."""
        now = time.time() if now is None else now
        session_id = new_secret()
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO console_sessions (id_hash, subject, name, role, via, csrf, "
                "created_at, last_seen, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (digest(session_id), user.subject, user.name, user.role, user.via,
                 new_secret(), now, now, now + ttl),
            )  # fmt: skip
        self._purge(now)
        return session_id

    def lookup(
        self, session_id: str, *, idle_timeout: float, now: float | None = None
    ) -> Session | None:
        """The live session of ``session_id``; None when unknown, expired or idle too long
        (an idle or expired one is deleted)."""
        now = time.time() if now is None else now
        key = digest(session_id)
        with self.db.read() as cur:
            cur.execute(
                "SELECT subject, name, role, via, csrf, last_seen, expires_at "
                "FROM console_sessions WHERE id_hash = ?",
                (key,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        subject, name, role, via, csrf, last_seen, expires_at = row
        if now >= float(expires_at) or now - float(last_seen) >= idle_timeout:
            self.end(session_id)
            return None
        if now - float(last_seen) >= _TOUCH_EVERY:
            with self.db.transaction() as cur:
                cur.execute(
                    "UPDATE console_sessions SET last_seen = ? WHERE id_hash = ?", (now, key)
                )
        user = ConsoleUser(subject=str(subject), name=str(name), role=str(role), via=str(via))
        return Session(user, str(csrf), float(expires_at))

    def end(self, session_id: str) -> bool:
        """Sign out: the session is gone; True when there was one."""
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM console_sessions WHERE id_hash = ?", (digest(session_id),))
            return cur.rowcount == 1

    # -- pending OIDC sign-ins ------------------------------------------------------------
    def remember(self, state: str, pending: Pending, *, now: float | None = None) -> None:
        """Hold ``pending`` under ``state``. With :data:`MAX_PENDING` held already the
        oldest make room: refusing instead would let one burst of unsigned requests shut
        every sign-in out until the burst expired, while dropping the oldest makes an
        attacker keep up a flood faster than people sign in."""
        now = time.time() if now is None else now
        self._purge(now)
        with self.db.transaction() as cur:
            cur.execute("SELECT COUNT(*) FROM console_pending")
            row = cur.fetchone()
            excess = int(row[0]) - MAX_PENDING + 1 if row is not None else 0
            if excess > 0:
                cur.execute(
                    "DELETE FROM console_pending WHERE state_hash IN (SELECT state_hash "
                    "FROM console_pending ORDER BY expires_at LIMIT ?)",
                    (excess,),
                )
            cur.execute(
                "INSERT INTO console_pending (state_hash, nonce, verifier, next_path, "
                "expires_at) VALUES (?, ?, ?, ?, ?)",
                (digest(state), pending.nonce, pending.verifier, pending.next_path,
                 now + PENDING_TTL),
            )  # fmt: skip

    def take(self, state: str, *, now: float | None = None) -> Pending | None:
        """The pending sign-in of ``state``, once: a second callback with it gets None, as
        does one after :data:`PENDING_TTL`."""
        now = time.time() if now is None else now
        key = digest(state)
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT nonce, verifier, next_path, expires_at FROM console_pending "
                "WHERE state_hash = ?",
                (key,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute("DELETE FROM console_pending WHERE state_hash = ?", (key,))
            if cur.rowcount != 1:  # another callback took it between our read and delete
                return None
        nonce, verifier, next_path, expires_at = row
        if now >= float(expires_at):
            return None
        return Pending(str(nonce), str(verifier), str(next_path))

    # -- one-time links -------------------------------------------------------------------
    def add_link(self, *, ttl: float, now: float | None = None) -> str:
        """A new one-time link token (stored as its digest)."""
        now = time.time() if now is None else now
        token = new_secret()
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO console_links (token_hash, created_at, expires_at, used_at) "
                "VALUES (?, ?, ?, NULL)",
                (digest(token), now, now + ttl),
            )
        self._purge(now)
        return token

    def link_state(self, token: str, *, now: float | None = None) -> str:
        """``usable``, ``used``, ``expired`` or ``unknown``: what a link's page says."""
        now = time.time() if now is None else now
        with self.db.read() as cur:
            cur.execute(
                "SELECT expires_at, used_at FROM console_links WHERE token_hash = ?",
                (digest(token),),
            )
            row = cur.fetchone()
        if row is None:
            return "unknown"
        if row[1] is not None:
            return "used"
        return "expired" if now >= float(row[0]) else "usable"

    def use_link(self, token: str, *, now: float | None = None) -> bool:
        """Consume a link: True for the first use before it expires, False otherwise
        (atomic: of two concurrent uses, one wins)."""
        now = time.time() if now is None else now
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE console_links SET used_at = ? "
                "WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                (now, digest(token), now),
            )
            return cur.rowcount == 1

    # -- housekeeping ---------------------------------------------------------------------
    def _purge(self, now: float) -> None:
        """Drop expired rows, at most once a minute per process. A used link is kept until
        it would have expired, so its page can say it was used."""
        with self._lock:
            if now - self._last_purge < _PURGE_EVERY:
                return
            self._last_purge = now
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
            if self.idle_timeout is not None:
                idle_since = now - self.idle_timeout
                cur.execute("DELETE FROM console_sessions WHERE last_seen <= ?", (idle_since,))
            cur.execute("DELETE FROM console_pending WHERE expires_at <= ?", (now,))
            cur.execute("DELETE FROM console_links WHERE expires_at <= ?", (now - 86400,))

    def close(self) -> None:
        if self._owned:
            self.db.close()


__all__ = [
    "DOMAIN",
    "MAX_PENDING",
    "MIGRATIONS",
    "PENDING_TTL",
    "ConsoleStore",
    "Pending",
    "Session",
    "digest",
    "new_secret",
]
