"""What the replicas are put through, measured: the tests assert on the figures, and
``benchmarks/ha.py`` prints them.

- :class:`Load`: threads sending GETs through chosen replicas, each request with a path of
  its own (``/orders/<tag>-<replica>-<thread>-<n>``) so the upstream's log says which
  request it served; every outcome is kept (status 0: no answer).
- :func:`revocation_propagation`: mint on one replica, revoke on another, time until the
  watched replicas refuse the token (from the revoke call's return).
- :func:`session_closure`: an open PostgreSQL session through one replica, its token revoked
  on another; time until its next statement is refused.
- :func:`credential_rotation`: ``lockgate creds rotate`` on one replica under load; time
  until each replica's requests reach the upstream with the new secret; the upstream then
  drops the old one, so a replica still using it would fail a request.
- :func:`key_rotation`: ``lockgate keys rotate`` on one replica while it mints and the
  others verify; time until the new key signs.

Failures (a replica killed, PostgreSQL away): :mod:`tests.ha.failures`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import math
import secrets
import select
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.ha.cluster import CREDENTIAL, PG_CONN_ID, PG_RESOURCE, Client, Cluster

PROPAGATION_TIMEOUT = 10.0  # a measurement gives up (and records it) after this
_load_ids = itertools.count(1)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) / 100)))
    return ordered[rank - 1]


def summary_ms(values: Sequence[float]) -> str:
    """``p50 X ms, p99 Y ms, max Z ms (n=N)`` of values in seconds."""
    if not values:
        return "no samples"
    return (
        f"p50 {percentile(values, 50) * 1000:.1f} ms, p99 {percentile(values, 99) * 1000:.1f} ms,"
        f" max {max(values) * 1000:.1f} ms (n={len(values)})"
    )


def time_until_each(
    replicas: Iterable[int], reached: Callable[[int, int], bool]
) -> dict[int, float]:
    """Seconds from now until ``reached(replica, attempt)`` holds for each replica, asking
    them in turn; ``inf`` for a replica still not there after :data:`PROPAGATION_TIMEOUT`."""
    start = time.monotonic()
    pending = set(replicas)
    took: dict[int, float] = {}
    for attempt in itertools.count():
        for i in sorted(pending):
            if reached(i, attempt):
                took[i] = time.monotonic() - start
                pending.discard(i)
        if not pending or time.monotonic() - start > PROPAGATION_TIMEOUT:
            break
    took.update(dict.fromkeys(pending, float("inf")))
    return took


@dataclass(frozen=True, slots=True)
class Outcome:
    replica: int
    path: str
    status: int  # 0: no answer (connection refused or cut)
    start: float  # time.monotonic()
    end: float


class Load:
    """Threads sending GETs through ``replicas`` until the ``with`` block ends. ``token``
    is a token, or a function giving the token to use for each request."""

    def __init__(
        self,
        cluster: Cluster,
        replicas: Iterable[int],
        token: str | Callable[[], str],
        *,
        threads: int = 2,
        pause: float = 0.0,
    ) -> None:
        self.cluster = cluster
        self.replicas = list(replicas)
        self.token = token if callable(token) else (lambda: token)
        self.threads = threads
        self.pause = pause
        self.tag = f"load{next(_load_ids)}"
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _run(self, replica: int, thread: int) -> None:
        client = Client(self.cluster.replicas[replica], timeout=5.0)
        prefix = f"/orders/{self.tag}-{replica}-{thread}-"
        try:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                path = f"{prefix}{n}"
                start = time.monotonic()
                status = client.get(path, self.token())
                outcome = Outcome(replica, path, status, start, time.monotonic())
                with self._lock:
                    self.outcomes.append(outcome)
                if status == 0:
                    time.sleep(0.01)  # refused connections come back at once: do not spin
                elif self.pause:
                    time.sleep(self.pause)
        finally:
            client.close()

    def __enter__(self) -> Load:
        for replica in self.replicas:
            for thread in range(self.threads):
                worker = threading.Thread(target=self._run, args=(replica, thread), daemon=True)
                worker.start()
                self._workers.append(worker)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def results(self, replica: int | None = None) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if replica is None or o.replica == replica]

    def failures(self, replica: int | None = None) -> list[Outcome]:
        return [o for o in self.results(replica) if o.status != 200]


# -- revocation ---------------------------------------------------------------------------


def revocation_propagation(
    cluster: Cluster,
    count: int,
    *,
    revoke_on: int = 1,
    watched: Sequence[int] = (0, 2),
    cli: bool = False,
) -> dict[int, list[float]]:
    """``count`` times: a token minted on replica 1 (``cluster.mint(0)``) is served by every
    watched replica, revoked by jti through ``POST /v1/revoke`` on ``revoke_on`` (``cli``:
    ``lockgate token revoke --jti`` with its configuration); seconds from that call's
    return until each watched replica refuses it (401). A replica that still serves it
    after :data:`PROPAGATION_TIMEOUT` records ``inf``."""
    clients = {i: Client(cluster.replicas[i]) for i in watched}
    latencies: dict[int, list[float]] = {i: [] for i in watched}
    try:
        for n in range(count):
            token, jti = cluster.mint(0, run_id=f"revocation-{n}")
            for i in watched:
                status = clients[i].get(f"/orders/revocation-{n}-{i}", token)
                assert status == 200, f"{cluster.replicas[i].name} did not serve a fresh token"
            if cli:
                cluster.cli(revoke_on, "token", "revoke", "--jti", jti, "--reason", "ha test")
            else:
                cluster.revoke_jti(revoke_on, jti)

            def refused(i: int, k: int, n: int = n, token: str = token) -> bool:
                return clients[i].get(f"/orders/revocation-{n}-{i}-{k}", token) == 401

            for i, seconds in time_until_each(watched, refused).items():
                latencies[i].append(seconds)
    finally:
        for client in clients.values():
            client.close()
    return latencies


@dataclass
class SessionFigures:
    """Per session: seconds from the revoke call's return until a statement was refused,
    the refusal's text, and whether the connection was closed after it."""

    latencies: list[float] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    closed: list[bool] = field(default_factory=list)


def session_closure(
    cluster: Cluster, count: int, *, session_on: int = 0, revoke_on: int = 1, idle: bool = False
) -> SessionFigures:
    """``count`` times: a PostgreSQL session through ``session_on``'s postgres listener runs
    a statement every 20 ms (``idle``: ran one, then waits); its token is revoked on
    ``revoke_on``; time until a statement fails (``idle``: until the gateway ends the
    connection). A session still open after :data:`PROPAGATION_TIMEOUT` records ``inf``."""
    figures = SessionFigures()
    for n in range(count):
        token, jti = cluster.mint(0, run_id=f"pg-session-{n}", conn_id=PG_CONN_ID)
        conn = psycopg.connect(
            host="127.0.0.1", port=cluster.replicas[session_on].postgres_port,
            dbname=PG_RESOURCE, user="lockgate", password=token, sslmode="disable",
            autocommit=True, connect_timeout=10,
        )  # fmt: skip
        try:
            assert conn.execute("SELECT item FROM sales.orders ORDER BY id").fetchall()
            ended = _ended_idle if idle else _ended_busy
            seconds, message = ended(conn, functools.partial(cluster.revoke_jti, revoke_on, jti))
            figures.latencies.append(seconds)
            figures.messages.append(message)
            try:
                conn.execute("SELECT 1")
                figures.closed.append(False)
            except psycopg.OperationalError:
                figures.closed.append(True)  # the gateway closed the connection
        finally:
            conn.close()
    return figures


def _ended_busy(conn: psycopg.Connection[Any], revoke: Callable[[], None]) -> tuple[float, str]:
    """Statements every 20 ms in a thread while ``revoke()`` runs: seconds from its return
    to the first failed statement, and the error."""
    failed: list[tuple[float, str]] = []
    served = [0]

    def statements() -> None:
        while not failed:
            try:
                conn.execute("SELECT item FROM sales.orders ORDER BY id").fetchall()
                served[0] += 1
            except psycopg.Error as exc:
                failed.append((time.monotonic(), str(exc)))
                return
            time.sleep(0.02)

    worker = threading.Thread(target=statements, daemon=True)
    worker.start()
    while served[0] < 5 and not failed:  # an open, working session
        time.sleep(0.01)
    assert not failed, failed
    revoke()
    start = time.monotonic()
    worker.join(PROPAGATION_TIMEOUT)
    return (failed[0][0] - start, failed[0][1]) if failed else (float("inf"), "")


def _ended_idle(conn: psycopg.Connection[Any], revoke: Callable[[], None]) -> tuple[float, str]:
    """An idle session while ``revoke()`` runs: seconds from its return until the gateway
    wrote to the connection (its FATAL, then the close), and that FATAL as libpq reads it.

    libpq hands an error arriving on an idle connection to the notice processor; it is read
    before anything is sent, since a statement sent to the closed socket draws a reset that
    can discard the FATAL still unread (then the next use's error is all there is)."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    revoke()
    start = time.monotonic()
    readable, _, _ = select.select([conn.fileno()], [], [], PROPAGATION_TIMEOUT)
    if not readable:
        return float("inf"), ""
    seconds = time.monotonic() - start
    with contextlib.suppress(psycopg.OperationalError):  # the close right behind the FATAL
        conn.pgconn.consume_input()
        conn.pgconn.is_busy()  # parses what was read: the FATAL reaches the notice handler
    if notices:
        return seconds, notices[0]
    try:
        conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return seconds, str(exc)
    return seconds, ""


# -- credential rotation --------------------------------------------------------------------


@dataclass
class RotationFigures:
    """Propagation seconds per replica, and the load that ran meanwhile."""

    latencies: dict[int, list[float]]
    requests: int = 0
    failures: list[Outcome] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def credential_rotation(
    cluster: Cluster, count: int, *, rotate_on: int = 2, threads: int = 1
) -> RotationFigures:
    """``count`` rotations of the upstream credential with ``lockgate creds rotate`` on
    ``rotate_on`` while every replica serves load. Each time the upstream first accepts the
    old and the new secret; seconds from the command's return until a request through each
    replica reaches the upstream with the new one; then (0.2 s later, for requests already
    on their way) the upstream accepts the new secret only."""
    upstream = cluster.upstream
    everyone = range(len(cluster.replicas))
    token, _ = cluster.mint(0, run_id="credential-rotation")
    clients = {i: Client(cluster.replicas[i]) for i in everyone}
    latencies: dict[int, list[float]] = {i: [] for i in everyone}
    value_file = cluster.base / "rotated-credential"
    probe_failures: list[Outcome] = []
    with Load(cluster, everyone, token, threads=threads) as load:
        time.sleep(0.3)
        for n in range(count):
            old, new = upstream.newest(), secrets.token_urlsafe(16)
            upstream.accept(old, new)
            value_file.write_text(new)
            value_file.chmod(0o600)
            cluster.cli(rotate_on, "creds", "rotate", CREDENTIAL, "--from-file", str(value_file))

            def switched(i: int, k: int, n: int = n, new: str = new) -> bool:
                path = f"/orders/rotation-{n}-{i}-{k}"
                t = time.monotonic()
                status = clients[i].get(path, token)
                if status != 200:
                    probe_failures.append(Outcome(i, path, status, t, time.monotonic()))
                return status == 200 and upstream.secret_of(path) == new

            for i, seconds in time_until_each(everyone, switched).items():
                latencies[i].append(seconds)
            time.sleep(0.2)
            upstream.accept(new)
        time.sleep(0.3)  # the load goes on with the new secret alone
    for client in clients.values():
        client.close()
    return RotationFigures(
        latencies, len(load.results()), load.failures() + probe_failures,
        {"upstream_refused": upstream.refused},
    )  # fmt: skip


# -- signing key rotation -------------------------------------------------------------------


def token_kid(token: str) -> str:
    header = token.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


class Minter:
    """Mints a fresh token on one replica every ``interval`` (the newest is :meth:`latest`),
    as tasks keep starting during a key rotation."""

    def __init__(self, cluster: Cluster, replica: int, interval: float = 0.05) -> None:
        self.cluster, self.replica, self.interval = cluster, replica, interval
        self._token, _ = cluster.mint(replica, run_id="minter-0")
        self.minted = 1
        self.kids: dict[str, float] = {token_kid(self._token): time.monotonic()}  # first seen
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for n in itertools.count(1):
            if self._stop.wait(self.interval):
                return
            try:
                token, _ = self.cluster.mint(self.replica, run_id=f"minter-{n}")
            except AssertionError as exc:
                self.errors.append(str(exc))
                continue
            self.kids.setdefault(token_kid(token), time.monotonic())
            self._token = token
            self.minted += 1

    def latest(self) -> str:
        return self._token

    def __enter__(self) -> Minter:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def published_kids(cluster: Cluster, i: int) -> set[str]:
    """The key ids replica ``i`` publishes in its JWKS."""
    url = cluster.replicas[i].control_url + "/.well-known/jwks.json"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return {str(key["kid"]) for key in json.loads(resp.read())["keys"]}


def key_rotation(
    cluster: Cluster,
    count: int,
    *,
    rotate_on: int = 0,
    verify_on: Sequence[int] = (1, 2),
    threads: int = 2,
) -> RotationFigures:
    """``count`` runs of ``lockgate keys rotate`` on ``rotate_on`` while it mints a token
    every 50 ms and ``verify_on`` serve requests with the newest one (and with one minted
    before the first rotation). Latencies: seconds from the command's return until each
    replica publishes the new key in its JWKS; ``extra["signing"]``: until a token signed
    by the new key is minted (a shared key signs only once every replica can know it)."""
    everyone = range(len(cluster.replicas))
    latencies: dict[int, list[float]] = {i: [] for i in everyone}
    signing: list[float] = []
    old_token, _ = cluster.mint(rotate_on, run_id="before-rotation")
    with (
        Minter(cluster, rotate_on) as minter,
        Load(cluster, verify_on, minter.latest, threads=threads) as fresh,
        Load(cluster, verify_on, old_token, threads=1, pause=0.05) as old,
    ):
        time.sleep(0.5)
        for _ in range(count):
            known = set(minter.kids).union(*(published_kids(cluster, i) for i in everyone))
            cluster.cli(rotate_on, "keys", "rotate")
            start = time.monotonic()

            def published(i: int, _attempt: int, known: set[str] = known) -> bool:
                return bool(published_kids(cluster, i) - known)

            for i, seconds in time_until_each(everyone, published).items():
                latencies[i].append(seconds)
            while not set(minter.kids) - known:
                if time.monotonic() - start > 3 * PROPAGATION_TIMEOUT:
                    signing.append(float("inf"))
                    break
                time.sleep(0.01)
            else:
                [new_kid] = set(minter.kids) - known
                signing.append(minter.kids[new_kid] - start)
            time.sleep(0.5)  # tokens of the new key in use on the verifying replicas
    return RotationFigures(
        latencies,
        len(fresh.results()) + len(old.results()),
        fresh.failures() + old.failures(),
        {"signing": signing, "minted": minter.minted, "mint_errors": minter.errors,
         "kids": len(minter.kids)},
    )  # fmt: skip
