"""Token-service rate limits: the bucket math against a reference model, the SQL against
the math, and one budget shared by processes on one SQLite file and by handles on one
PostgreSQL database."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.config import parse_config
from lockgate.errors import StoreUnavailable
from lockgate.identity.client_auth import named_client
from lockgate.identity.rate_limit import (
    DOMAIN,
    Bucket,
    Limit,
    RateLimiter,
    RateLimits,
    retry_after,
    take,
)
from lockgate.store import SqliteDatabase
from tests.pgserver.fixtures import SharedStateFactory
from tests.pgserver.state import replica_states

# Times in eighths of a second and rates in halves: exact in binary floating point, so the
# float implementation and the exact reference must agree to the token.
times = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60).map(
    lambda steps: [sum(steps[: i + 1]) / 8 for i in range(len(steps))]
)
rates = st.integers(min_value=0, max_value=8).map(lambda n: n / 2)
bursts = st.integers(min_value=1, max_value=6)


def reference_admits(rate: float, burst: int, at: list[float]) -> list[bool]:
    """The envelope a token bucket enforces, decided greedily: a request at ``t`` is
    admitted iff for every earlier admitted time ``s`` (and ``t`` itself) the admitted
    requests in ``[s, t]``, this one included, are at most ``burst + rate * (t - s)``."""
    admitted: list[Fraction] = []
    out = []
    for t_float in at:
        t = Fraction(t_float)
        ok = all(
            sum(1 for a in admitted if a >= s) + 1 <= burst + Fraction(rate) * (t - s)
            for s in [*admitted, t]
        )
        if ok:
            admitted.append(t)
        out.append(ok)
    return out


@settings(max_examples=300, deadline=None)
@given(rate=rates, burst=bursts, at=times)
def test_the_bucket_admits_exactly_what_the_reference_envelope_admits(
    rate: float, burst: int, at: list[float]
) -> None:
    limit = Limit("mint", rate, float(burst))
    bucket: Bucket | None = None
    got = []
    for now in at:
        allowed, bucket = take(limit, bucket, now)
        assert 0 <= bucket.tokens <= burst
        got.append(allowed)
    assert got == reference_admits(rate, burst, at)


@settings(max_examples=150, deadline=None)
@given(
    rate=rates,
    burst=bursts,
    cooldown=st.sampled_from([0.0, 0.5, 3.0]),
    events=st.lists(
        st.tuples(st.integers(min_value=-2, max_value=20), st.sampled_from(["a", "b"])),
        min_size=1,
        max_size=40,
    ),
)
def test_the_sql_computes_what_the_python_math_does(
    rate: float, burst: int, cooldown: float, events: list[tuple[int, str]]
) -> None:
    """One upsert per decision, same answers as :func:`take` (a clock that steps back a
    little, as replicas' clocks do, included)."""
    clock = [1000.0]
    limiter = RateLimiter(None, clock=lambda: clock[0])
    limit = Limit("x", rate, float(burst), cooldown)
    model: dict[str, Bucket] = {}
    try:
        for step, key in events:
            clock[0] += step / 8
            now = clock[0]
            allowed, model[key] = take(limit, model.get(key), now)
            decision = limiter.take(key, limit)
            assert decision.allowed == allowed
            if not allowed:
                assert decision.retry_after == retry_after(limit, model[key], now)
                assert decision.retry_after >= 1
            left = model[key].blocked_until - now
            assert limiter.blocked([key]) == (0 if left <= 0 else max(1, -int(-left // 1)))
    finally:
        limiter.close()


def test_failed_authentications_start_a_cool_down_after_the_limit() -> None:
    clock = [0.0]
    limiter = RateLimiter(None, clock=lambda: clock[0])
    failures = Limit("failed_auth_client", 10 / 60, 10.0, 60.0)
    for _ in range(9):
        assert limiter.take("c", failures).cooling == 0
    assert limiter.blocked(["c"]) == 0
    assert limiter.take("c", failures).cooling == 60  # the tenth
    assert limiter.blocked(["c", "other"]) == 60
    clock[0] = 59.5
    assert limiter.blocked(["c"]) == 1
    clock[0] = 60.0
    assert limiter.blocked(["c"]) == 0


def test_an_unreachable_database_falls_back_to_a_local_bucket_at_the_full_rate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = RateLimiter(tmp_path / "rate_limits.db", clock=lambda: 0.0)
    limit = Limit("mint", 0.0, 2.0)
    assert limiter.take("k", limit).allowed

    def down() -> None:
        raise StoreUnavailable("database down")

    monkeypatch.setattr(limiter.db, "transaction", down)
    # The local bucket starts full: a brake, not an access decision.
    assert [limiter.take("k", limit).allowed for _ in range(3)] == [True, True, False]
    assert sum("memory" in r.message for r in caplog.records) == 1  # logged once
    limiter.close()


def test_only_a_configured_deployment_is_named_as_the_client(tmp_path: Path) -> None:
    cfg = parse_config(
        {"data_dir": str(tmp_path), "deployments": [{"name": "prod", "dags": ["*"],
         "proof": {"type": "client_secret", "secret_sha256": "0" * 64}}]},
        tmp_path / "lockgate.yaml",
    )  # fmt: skip
    assert named_client(cfg, {"client_id": "prod"}, None) == "prod"
    # a secret pasted as the client id must not become a bucket's name
    assert named_client(cfg, {"client_id": "s3cret-value"}, None) is None
    assert named_client(cfg, {}, "Basic cHJvZDp4") == "prod"  # prod:x
    assert named_client(cfg, {}, "Basic !!") is None


# -- one budget, shared ------------------------------------------------------------------------
def _take_many(path: str, n: int, queue: multiprocessing.Queue[int]) -> None:
    limiter = RateLimiter(Path(path))
    limit = Limit("mint", 0.0, 25.0)
    queue.put(sum(limiter.take("mint:prod", limit).allowed for _ in range(n)))
    limiter.close()


def test_processes_on_one_sqlite_file_share_one_budget(tmp_path: Path) -> None:
    path = tmp_path / "rate_limits.db"
    RateLimiter(path).close()  # schema first, as the gateway's start does
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_take_many, args=(str(path), 20, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(queue.get(timeout=5) for _ in procs) == 25  # 60 asked, the burst granted


@pytest.fixture
def two_replicas(
    pg_state: SharedStateFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RateLimits, RateLimits]]:
    """The rate limits of two replicas' States on one PostgreSQL (own data directories and
    replica ids, one master key)."""
    limits = {"tokens": {"rate_limit": {"mint_per_second": 0.001, "burst": 30}}}
    with replica_states(pg_state(), tmp_path, monkeypatch, lambda data: limits) as states:
        first, second = (RateLimits.for_config(s.config, s.database(DOMAIN)) for s in states)
        yield first, second


def test_two_replicas_on_one_postgresql_share_one_budget(
    two_replicas: tuple[RateLimits, RateLimits],
) -> None:
    first, second = two_replicas
    assert first.limiter.shared and second.limiter.shared

    def mint(limits: RateLimits) -> int:
        return sum(limits.limiter.take("mint:prod", limits.mint_limit).allowed for _ in range(25))

    with ThreadPoolExecutor(4) as pool:
        granted = list(pool.map(mint, [first, second, first, second]))
    assert sum(granted) == 30  # 100 asked at once on two replicas: one budget
    refused = second.limiter.take("mint:prod", second.mint_limit)
    assert not refused.allowed and refused.retry_after >= 1


async def test_a_cool_down_started_on_one_replica_holds_on_the_other(
    two_replicas: tuple[RateLimits, RateLimits],
) -> None:
    first, second = two_replicas
    for _ in range(10):
        await first.failed("prod", "10.0.0.7")
    with pytest.raises(Exception) as refused:
        await second.refuse_if_cooling("prod", None)
    assert getattr(refused.value, "status", None) == 429
    await second.refuse_if_cooling("other", "10.0.0.8")  # others are not affected


def test_the_sqlite_file_is_the_rate_limits_domain(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "rate_limits.db")
    limiter = RateLimiter(db)
    with db.read() as cur:
        row = cur.execute("SELECT version FROM lockgate_schema WHERE domain = ?", ("rate_limits",))
        assert row.fetchone() == (1,)
    limiter.close()
    db.close()


def test_a_shared_database_known_to_be_down_is_not_asked(
    two_replicas: tuple[RateLimits, RateLimits], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request waits out a connect timeout once PostgreSQL has not answered for a while."""
    limiter = two_replicas[0].limiter
    monkeypatch.setattr(limiter.db, "unreached_for", lambda: 60.0)

    def not_asked() -> None:
        raise AssertionError("the database was asked")

    monkeypatch.setattr(limiter.db, "transaction", not_asked)
    monkeypatch.setattr(limiter.db, "read", not_asked)
    limit = Limit("mint", 0.0, 1.0)
    assert [limiter.take("k", limit).allowed for _ in range(2)] == [True, False]
    assert limiter.blocked(["k"]) == 0


def test_a_stale_but_answering_database_still_keeps_the_shared_budget(
    two_replicas: tuple[RateLimits, RateLimits], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staleness is about what memory holds (a store stuck behind one locked table); the
    budget's own table still answers, so every replica keeps counting against one budget."""
    first, second = two_replicas
    monkeypatch.setattr(first.limiter.db, "stale_for", lambda: 60.0)
    granted = sum(first.limiter.take("mint:prod", first.mint_limit).allowed for _ in range(30))
    assert granted == 30
    assert not second.limiter.take("mint:prod", second.mint_limit).allowed
