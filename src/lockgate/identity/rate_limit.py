"""Brakes on the token service: a mint rate per deployment and a cool-down after failed
authentications, one budget shared by every process and replica on the same state.

Why: a runaway DAG loop or a stolen deployment credential must not mint tokens without
bound, and guessing a deployment's secret must be slow. Three limits
(``tokens.rate_limit``), each a token bucket (``rate`` per second refilling up to ``burst``):

- ``mint``: per deployment, across every door that mints (``/v1/token``, ``/v1/poll-token``,
  ``/v1/db-role``); a mint takes one token, an empty bucket refuses until one refilled;
- ``failed_auth_client``: per configured deployment a request names (client id);
- ``failed_auth_remote``: per remote address (an IPv6 address by its /64: one host holds
  a whole /64 and could otherwise take a fresh budget, and a fresh row, per request).

A failed authentication takes one token from its client's and its address's bucket; the
one that empties starts a cool-down (``failed_auth_cooldown``) during which every request
naming that client or coming from that address is refused *before* its proof is checked,
so a right guess and a wrong one get the same answer. Over a limit the answer is HTTP 429
with ``Retry-After`` and an OAuth2 error body, audited as a refusal with reason
:data:`RATE_LIMITED` and the limit's name.

Shared: the buckets are rows of ``rate_buckets`` in the state database (domain
``rate_limits``: the SQLite file ``rate_limits.db`` every worker opens, or the shared
PostgreSQL database). A decision is one atomic upsert (``INSERT ... ON CONFLICT DO UPDATE
... RETURNING``) that refills and takes in the same statement, inside ``BEGIN IMMEDIATE`` on
SQLite, so concurrent workers and replicas draw from one budget. With shared state the
statement runs in a worker thread: the event loop never waits on PostgreSQL.

When the database cannot answer (or the shared one has not been reached for three catch-up
intervals, so no request waits out a connect timeout), the decision falls back to a bucket
in this process's memory at the full rate (logged once per outage): a rate limit is a brake,
not an access decision, so an outage neither opens the floodgates of a single process nor
refuses everything (authentication and policy still decide who gets a token). Clocks of
replicas that differ by a few seconds cost at most that many seconds' refill: a bucket's
time never moves backwards.
"""

from __future__ import annotations

import ipaddress
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lockgate import _log
from lockgate.config import LockgateConfig
from lockgate.config.identity import RateLimitSettings
from lockgate.errors import StoreUnavailable
from lockgate.identity._request import OAuthError
from lockgate.store import Database, Migration, off_loop, open_store, register_domain
from lockgate.store.fallback import MemoryFallback

DOMAIN = "rate_limits"
MIGRATIONS = (
    Migration(
        1,
        "token-service rate limit buckets",
        "CREATE TABLE IF NOT EXISTS rate_buckets (\n"
        "    name TEXT PRIMARY KEY, tokens REAL NOT NULL, updated_at REAL NOT NULL,\n"
        "    blocked_until REAL NOT NULL, allowed INTEGER NOT NULL\n"
        ")",
    ),
)
register_domain(DOMAIN, MIGRATIONS)

#: The refusal reason (audit records, metrics).
RATE_LIMITED = "rate_limited"
MINT = "mint"
FAILED_AUTH_CLIENT = "failed_auth_client"
FAILED_AUTH_REMOTE = "failed_auth_remote"

log = _log.get("identity.rate_limit")


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket's shape: ``rate`` tokens a second, up to ``burst``; ``cooldown`` seconds
    of refusal once a take leaves less than one token (0: none, refill decides)."""

    name: str
    rate: float
    burst: float
    cooldown: float = 0.0


@dataclass(frozen=True, slots=True)
class Bucket:
    """A bucket's row: its level at ``updated_at``, and until when it refuses."""

    tokens: float
    updated_at: float
    blocked_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: int  # seconds (>= 1) before asking again makes sense; 0 when allowed
    cooling: int = 0  # seconds of cool-down left after this take (0: none)


def take(limit: Limit, bucket: Bucket | None, now: float, cost: float = 1.0) -> tuple[bool, Bucket]:
    """The bucket math (what the SQL of :class:`RateLimiter` computes): refill since the
    last update (never backwards: replicas' clocks differ a little), take ``cost`` if there
    is that much, start the cool-down when less than one token is left."""
    if bucket is None:
        bucket = Bucket(limit.burst, now)
    elapsed = now - bucket.updated_at if now > bucket.updated_at else 0.0
    level = min(bucket.tokens + elapsed * limit.rate, limit.burst)
    allowed = level >= cost
    blocked = bucket.blocked_until
    if limit.cooldown > 0 and level < cost + 1:
        blocked = now + limit.cooldown
    return allowed, Bucket(level - cost if allowed else level, max(now, bucket.updated_at), blocked)


def retry_after(limit: Limit, bucket: Bucket, now: float, cost: float = 1.0) -> int:
    """Whole seconds (>= 1) until ``bucket`` can serve ``cost`` again."""
    wait = bucket.blocked_until - now
    if bucket.tokens < cost:
        refill = (cost - bucket.tokens) / limit.rate if limit.rate > 0 else limit.cooldown
        wait = max(wait, refill)
    return max(1, math.ceil(wait))


# -- the SQL ----------------------------------------------------------------------------------
def _bind(sql: str, values: dict[str, object]) -> tuple[str, list[object]]:
    """``:name`` markers to ``?`` and the parameters in order (the portable subset has
    positional placeholders only; the expressions repeat their inputs)."""
    params: list[object] = []

    def mark(match: re.Match[str]) -> str:
        params.append(values[match.group(1)])
        return "?"

    return re.sub(r":([a-z_]+)", mark, sql), params


_ELAPSED = "(CASE WHEN :now > b.updated_at THEN :now - b.updated_at ELSE 0 END)"
_REFILL = f"(b.tokens + {_ELAPSED} * :rate)"
_LEVEL = f"(CASE WHEN {_REFILL} < :burst THEN {_REFILL} ELSE :burst END)"
# One statement: a new bucket starts full (minus this take); an existing one refills and
# takes atomically (a row lock on PostgreSQL, the file's write lock on SQLite), so two
# replicas never both spend the last token.
_TAKE = (  # built from the constant fragments above only; every value is a parameter
    "INSERT INTO rate_buckets AS b (name, tokens, updated_at, blocked_until, allowed) "  # noqa: S608
    "VALUES (:name, :fresh_tokens, :now, :fresh_blocked, :fresh_allowed) "
    "ON CONFLICT (name) DO UPDATE SET "
    f"tokens = CASE WHEN {_LEVEL} >= :cost THEN {_LEVEL} - :cost ELSE {_LEVEL} END, "
    "updated_at = CASE WHEN :now > b.updated_at THEN :now ELSE b.updated_at END, "
    f"blocked_until = CASE WHEN :cooldown > 0 AND {_LEVEL} < :cost + 1 "
    "THEN :now + :cooldown ELSE b.blocked_until END, "
    f"allowed = CASE WHEN {_LEVEL} >= :cost THEN 1 ELSE 0 END "
    "RETURNING allowed, tokens, updated_at, blocked_until"
)
_PURGE_EVERY = 300.0
#: Buckets the memory fallback holds at most (one per client or address seen in an outage).
MAX_LOCAL_BUCKETS = 100_000


class RateLimiter:
    """Token buckets in a :class:`~lockgate.store.Database` (a path: that SQLite file;
    ``None``: this process only), with a memory fallback when the database cannot answer."""

    def __init__(
        self,
        where: Path | Database | None,
        *,
        clock: Callable[[], float] = time.time,
        migrate_schema: bool | None = None,
    ) -> None:
        self.db, self._owned = open_store(where, DOMAIN, MIGRATIONS, migrate_schema=migrate_schema)
        self._clock = clock
        self._lock = threading.Lock()  # guards the memory fallback and the purge clock
        self._local: dict[str, Bucket] = {}
        self._fallback = MemoryFallback(
            self.db, self._lock, log,
            fell_back="rate limits decided in this process's memory: state database unavailable",
            recovered="rate limits shared again", on_recovery=self._local.clear,
        )  # fmt: skip
        self._last_purge = clock()
        self.shared = self._fallback.shared

    # -- decisions (sync: the database step) ------------------------------------------------
    def take(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        """Take ``cost`` from bucket ``key``; whether it was there, and if not how long to
        wait."""
        now = self._clock()
        try:
            self._fallback.refuse_if_known_down()
            allowed, bucket = self._take_db(key, limit, now, cost)
        except StoreUnavailable as exc:
            allowed, bucket = self._take_local(key, limit, now, cost, exc)
        left = bucket.blocked_until - now
        cooling = math.ceil(left) if left > 0 else 0
        if allowed:
            return Decision(True, 0, cooling)
        return Decision(False, retry_after(limit, bucket, now, cost), cooling)

    def blocked(self, keys: list[str]) -> int:
        """Seconds until the longest cool-down among ``keys`` ends (0: none is cooling)."""
        now = self._clock()
        keys = [k for k in keys if k]
        if not keys:
            return 0
        try:
            self._fallback.refuse_if_known_down()
            marks = ", ".join("?" for _ in keys)
            with self.db.read() as cur:
                rows = cur.execute(
                    f"SELECT blocked_until FROM rate_buckets WHERE name IN ({marks})",  # noqa: S608
                    keys,
                ).fetchall()
            until = [float(r[0]) for r in rows]
            self._fallback.recovered()
        except StoreUnavailable as exc:
            self._fallback.fell_back(exc)
            with self._lock:
                until = [b.blocked_until for k in keys if (b := self._local.get(k)) is not None]
        longest = max(until, default=0.0) - now
        return max(1, math.ceil(longest)) if longest > 0 else 0

    def _take_db(self, key: str, limit: Limit, now: float, cost: float) -> tuple[bool, Bucket]:
        fresh_allowed, fresh = take(limit, None, now, cost)
        sql, params = _bind(
            _TAKE,
            {
                "name": key, "now": now, "rate": limit.rate, "burst": limit.burst,
                "cost": cost, "cooldown": limit.cooldown, "fresh_tokens": fresh.tokens,
                "fresh_blocked": fresh.blocked_until, "fresh_allowed": int(fresh_allowed),
            },
        )  # fmt: skip
        purge = self._purge_due(now)
        with self.db.transaction() as cur:
            if purge:  # a bucket full and not cooling is the same as no row
                cur.execute(
                    "DELETE FROM rate_buckets WHERE updated_at < ? AND blocked_until < ?",
                    (now - 86400, now),
                )
            row = cur.execute(sql, params).fetchone()
        assert row is not None  # an upsert always returns its row
        self._fallback.recovered()
        return bool(row[0]), Bucket(float(row[1]), float(row[2]), float(row[3]))

    def _take_local(
        self, key: str, limit: Limit, now: float, cost: float, exc: StoreUnavailable
    ) -> tuple[bool, Bucket]:
        self._fallback.fell_back(exc)
        with self._lock:
            allowed, bucket = take(limit, self._local.pop(key, None), now, cost)
            if len(self._local) >= MAX_LOCAL_BUCKETS:
                # Many addresses during an outage must not grow memory without bound: the
                # bucket touched longest ago goes (re-inserting keeps the dict in that order).
                self._local.pop(next(iter(self._local)))
            self._local[key] = bucket
        return allowed, bucket

    def _purge_due(self, now: float) -> bool:
        with self._lock:
            if now - self._last_purge < _PURGE_EVERY:
                return False
            self._last_purge = now
            return True

    # -- decisions (async: off the loop when the database is remote) ------------------------
    async def take_async(self, key: str, limit: Limit) -> Decision:
        return await off_loop(self.db, self.take, key, limit)

    async def blocked_async(self, keys: list[str]) -> int:
        return await off_loop(self.db, self.blocked, keys)

    def close(self) -> None:
        if self._owned:
            self.db.close()


class RateLimits:
    """The token service's three limits over one :class:`RateLimiter`, speaking
    :class:`OAuthError`: a refusal is a 429 whose ``retry_after`` the route sends as the
    ``Retry-After`` header."""

    def __init__(self, limiter: RateLimiter, settings: RateLimitSettings) -> None:
        self.limiter = limiter
        self.settings = settings
        window = settings.failed_auth_window
        cooldown = settings.failed_auth_cooldown
        self.mint_limit = Limit(MINT, float(settings.mint_per_second), float(settings.burst))
        self.client_limit = Limit(
            FAILED_AUTH_CLIENT,
            settings.failed_auth_per_client / window,
            float(settings.failed_auth_per_client),
            cooldown,
        )
        self.remote_limit = Limit(
            FAILED_AUTH_REMOTE,
            settings.failed_auth_per_remote / window,
            float(settings.failed_auth_per_remote),
            cooldown,
        )

    @classmethod
    def for_config(cls, config: LockgateConfig, where: Path | Database | None) -> RateLimits:
        """The limits ``config`` sets, over the buckets in ``where`` (see
        :class:`RateLimiter`)."""
        return cls(RateLimiter(where), config.tokens.rate_limit)

    async def take_mint(self, deployment: str) -> None:
        """One mint for ``deployment``, or :class:`OAuthError` 429 ``slow_down``."""
        if self.settings.mint_per_second <= 0:
            return
        decision = await self.limiter.take_async(f"{MINT}:{deployment}", self.mint_limit)
        if not decision.allowed:
            raise rate_limited(
                "slow_down",
                f"deployment {deployment!r} mints too fast; retry later",
                MINT,
                decision.retry_after,
            )

    async def refuse_if_cooling(self, client: str | None, remote: str | None) -> None:
        """Before a proof is checked: a client or address in its cool-down is refused
        (whatever the proof), :class:`OAuthError` 429 ``temporarily_unavailable``."""
        keys = self._failure_keys(client, remote)
        if not keys:
            return
        wait = await self.limiter.blocked_async([key for key, _limit in keys])
        if wait:
            raise rate_limited(
                "temporarily_unavailable",
                "too many failed authentications; retry later",
                ",".join(limit.name for _key, limit in keys),
                wait,
            )

    async def failed(self, client: str | None, remote: str | None) -> None:
        """Count one failed authentication against ``client`` and ``remote``."""
        for key, limit in self._failure_keys(client, remote):
            decision = await self.limiter.take_async(key, limit)
            if decision.allowed and decision.cooling:  # this failure emptied the bucket
                log.warning(
                    "failed authentications: cool-down started",
                    extra={
                        "fields": {"limit": limit.name, "key": key, "seconds": decision.cooling}
                    },
                )

    def _failure_keys(self, client: str | None, remote: str | None) -> list[tuple[str, Limit]]:
        keys: list[tuple[str, Limit]] = []
        if client and self.settings.failed_auth_per_client > 0:
            keys.append((f"{FAILED_AUTH_CLIENT}:{client}", self.client_limit))
        if remote and self.settings.failed_auth_per_remote > 0:
            keys.append((f"{FAILED_AUTH_REMOTE}:{remote_key(remote)}", self.remote_limit))
        return keys

    def close(self) -> None:
        self.limiter.close()


def remote_key(remote: str) -> str:
    """What a remote address is counted as: an IPv4 address itself (also written as
    IPv4-mapped IPv6), an IPv6 address its /64 (what one host or LAN gets), anything else
    (a unix socket's name) as it is."""
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])  # no zone id
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def rate_limited(error: str, description: str, limit: str, wait: int) -> OAuthError:
    """The 429 refusal (the route sends ``retry_after`` as the ``Retry-After`` header;
    ``limit`` names the limit in the audit record)."""
    return OAuthError(
        429,
        error,
        description,
        reason=RATE_LIMITED,
        limit=limit,
        retry_after=wait,
    )


def is_failed_authentication(exc: OAuthError) -> bool:
    """A refusal that means "this proof is wrong" (not a malformed request, not our
    failure): what guessing produces."""
    return exc.status == 401 or exc.error == "invalid_grant"


__all__ = [
    "DOMAIN",
    "FAILED_AUTH_CLIENT",
    "FAILED_AUTH_REMOTE",
    "MIGRATIONS",
    "MINT",
    "RATE_LIMITED",
    "Bucket",
    "Decision",
    "Limit",
    "RateLimiter",
    "RateLimits",
    "is_failed_authentication",
    "rate_limited",
    "remote_key",
    "retry_after",
    "take",
]
