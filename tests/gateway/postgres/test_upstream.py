"""The gateway's upstream login against a real PostgreSQL server (tests.pgserver).

SCRAM and md5 users, refused credentials, rotation overlap, an access token refreshed after
a refusal, TLS verify-full / require / a plain server, the resource's startup parameters,
and CancelRequest on a running query.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lockgate.config import PostgresResource
from lockgate.errors import UpstreamAuthFailed, UpstreamUnavailable
from lockgate.gateway import upstream_credential
from lockgate.gateway.caches import SecretCache
from lockgate.gateway.postgres import codec, scram, upstream
from lockgate.tlsgen import write_dev_tls
from tests.gateway.fakes import FakeBroker
from tests.pgserver import PgServer

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_names)}"


def resource_for(server: PgServer, user: str, **overrides: object) -> PostgresResource:
    fields: dict[str, object] = {
        "name": "warehouse",
        "kind": "postgres",
        "host": server.host,
        "port": server.port,
        "database": "postgres",
        "username": user,
        "credential": "wh-login",
        "tls": "verify-full",
        "ca_file": server.ca_file,
        "connect_timeout": 10.0,
    }
    fields.update(overrides)
    return PostgresResource.model_validate(fields)


def secrets_of(*versions: str) -> SecretCache:
    """A secret cache over one credential ``wh-login``; the last version is current."""
    return SecretCache(FakeBroker({"wh-login": list(versions)}))


async def simple_query(
    link: upstream.UpstreamLink, sql: str
) -> tuple[list[tuple[str | None, ...]], dict[str, str]]:
    """Run ``sql`` on the link: the text rows and the error fields (empty when none)."""
    link.writer.write(codec.query(sql))
    reader = codec.MessageReader(1 << 20)
    reader.feed(link.pending)
    link.pending = b""
    rows: list[tuple[str | None, ...]] = []
    error: dict[str, str] = {}
    while True:
        msg = reader.next_message()
        if msg is None:
            data = await asyncio.wait_for(link.reader.read(65536), 15)
            assert data, "server closed the connection"
            reader.feed(data)
            continue
        if msg.type == codec.DATA_ROW:
            rows.append(
                tuple(None if v is None else v.decode() for v in codec.decode_data_row(msg.body))
            )
        elif msg.type == codec.ERROR_RESPONSE:
            error = codec.decode_error_fields(msg.body)
        elif msg.type == codec.READY_FOR_QUERY:
            return rows, error


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    scram.forget_salted_passwords()
    upstream_credential.forget_refusals()


def count_attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SCRAM login attempt from now on, by mechanism."""
    used: list[str] = []
    real = codec.sasl_initial_response

    def spy(name: str, data: bytes | None) -> bytes:
        used.append(name)
        return real(name, data)

    monkeypatch.setattr(codec, "sasl_initial_response", spy)
    return used


async def test_scram_login_with_verify_full(pg_server: PgServer) -> None:
    user = unique("scram")
    pg_server.create_user(user, "s3cret-scram")
    res = resource_for(pg_server, user, search_path=["Sales", "public"])
    link = await upstream.connect(res, secrets_of("s3cret-scram"), {"application_name": "dag-x"})
    try:
        assert link.tls
        assert link.backend_pid > 0 and len(link.backend_secret) == 4
        assert link.credential_version == 1
        assert link.parameters["application_name"] == "dag-x"
        assert link.parameters["server_version"].startswith("15")
        assert link.pending == b""
        rows, error = await simple_query(
            link,
            "SELECT current_user, current_setting('search_path'), ssl "
            "FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        assert not error
        assert rows == [(user, '"Sales","public"', "t")]
    finally:
        link.close()


async def test_a_second_login_reuses_the_salted_password(pg_server: PgServer) -> None:
    user = unique("scram")
    pg_server.create_user(user, "pw-again")
    res = resource_for(pg_server, user)
    for _ in range(2):
        link = await upstream.connect(res, secrets_of("pw-again"), {})
        link.close()
    assert len(scram._salted) == 1


async def test_md5_login(pg_server: PgServer) -> None:
    user = unique("md5")
    pg_server.create_user(user, "s3cret-md5", method="md5")
    link = await upstream.connect(
        resource_for(pg_server, user, tls="require", ca_file=None), secrets_of("s3cret-md5"), {}
    )
    try:
        rows, _ = await simple_query(link, "SELECT current_user")
        assert rows == [(user,)]
    finally:
        link.close()


@pytest.mark.parametrize("method", ["scram-sha-256", "md5"])
async def test_wrong_password_is_auth_failed_and_never_named(
    pg_server: PgServer, method: str
) -> None:
    user = unique("wrong")
    pg_server.create_user(user, "right-one", method=method)
    with pytest.raises(UpstreamAuthFailed) as info:
        await upstream.connect(resource_for(pg_server, user), secrets_of("wrong-one-xyz"), {})
    text = str(info.value)
    assert f"{pg_server.host}:{pg_server.port}" in text and "28P01" in text
    assert "wrong-one-xyz" not in text and "right-one" not in text


async def test_rotation_overlap_logs_in_with_the_previous_version(pg_server: PgServer) -> None:
    user = unique("rot")
    pg_server.create_user(user, "version-one")
    # version 2 (current) is not set on the server yet; version 1 still is
    link = await upstream.connect(
        resource_for(pg_server, user), secrets_of("version-one", "version-two"), {}
    )
    link.close()
    assert link.credential_version == 1


async def test_during_the_overlap_logins_start_with_the_version_that_works(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = unique("overlap")
    pg_server.create_user(user, "version-one")
    attempts = count_attempts(monkeypatch)
    res, cache = resource_for(pg_server, user), secrets_of("version-one", "version-two")
    versions = []
    for _ in range(3):
        link = await upstream.connect(res, cache, {})
        link.close()
        versions.append(link.credential_version)
    assert versions == [1, 1, 1]
    assert len(attempts) == 4  # the current version was refused once, not at every login
    # the server takes the new password: one refusal of the old, then the current again
    pg_server.psql(f"ALTER ROLE \"{user}\" PASSWORD 'version-two';")
    attempts.clear()
    for _ in range(3):
        link = await upstream.connect(res, cache, {})
        link.close()
        versions.append(link.credential_version)
    assert versions[3:] == [2, 2, 2]
    assert len(attempts) == 4


async def test_a_rotation_the_cache_had_not_seen_is_picked_up(pg_server: PgServer) -> None:
    user = unique("rot")
    pg_server.create_user(user, "new-value")
    broker = FakeBroker({"wh-login": ["old-value"]})
    cache = SecretCache(broker, ttl=3600)
    assert (await cache.get("wh-login")).value == "old-value"  # type: ignore[union-attr]
    broker.versions["wh-login"].append("new-value")  # rotated behind the cache's back
    link = await upstream.connect(resource_for(pg_server, user), cache, {})
    link.close()
    assert link.credential_version == 2


async def test_no_previous_version_means_auth_failed(pg_server: PgServer) -> None:
    user = unique("rot")
    pg_server.create_user(user, "on-server")
    broker = FakeBroker({"wh-login": ["not-on-server"]})
    with pytest.raises(UpstreamAuthFailed):
        await upstream.connect(resource_for(pg_server, user), SecretCache(broker), {})
    assert broker.calls == 3  # current, current again after invalidation, previous (none)


async def test_a_credential_without_value_is_unavailable(pg_server: PgServer) -> None:
    user = unique("novalue")
    pg_server.create_user(user, "whatever")
    with pytest.raises(UpstreamUnavailable, match="has no value") as info:
        await upstream.connect(resource_for(pg_server, user), SecretCache(FakeBroker({})), {})
    assert not isinstance(info.value, UpstreamAuthFailed)


@dataclass(frozen=True)
class TokenSecret:
    value: str
    version: int
    expires_at: float


class TokenBroker:
    """Hands out an access token until told to forget it (like the broker's token cache)."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.forgotten: list[tuple[str, int]] = []

    async def upstream_secret(
        self, credential_name: str, previous: bool = False
    ) -> TokenSecret | None:
        if previous:
            return None
        return TokenSecret(self.tokens[0], 7, time.time() + 3600)

    def invalidate(self, credential_name: str, version: int | None = None) -> None:
        self.forgotten.append((credential_name, version or 0))
        self.tokens.pop(0)


def _allow_cleartext(server: PgServer, user: str) -> None:
    """Put a ``hostssl ... password`` line for ``user`` ahead of the SCRAM ones and reload."""
    hba = server.datadir / "pg_hba.conf"
    lines = hba.read_text().splitlines()
    lines.insert(1, f'hostssl all "{user}" 127.0.0.1/32 password')
    stat = hba.stat()
    hba.write_text("\n".join(lines) + "\n")
    os.chown(hba, stat.st_uid, stat.st_gid)
    server.psql("SELECT pg_reload_conf();")
    time.sleep(0.3)  # the postmaster reloads pg_hba on SIGHUP, asynchronously


async def test_refused_access_token_is_refetched_once_and_sent_in_clear_over_tls(
    pg_server_factory: object,
) -> None:
    server: PgServer = pg_server_factory()  # type: ignore[operator]
    user = unique("entra")
    server.create_user(user, "eyJfresh.token")
    _allow_cleartext(server, user)
    broker = TokenBroker(["eyJrevoked.token", "eyJfresh.token"])
    link = await upstream.connect(resource_for(server, user), SecretCache(broker), {})
    try:
        rows, _ = await simple_query(link, "SELECT current_user")
        assert rows == [(user,)]
    finally:
        link.close()
    assert broker.forgotten == [("wh-login", 7)]
    # and a second refusal is final: one refetch, not a loop
    broker.tokens[:] = ["eyJbad.one", "eyJbad.two", "eyJbad.three"]
    with pytest.raises(UpstreamAuthFailed) as info:
        await upstream.connect(resource_for(server, user), SecretCache(broker), {})
    assert "eyJ" not in str(info.value)
    assert broker.tokens == ["eyJbad.two", "eyJbad.three"]


async def test_verify_full_refuses_a_certificate_from_another_ca(
    pg_server: PgServer, tmp_path: Path
) -> None:
    other = write_dev_tls(tmp_path / "other", ["127.0.0.1"])
    res = resource_for(pg_server, "nobody", ca_file=other["ca"])
    with pytest.raises(UpstreamUnavailable, match="certificate verify failed") as info:
        await upstream.connect(res, secrets_of("pw"), {})
    assert not isinstance(info.value, UpstreamAuthFailed)


async def test_verify_full_by_host_name(pg_server: PgServer) -> None:
    # the certificate names localhost too (a name, not an address, is checked the same way;
    # a certificate for another name: test_upstream_fake)
    user = unique("byname")
    pg_server.create_user(user, "pw")
    link = await upstream.connect(
        resource_for(pg_server, user, host="localhost"), secrets_of("pw"), {}
    )
    assert link.tls
    link.close()


async def test_tls_wanted_but_the_server_has_none_is_refused(pg_server_factory: object) -> None:
    server: PgServer = pg_server_factory(tls=False)  # type: ignore[operator]
    user = unique("plain")
    server.create_user(user, "pw")
    with pytest.raises(UpstreamUnavailable, match="does not accept TLS"):
        await upstream.connect(
            resource_for(server, user, tls="require", ca_file=None), secrets_of("pw"), {}
        )
    # and with tls: disable it works (SCRAM over plain TCP is fine: nothing in clear)
    link = await upstream.connect(resource_for(server, user, tls="disable"), secrets_of("pw"), {})
    assert not link.tls
    link.close()


async def test_resource_parameters_win_over_the_callers(pg_server: PgServer) -> None:
    user = unique("params")
    pg_server.create_user(user, "pw")
    startup = {
        "user": pg_server.superuser,
        "database": "template1",
        "search_path": "evil",
        "options": "-c role=pg_read_server_files",
        "replication": "database",
        "_pq_.something": "x",
        "application_name": "kept",
        "TimeZone": "UTC",
    }
    link = await upstream.connect(resource_for(pg_server, user), secrets_of("pw"), startup)
    try:
        rows, _ = await simple_query(
            link,
            "SELECT current_user, current_database(), current_setting('search_path'), "
            "current_setting('application_name'), current_setting('TimeZone')",
        )
        assert rows == [(user, "postgres", '"public"', "kept", "UTC")]
    finally:
        link.close()


async def test_a_server_error_that_is_not_about_the_credential(pg_server: PgServer) -> None:
    user = unique("nodb")
    pg_server.create_user(user, "pw")
    with pytest.raises(UpstreamUnavailable, match="3D000") as info:
        await upstream.connect(
            resource_for(pg_server, user, database="no_such_db"), secrets_of("pw"), {}
        )
    assert not isinstance(info.value, UpstreamAuthFailed)


async def test_a_closed_port_is_unavailable(pg_server: PgServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    res = resource_for(pg_server, "nobody", port=port, connect_timeout=0.5)
    # tried again until connect_timeout (a restarting server refuses for a moment)
    with pytest.raises(UpstreamUnavailable) as info:
        await upstream.connect(res, secrets_of("pw"), {})
    assert str(info.value).startswith(
        f"127.0.0.1:{port}: no login within 0.5s (connect_timeout); last: ConnectionRefusedError"
    )


async def test_an_unreadable_ca_file_is_unavailable(pg_server: PgServer, tmp_path: Path) -> None:
    res = resource_for(pg_server, "nobody", ca_file=tmp_path / "missing.pem")
    with pytest.raises(UpstreamUnavailable, match="cannot read ca_file"):
        await upstream.connect(res, secrets_of("pw"), {})


async def running_on(server: PgServer, pid: int) -> None:
    """Wait until backend ``pid`` runs a query (a cancel before it would cancel nothing)."""
    sql = f"SELECT state FROM pg_stat_activity WHERE pid = {int(pid)};"  # noqa: S608
    for _ in range(100):
        if (await asyncio.to_thread(server.psql, sql)).strip() == "active":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"backend {pid} never ran the query")


@pytest.mark.parametrize("tls", ["verify-full", "disable"])
async def test_cancel_stops_a_running_query(pg_server: PgServer, tls: str) -> None:
    user = unique("cancel")
    pg_server.create_user(user, "pw")
    res = resource_for(pg_server, user, tls=tls)
    link = await upstream.connect(res, secrets_of("pw"), {})
    try:
        started = time.monotonic()
        running = asyncio.create_task(simple_query(link, "SELECT pg_sleep(10)"))
        await running_on(pg_server, link.backend_pid)
        await upstream.cancel(res, link.backend_pid, link.backend_secret)
        rows, error = await asyncio.wait_for(running, 5)
        assert error["C"] == "57014"  # query_canceled
        assert time.monotonic() - started < 5
        rows, error = await simple_query(link, "SELECT 1")  # the session goes on
        assert rows == [("1",)] and not error
    finally:
        link.close()


async def test_cancel_with_a_wrong_key_cancels_nothing(pg_server: PgServer) -> None:
    user = unique("cancel")
    pg_server.create_user(user, "pw")
    res = resource_for(pg_server, user)
    link = await upstream.connect(res, secrets_of("pw"), {})
    try:
        running = asyncio.create_task(simple_query(link, "SELECT pg_sleep(0.8)"))
        await running_on(pg_server, link.backend_pid)
        wrong = bytes(b ^ 0xFF for b in link.backend_secret)
        await upstream.cancel(res, link.backend_pid, wrong)
        rows, error = await asyncio.wait_for(running, 5)
        assert not error and rows == [("",)]
    finally:
        link.close()


@pytest.mark.parametrize(
    ("tls", "mechanism"),
    [
        ("verify-full", "SCRAM-SHA-256-PLUS"),
        ("require", "SCRAM-SHA-256-PLUS"),
        ("disable", "SCRAM-SHA-256"),
    ],
)
async def test_the_server_accepts_our_channel_binding(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch, tls: str, mechanism: str
) -> None:
    used = count_attempts(monkeypatch)
    user = unique("bound")
    pg_server.create_user(user, "pw")
    link = await upstream.connect(resource_for(pg_server, user, tls=tls), secrets_of("pw"), {})
    link.close()
    assert used == [mechanism]


async def test_a_login_during_a_server_restart_gets_in_once_it_is_back(
    pg_server_factory: object,
) -> None:
    server: PgServer = pg_server_factory()  # type: ignore[operator]
    user = unique("restart")
    server.create_user(user, "pw")
    res = resource_for(server, user, connect_timeout=20.0)
    restarting = asyncio.create_task(asyncio.to_thread(server.restart))
    logins = 0
    while not restarting.done():  # every login in the window succeeds, none fails
        link = await upstream.connect(res, secrets_of("pw"), {})
        link.close()
        logins += 1
    await restarting
    link = await upstream.connect(res, secrets_of("pw"), {})
    try:
        rows, _ = await simple_query(link, "SELECT 1")
        assert rows == [("1",)]
    finally:
        link.close()
    assert logins >= 1
