"""Quota budgets shared by every worker process and replica on the same state database.

Domain ``quotas``: the SQLite file ``quotas.db`` every worker opens, or the shared
PostgreSQL database. Three tables:

- ``quota_buckets``: one token bucket per budget key (level, time of that level);
- ``quota_holders``: per budget key and process (``holder``), the slots that process holds
  (requests in flight, open sessions, run starts reserved) and when it last said it is alive;
- ``quota_runs``: runs started (resource, run id, budget key, until when they count).

No database round trip per request:

- a **rate** is *leased*: a process takes ``max(1, rate/20)`` tokens at once
  (:data:`LEASE_SHARE` of a second's worth, never more than the burst), leaving the bucket
  in debt if it held fewer; token k of the lease comes due when the bucket would have held
  k, so the process spends its lease at the rate the bucket refills (a request before its
  token is due is refused with the time until then, or, with ``max_delay``, held that
  long). What is left when the lease ends (:data:`LEASE_SECONDS` after its last token
  came due) goes back to the bucket with the next lease. A bucket deeper in debt than the
  waiting allowed is remembered so until a token would be due, so a flood of refused
  requests costs no round trips either;
- a **cap** slot is taken with one short transaction (the cap's lock row, the live holders'
  sum, this holder's row); releasing it is local: a background thread writes what this
  process holds a moment later (coalescing many releases into one write), refreshes the
  holder's heartbeat every :data:`HEARTBEAT_SECONDS` and records runs started and finished.
  A holder not heard from for :data:`STALE_SECONDS` (a killed worker) no longer counts.

When the database cannot answer (or the shared one has not been reached for a few catch-up
intervals), budgets fall back to this process's memory at the full rate, logged once per
outage: a quota is a brake, not an access decision.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lockgate import _log
from lockgate.errors import StoreUnavailable
from lockgate.quotas.budgets import Bucket, MemoryBudgets, RateAnswer, refill
from lockgate.quotas.shared_local import LEASE_SECONDS, LEASE_SHARE, Lease, Pending, Slots
from lockgate.store import Cursor, Database, Migration, open_store, register_domain
from lockgate.store.fallback import MemoryFallback

DOMAIN = "quotas"
MIGRATIONS = (
    Migration(
        1,
        "quota buckets, slot holders and runs",
        "CREATE TABLE IF NOT EXISTS quota_buckets (\n"
        "    name TEXT PRIMARY KEY, tokens REAL NOT NULL, updated_at REAL NOT NULL\n"
        ");\n"
        "CREATE TABLE IF NOT EXISTS quota_holders (\n"
        "    name TEXT NOT NULL, holder TEXT NOT NULL, held INTEGER NOT NULL,\n"
        "    seen_at REAL NOT NULL, PRIMARY KEY (name, holder)\n"
        ");\n"
        "CREATE INDEX IF NOT EXISTS quota_holders_by_holder ON quota_holders (holder);\n"
        "CREATE TABLE IF NOT EXISTS quota_runs (\n"
        "    resource TEXT NOT NULL, run_id TEXT NOT NULL, name TEXT NOT NULL,\n"
        "    until_at REAL NOT NULL, PRIMARY KEY (resource, run_id, name)\n"
        ");\n"
        "CREATE INDEX IF NOT EXISTS quota_runs_by_name ON quota_runs (name)",
    ),
)
register_domain(DOMAIN, MIGRATIONS)

#: How often a process says its slots are still held.
HEARTBEAT_SECONDS = 3.0
#: A holder not heard from for this long (a killed worker) holds nothing.
STALE_SECONDS = 15.0
#: Releases are written this long after the first of them (many become one write).
COALESCE_SECONDS = 0.02
#: A cap the database said is full is refused without asking again for this long: requests
#: held for a slot (``max_delay``) or flooding a full cap then cost one round trip per
#: interval, not one each (a write transaction each would stall every other request).
FULL_CAP_SECONDS = 0.05
_PURGE_EVERY = 60.0

log = _log.get("quotas")


class SharedBudgets:
    """:class:`~lockgate.quotas.budgets.Budgets` in a :class:`~lockgate.store.Database`
    (a path: that SQLite file), shared by every process that opens it."""

    def __init__(
        self,
        where: Path | Database,
        *,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
        migrate_schema: bool | None = None,
        background: bool = True,
        memory: MemoryBudgets | None = None,
    ) -> None:
        self.db, self._owned = open_store(where, DOMAIN, MIGRATIONS, migrate_schema=migrate_schema)
        self._clock = clock
        self.holder = holder or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.blocking = self.db.dialect == "postgresql"
        self._lock = threading.Lock()  # local state
        self._write = threading.Lock()  # this holder's rows: one writer at a time
        self._leases: dict[str, Lease] = {}
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._slots: dict[str, Slots] = {}
        self._pending = Pending()
        self._memory = memory or MemoryBudgets(clock)  # the fallback
        self._fallback = MemoryFallback(
            self.db, self._lock, log,
            fell_back="quotas counted in this process's memory: state database unavailable",
            recovered="quotas shared again",
        )  # fmt: skip
        self._last_purge = 0.0
        #: Database transactions asked by requests (leases and cap slots), for benchmarks.
        self.round_trips = 0
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="quota-holder", daemon=True)
            self._thread.start()

    # -- rates ---------------------------------------------------------------------------------
    def take(self, key: str, rate: float, burst: float, max_debt: float) -> RateAnswer:
        max_delay = max_debt / rate
        answer = self._from_lease(key, rate, max_delay)
        if answer is not None:
            return answer
        with self._fetching(key):  # one lease at a time per budget in this process
            answer = self._from_lease(key, rate, max_delay)  # leased while this one waited?
            if answer is not None:
                return answer
            now = self._clock()
            with self._lock:
                lease = self._leases[key]
                returned = lease.size - lease.taken + lease.carry  # unspent: back to the bucket
                lease.size = lease.taken = lease.carry = 0
            size = int(max(1.0, min(burst, rate * LEASE_SHARE)))
            try:
                self._fallback.refuse_if_known_down()
                leased, level = self._lease_db(key, rate, burst, max_debt, size, returned, now)
            except StoreUnavailable as exc:
                self._fallback.fell_back(exc)
                return self._memory.take(key, rate, burst, max_debt)
            self._fallback.recovered()
            with self._lock:
                if not leased:  # the bucket is deeper in debt than waiters may go
                    wait = max(0.001, (-max_debt - size - level) / rate)
                    lease.empty_until = now + min(wait, LEASE_SECONDS)
                    return RateAnswer(False, round(wait, 3))
                lease.start(now, level, size, rate)
                return lease.spend(max(now, self._clock()), rate, max_delay)

    def _from_lease(self, key: str, rate: float, max_delay: float) -> RateAnswer | None:
        """The answer this process's lease gives without the database (None: lease again)."""
        now = self._clock()
        with self._lock:
            lease = self._leases.setdefault(key, Lease())
            if lease.taken < lease.size and now < lease.until:
                return lease.spend(now, rate, max_delay)
            if now < lease.empty_until:
                return RateAnswer(False, round(lease.empty_until - now, 3) or 0.001)
            return None

    def _fetching(self, key: str) -> threading.Lock:
        with self._lock:
            lock = self._fetch_locks.get(key)
            if lock is None:
                lock = self._fetch_locks[key] = threading.Lock()
            return lock

    def _lease_db(
        self,
        key: str,
        rate: float,
        burst: float,
        max_debt: float,
        size: int,
        returned: float,
        now: float,
    ) -> tuple[bool, float]:
        """Lease ``size`` tokens (giving ``returned`` back) unless the bucket is more than
        ``max_debt + size`` in debt; whether it did, and the bucket's level before (the lease's
        tokens come due as it refills)."""
        self.round_trips += 1
        with self.db.transaction() as cur:
            row = self._locked_row(cur, "quota_buckets", key, "tokens, updated_at", (burst, now))
            level = min(refill(Bucket(row[0], row[1]), rate, burst, now) + returned, burst)
            # Down to one lease past what waiters may wait: its tokens come due after those
            # of the lease another process holds, and are asked for without a round trip.
            leased = level >= -(max_debt + size)
            cur.execute(
                "UPDATE quota_buckets SET tokens = ?, updated_at = ? WHERE name = ?",
                (level - size if leased else level, max(now, row[1]), key),
            )
        return leased, level

    def _locked_row(
        self, cur: Cursor, table: str, key: str, columns: str, fresh: tuple[float, float]
    ) -> tuple[float, ...]:
        """The (numeric) columns of ``key``'s row in ``table`` (made if missing), locked
        until commit (a row lock on PostgreSQL; SQLite's write transaction holds the file)."""
        cur.execute(
            f"INSERT INTO {table} (name, tokens, updated_at) VALUES (?, ?, ?) "  # noqa: S608
            "ON CONFLICT (name) DO NOTHING",
            (key, *fresh),
        )
        lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
        row = cur.execute(
            f"SELECT {columns} FROM {table} WHERE name = ?{lock}",  # noqa: S608
            (key,),
        ).fetchone()
        assert row is not None  # just made, and never deleted inside this transaction
        return tuple(float(value) for value in row)

    def refund(self, key: str, rate: float, burst: float) -> None:
        # Back into the lease (the next request spends it; unspent, it goes back to the
        # bucket with the next lease).
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None:
                if lease.taken > 0:
                    lease.taken -= 1
                else:
                    lease.carry += 1
                return
        self._memory.refund(key, rate, burst)

    def charge(self, key: str, rate: float, burst: float, tokens: float) -> None:
        try:
            self._fallback.refuse_if_known_down()
            self.round_trips += 1
            with self.db.transaction() as cur:
                now = self._clock()
                row = self._locked_row(
                    cur, "quota_buckets", key, "tokens, updated_at", (burst, now)
                )
                level = refill(Bucket(row[0], row[1]), rate, burst, now)
                cur.execute(
                    "UPDATE quota_buckets SET tokens = ?, updated_at = ? WHERE name = ?",
                    (level - tokens, max(now, row[1]), key),
                )
        except StoreUnavailable as exc:
            self._fallback.fell_back(exc)
            self._memory.charge(key, rate, burst, tokens)
            return
        self._fallback.recovered()

    # -- caps ----------------------------------------------------------------------------------
    def acquire(self, key: str, cap: int) -> bool:
        return self._reserve(key, cap, runs=False)

    def reserve_run(self, key: str, cap: int) -> bool:
        return self._reserve(key, cap, runs=True)

    def _reserve(self, key: str, cap: int, *, runs: bool) -> bool:
        with self._lock:
            slots = self._slots.setdefault(key, Slots())
            if slots.used < slots.held:  # a slot this process still holds: no round trip
                slots.used += 1
                return True
            if self._clock() < slots.full_until:  # just said full: no round trip either
                return False
        try:
            self._fallback.refuse_if_known_down()
            granted = self._reserve_db(key, cap, runs)
        except StoreUnavailable as exc:
            self._fallback.fell_back(exc)
            return self._memory.reserve_run(key, cap) if runs else self._memory.acquire(key, cap)
        self._fallback.recovered()
        return granted

    def _reserve_db(self, key: str, cap: int, runs: bool) -> bool:
        now = self._clock()
        self.round_trips += 1
        with self._write, self.db.transaction() as cur:
            # The cap's lock: a row of its own (a rate of the same quota has the key's bucket).
            self._locked_row(cur, "quota_buckets", f"cap:{key}", "tokens", (0.0, now))
            row = cur.execute(
                "SELECT COALESCE(SUM(held), 0) FROM quota_holders "
                "WHERE name = ? AND holder <> ? AND seen_at > ?",
                (key, self.holder, now - STALE_SECONDS),
            ).fetchone()
            others = int(row[0]) if row is not None else 0
            if runs:
                row = cur.execute(
                    "SELECT COUNT(*) FROM quota_runs WHERE name = ? AND until_at > ?", (key, now)
                ).fetchone()
                others += int(row[0]) if row is not None else 0
            with self._lock:
                slots = self._slots.setdefault(key, Slots())
                if runs:  # started here, not yet written
                    others += sum(1 for *_, name, _until in self._pending.started if name == key)
                if others + slots.used >= cap:
                    slots.full_until = now + FULL_CAP_SECONDS
                    return False
                slots.used += 1
                slots.held = slots.written = held = slots.used
            self._write_held(cur, key, held, now)
        return True

    def _write_held(self, cur: Cursor, key: str, held: int, now: float) -> None:
        if held > 0:
            cur.execute(
                "INSERT INTO quota_holders (name, holder, held, seen_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, holder) DO UPDATE SET held = excluded.held, "
                "seen_at = excluded.seen_at",
                (key, self.holder, held, now),
            )
        else:
            cur.execute(
                "DELETE FROM quota_holders WHERE name = ? AND holder = ?", (key, self.holder)
            )

    def release(self, key: str) -> None:
        with self._lock:
            slots = self._slots.get(key)
            if slots is None or slots.used == 0:
                slots = None
            else:
                slots.used -= 1
                slots.full_until = 0.0
        if slots is None:
            self._memory.release(key)  # taken while the database was out of reach
            return
        self._wake.set()

    def run_started(self, key: str, resource: str, run_id: str, max_age: float) -> None:
        with self._lock:
            slots = self._slots.get(key)
            if slots is None or slots.used == 0:
                slots = None
            else:  # the reserved slot becomes the run (it is not this process's to reuse)
                slots.used -= 1
                slots.held -= 1
                self._pending.started.append((resource, run_id, key, self._clock() + max_age))
        if slots is None:
            self._memory.run_started(key, resource, run_id, max_age)
            return
        self._wake.set()

    def run_finished(self, resource: str, run_id: str) -> None:
        self._memory.run_finished(resource, run_id)
        with self._lock:
            self._pending.finished.append((resource, run_id))
            for slots in self._slots.values():  # (which cap the run counted in is not known)
                slots.full_until = 0.0
        self._wake.set()

    # -- the background writer -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed.is_set():
            if self._wake.wait(HEARTBEAT_SECONDS):
                self._closed.wait(COALESCE_SECONDS)  # let a burst of releases gather
            self._wake.clear()
            try:
                self.flush()
            except StoreUnavailable as exc:
                self._fallback.fell_back(exc)
                self._closed.wait(1.0)  # retried: nothing unwritten is forgotten
            except Exception:  # never let the writer die: slots would stick
                log.exception("quota holder write failed")
                self._closed.wait(1.0)

    def flush(self) -> None:
        """Write what this process holds now and the runs started and finished, and say it
        is alive. Raises StoreUnavailable (nothing is lost then: the next flush retries)."""
        now = self._clock()
        with self._write:
            with self._lock:
                # From here on, what goes back is no longer this process's to use.
                changed = [(k, s.held, s.used) for k, s in self._slots.items() if s.dirty]
                for key, _held, used in changed:
                    self._slots[key].held = used
                pending, self._pending = self._pending, Pending()
            purge = now - self._last_purge >= _PURGE_EVERY
            try:
                with self.db.transaction() as cur:
                    for key, _held, used in changed:
                        self._write_held(cur, key, used, now)
                    for resource, run_id, key, until in pending.started:
                        cur.execute(
                            "INSERT INTO quota_runs (resource, run_id, name, until_at) "
                            "VALUES (?, ?, ?, ?) ON CONFLICT (resource, run_id, name) "
                            "DO UPDATE SET until_at = excluded.until_at",
                            (resource, run_id, key, until),
                        )
                    for resource, run_id in pending.finished:
                        cur.execute(
                            "DELETE FROM quota_runs WHERE resource = ? AND run_id = ?",
                            (resource, run_id),
                        )
                    cur.execute(
                        "UPDATE quota_holders SET seen_at = ? WHERE holder = ?", (now, self.holder)
                    )
                    if purge:  # rows of holders long gone, runs past their age
                        cur.execute(
                            "DELETE FROM quota_holders WHERE seen_at < ?",
                            (now - 4 * STALE_SECONDS,),
                        )
                        cur.execute("DELETE FROM quota_runs WHERE until_at < ?", (now,))
                        # a bucket untouched for a day is full again: the same as no row
                        cur.execute(
                            "DELETE FROM quota_buckets WHERE updated_at < ?", (now - 86400,)
                        )
            except StoreUnavailable:
                with self._lock:  # the database still says the old counts: keep them
                    for key, held, _used in changed:
                        self._slots[key].held = held
                    self._pending.started[:0] = pending.started
                    self._pending.finished[:0] = pending.finished
                raise
            with self._lock:
                for key, _held, used in changed:
                    self._slots[key].written = used
            if purge:
                self._last_purge = now
        self._fallback.recovered()

    # -- outage ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Give back every slot this process holds (its runs still count) and stop."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for slots in self._slots.values():
                slots.used = 0
        try:
            self.flush()
            with self._write, self.db.transaction() as cur:
                cur.execute("DELETE FROM quota_holders WHERE holder = ?", (self.holder,))
        except StoreUnavailable:
            pass  # the rows go stale and stop counting within STALE_SECONDS
        if self._owned:
            self.db.close()


__all__ = [
    "DOMAIN",
    "HEARTBEAT_SECONDS",
    "LEASE_SECONDS",
    "MIGRATIONS",
    "STALE_SECONDS",
    "SharedBudgets",
]
