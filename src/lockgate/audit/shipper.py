"""The shipper: copies this replica's committed chain rows to the shared trail, signs
checkpoints of every chain head, and never holds up the local chain.

One thread, next to whoever owns the local chain (the writer process, or the writer thread's
process). It only *reads* ``audit.db`` (its own read-only connection, WAL: the writer is never
blocked), so PostgreSQL being slow or down changes nothing for the data path: the journal and
the local chain work as before, refusals and admissions go on, and rows wait in ``audit.db``
until shipping resumes (retried with a capped backoff; the lag is in the status file,
:func:`lockgate.audit.shipping.ship_lag`).

Position: at (re)connection the shipper reads the highest seq PostgreSQL holds for this
replica and checks that the local chain has that very row (same hash). A replica restarted
on its data_dir (a crashed one's successor) therefore replays its journal locally (the
writer does, at start) and ships exactly what is missing; a crash mid-batch re-ships rows
PostgreSQL ignores (``ON CONFLICT DO NOTHING``). If PostgreSQL holds a row the local chain
does not (the same ``replica_id`` on another data_dir), nothing is shipped and the error is
logged and reported: two chains must never be mixed under one name.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lockgate import _log
from lockgate.audit import chain
from lockgate.audit.door import LOG_EVERY, describe
from lockgate.audit.shipping import AuditShipping, ChainMismatch, read_status, write_status

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from lockgate.audit.shared import Heads
    from lockgate.audit.shared import SharedTrail as SharedTrailT
    from lockgate.store import Database

log = _log.get("audit.ship")

MAX_BACKOFF = 5.0  # seconds between attempts while PostgreSQL fails
#: A replica whose own head did not move witnesses the others' heads this many times less often.
OTHERS_EVERY = 6
_IDLE = 0.2  # seconds between looks at the local chain when nothing was waiting
_GATHER = 0.1  # seconds to gather commits after a batch that caught up


class Shipper:
    """Ship ``db_path``'s chain as ``shipping.replica_id`` (see the module docstring)."""

    def __init__(
        self,
        db_path: Path,
        shipping: AuditShipping,
        *,
        database: Callable[[], Database] | None = None,
        batch_size: int = 1_000,
        idle: float = _IDLE,
        gather: float = _GATHER,
    ) -> None:
        self.db_path = Path(db_path)
        self.shipping = shipping
        self.replica = shipping.replica_id
        self.batch_size = batch_size
        self.idle = idle
        self.gather = gather
        self._last_batch = 0  # rows in the last batch shipped
        self._open_database = database or self._postgres
        self._owns_database = database is None  # a given one is the caller's to close
        self._db: Database | None = None
        self._trail: SharedTrailT | None = None
        self._local: sqlite3.Connection | None = None
        self._position: int | None = None  # highest seq PostgreSQL holds (None: ask it)
        # kept across restarts (the status file), never read back from PostgreSQL: against
        # them a shared trail rolled back (rows and checkpoints dropped together) shows
        status = read_status(self.db_path) or {}
        self.shipped_seq = _int(status.get("shipped_seq"))
        self._checkpoint_n = _int(status.get("checkpoint_n"))
        lost = status.get("lost")
        self._lost: list[list[float]] = list(lost) if isinstance(lost, list) else []
        self.error: str | None = None
        self._last_look = -math.inf  # when heads were last looked at (monotonic)
        self._last_written = -math.inf  # when this shipper last wrote a checkpoint
        self._checkpointed_heads: Heads | None = None
        self._key: Ed25519PrivateKey | None = None
        self._drain = 2.0
        if shipping.signing_key is not None:
            from lockgate.audit.shared import signing_key

            self._key = signing_key(shipping.signing_key)
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lockgate-audit-ship", daemon=True)

    def _postgres(self) -> Database:
        from lockgate.store import PostgresDatabase

        return PostgresDatabase(self.shipping.settings, replica_id=self.replica)

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Something was committed: look now rather than at the next idle tick."""
        self._kick.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Ship what is committed (for up to ``timeout``), then stop."""
        self._drain = timeout
        self._stop.set()
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(timeout + 2.0)

    # -- thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.0
        last_warn = 0.0
        deadline: float | None = None  # stopping: ship what is committed until then
        try:
            while True:
                if self._stop.is_set() and deadline is None:
                    deadline = time.monotonic() + self._drain
                try:
                    moved = self.ship_once()
                    if self._key is not None:
                        self.checkpoint(force=deadline is not None and not moved)
                except Exception as exc:  # PostgreSQL down, a mismatch, a bug: report, retry
                    self._failed(exc)
                    now = time.monotonic()
                    if now - last_warn > LOG_EVERY:
                        last_warn = now
                        log.error(
                            "audit shipping failed; the local chain keeps every record",
                            extra={"fields": {"replica": self.replica, "error": self.error}},
                        )
                    if deadline is not None:
                        return  # the rest waits in the local chain for the next start
                    backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF)
                    self._stop.wait(backoff)
                    continue
                if self.error is not None:  # nothing to ship, but PostgreSQL answered
                    self._recovered()
                    self._report()
                backoff = 0.0
                if deadline is not None and (not moved or time.monotonic() >= deadline):
                    return
                if not moved:
                    self._kick.wait(self.idle)
                    self._kick.clear()
                elif self._last_batch < self.batch_size:
                    # caught up: gather a while, so a steady trickle of commits costs
                    # PostgreSQL a few transactions a second rather than one per commit
                    self._stop.wait(self.gather)
        finally:
            self.close()

    def ship_once(self) -> bool:
        """Ship the next batch of committed rows; True when something was shipped."""
        trail = self._shared()
        if self._position is None:
            self._position = self._check_position(trail)
            self.shipped_seq = self._position
            self._recovered()
            self._report()
        rows = chain.stored_after(self._local_conn(), self._position, self.batch_size)
        if not rows:
            return False
        trail.ship(self.replica, rows, time.time())
        self._last_batch = len(rows)
        self._position = self.shipped_seq = int(rows[-1][0])
        self._recovered()
        self._report()
        return True

    def checkpoint(self, *, force: bool = False) -> None:
        """Every ``checkpoint_interval`` (or at once with ``force``), sign the heads of every
        chain if this replica's head moved since its last checkpoint; if only other heads
        moved, every ``OTHERS_EVERY`` intervals (they sign their own: this one only
        witnesses them, and an idle trail adds no rows at all)."""
        now = time.monotonic()
        interval = self.shipping.checkpoint_interval
        if not force and now - self._last_look < interval:
            return
        self._last_look = now
        trail = self._shared()
        heads = trail.heads()
        last = self._checkpointed_heads
        if not heads or heads == last:
            return
        own_moved = last is None or heads.get(self.replica) != last.get(self.replica)
        if not (force or own_moved or now - self._last_written >= OTHERS_EVERY * interval):
            return
        assert self._key is not None
        # numbered past this replica's own count, not only past what PostgreSQL holds:
        # checkpoints dropped from the shared trail leave a gap the next one shows
        cp = trail.write_checkpoint(
            self.replica, self._key, time.time(), at_least=self._checkpoint_n + 1
        )
        self._checkpoint_n = cp.n
        self._report()
        self._checkpointed_heads = heads
        self._last_written = now

    def _check_position(self, trail: SharedTrailT) -> int:
        seq, h = trail.shipped_head(self.replica)
        if seq:
            conn = self._local_conn()
            row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
            if row is None or str(row[0]) != h:
                raise ChainMismatch(
                    f"PostgreSQL holds seq {seq} of replica {self.replica!r} with "
                    + ("no such row" if row is None else "another hash")
                    + " in the local chain: is this replica_id used by another data_dir?"
                )
        if seq < self.shipped_seq:  # shipped once, gone now: ship again, and say so for good
            self._lost.append([seq + 1, self.shipped_seq, time.time()])
            log.error(
                "the shared audit trail lost records of this replica after they were "
                "shipped; shipping them again from the local chain",
                extra={"fields": {"replica": self.replica, "first_seq": seq + 1,
                                  "last_seq": self.shipped_seq}},
            )  # fmt: skip
        return seq

    def _recovered(self) -> None:
        if self.error is not None:
            log.warning("audit shipping recovered", extra={"fields": {"was": self.error}})
            self.error = None

    def _report(self) -> None:
        write_status(
            self.db_path, self.replica, self.shipped_seq, self.error,
            checkpoint_n=self._checkpoint_n, lost=self._lost,
        )  # fmt: skip

    def _shared(self) -> SharedTrailT:
        if self._trail is None:
            from lockgate.audit.shared import DOMAIN, MIGRATIONS, SharedTrail
            from lockgate.store import migrate

            db = self._open_database()
            try:
                migrate(db, DOMAIN, MIGRATIONS, allowed=self.shipping.settings.migrate_on_start)
            except BaseException:
                db.close()
                raise
            self._db, self._trail = db, SharedTrail(db)
        return self._trail

    def _local_conn(self) -> sqlite3.Connection:
        if self._local is None:
            self._local = chain.connect(self.db_path, readonly=True)
        return self._local

    def _failed(self, exc: Exception) -> None:
        self.error = describe(exc)
        self._position = None  # ask PostgreSQL again: a failed batch may have committed
        if isinstance(exc, sqlite3.Error) and self._local is not None:
            self._local.close()
            self._local = None
        self._report()

    def close(self) -> None:
        """Close the connections (the thread does at its end; for callers of ship_once)."""
        if self._local is not None:
            self._local.close()
            self._local = None
        if self._db is not None and self._owns_database:
            self._db.close()
        self._db = None
        self._trail = None


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


__all__ = ["ChainMismatch", "Shipper"]
